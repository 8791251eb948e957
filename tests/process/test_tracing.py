"""Tracing (falhook.telemetry): one trace from the webhook to every sink's delivery, across a
receive-only runtime and a separate worker that share only the store (two runtimes in this
process, each with its own store connection: the context crosses through the stored
traceparent alone), spans collected by OpenTelemetry's in-memory exporter; the traceparent
that reaches an HTTP sink's target; trace ids in log lines; and nothing of OpenTelemetry
imported when tracing is off."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook.testing import FalSigner, JWKSServer, sign_request
from tests.inprocess.test_tracing import SECRET
from tests.support.falhook_server import ROOT, Falhook, base_config, wait_for
from tests.support.fileserver import FileServer
from tests.support.http_target import HttpTarget
from tests.support.otlp_collector import OtlpCollector

OFF_SCRIPT = """
import asyncio, sys, uuid
from pathlib import Path
import httpx
from falhook.app import create_app
from falhook.config import settings_from_dict
from falhook.runtime import Runtime
from falhook.testing import FalSigner, JWKSServer, sign_request

async def main(tmp):
    signer = FalSigner(user_id="u")
    with JWKSServer() as jwks:
        jwks.set_jwks(signer.jwks())
        settings = settings_from_dict({
            "receiver": {"jwks_url": jwks.url},
            "store": {"url": f"sqlite:///{tmp}/events.db"},
            "sinks": {"local": {"type": "disk", "root": f"{tmp}/files"}},
            "routes": {"default": {"sinks": ["local"]}},
        }, base_dir=Path(tmp))
        rid, body, headers = sign_request(signer, payload={"text": "hi"})
        app = create_app(settings, run_worker=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            answer = await client.post("/webhooks/default", content=body, headers=headers)
            assert answer.is_success
        await app.runtime.close()
        worker = Runtime(settings, worker="on_demand")
        await worker.start()
        assert await worker.worker.deliver_now(rid, deadline=30) == []
        await worker.close()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    print("loaded:", loaded)
    assert not loaded

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.one_store("the import is the same on either store")
def test_with_tracing_off_opentelemetry_is_never_imported(
    tmp_path: Path, store_backend: str
) -> None:
    """Intake and delivery of a webhook, tracing off (the default): no OpenTelemetry module
    is loaded at all, installed as it is."""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(OFF_SCRIPT), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loaded: []" in done.stdout


def test_one_trace_across_falhook_serve_no_worker_and_falhook_worker_processes(
    tmp_path: Path,
    store_section: dict[str, str],
    jwks: JWKSServer,
    signer: FalSigner,
    files: FileServer,
) -> None:
    """The real thing: two processes on one store, tracing turned on by the standard OTEL_*
    variables, spans exported over OTLP/HTTP to a loopback collector."""
    with OtlpCollector() as collector, HttpTarget() as target:
        config = base_config(
            tmp_path,
            jwks.url,
            store=store_section,
            sinks={
                "local": {"type": "disk", "root": str(tmp_path / "files")},
                "forward": {"type": "http", "url": target.url, "secret": SECRET},
            },
            routes={"reframe": {"sinks": ["local", "forward"]}},
        )
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        receiver = Falhook(
            tmp_path,
            config,
            command=("serve", "--no-worker"),
            name="receiver",
            env={**otel, "OTEL_SERVICE_NAME": "falhook-receiver"},
        )
        worker = Falhook(
            tmp_path,
            config,
            command=("worker",),
            name="worker",
            env={**otel, "OTEL_SERVICE_NAME": "falhook-worker"},
        )
        try:
            receiver.start()
            worker.start()
            files.add("/clip.mp4", data=b"c" * 4096, content_type="video/mp4")
            payload = {"video": {"url": files.url("/clip.mp4")}}
            rid, body, headers = sign_request(signer, payload=payload)
            answer = httpx.post(receiver.url("/webhooks/reframe"), content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            receiver.wait_state(rid, "delivered")

            def whole_trace() -> list[Any]:
                spans = collector.collected()
                sends = [s for s in spans if s.name.startswith("send ")]
                # The process span ends after its sends, so it may come in a later batch.
                processed = any(s.name == "process reframe" for s in spans)
                return spans if len(sends) == 2 and processed else []

            spans = wait_for(whole_trace, timeout=30, what="the worker's spans at the collector")
        finally:
            try:
                receiver.close()
            finally:
                worker.close()
        [(forwarded, _)] = target.requests
    [receive] = [s for s in spans if s.name == "receive reframe"]
    assert receive.service == "falhook-receiver" and receive.attributes["falhook.request_id"] == rid
    [process] = [s for s in spans if s.name == "process reframe"]
    assert process.service == "falhook-worker"
    assert process.parent_span_id == receive.span_id
    assert process.links == [(receive.trace_id, receive.span_id)]
    sends = {s.attributes["falhook.sink"]: s for s in spans if s.name.startswith("send ")}
    assert sorted(sends) == ["forward", "local"]
    [download] = [s for s in spans if s.name == "download"]
    for span in [process, download, *sends.values()]:
        assert span.trace_id == receive.trace_id
    assert download.parent_span_id == process.span_id
    assert all(s.parent_span_id == process.span_id for s in sends.values())
    send = sends["forward"]
    assert forwarded["traceparent"].startswith(f"00-{send.trace_id}-{send.span_id}-")
