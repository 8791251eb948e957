"""Tracing (falhook.telemetry): one trace from the webhook to every sink's delivery, across a
receive-only runtime and a separate worker that share only the store (two runtimes in this
process, each with its own store connection: the context crosses through the stored
traceparent alone), spans collected by OpenTelemetry's in-memory exporter; the traceparent
that reaches an HTTP sink's target; trace ids in log lines; and nothing of OpenTelemetry
imported when tracing is off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from falhook.app import create_app
from falhook.config import TelemetrySettings, settings_from_dict
from falhook.runtime import Runtime
from falhook.telemetry import tracing_wanted
from falhook.testing import FalSigner, JWKSServer, sign_request
from tests.support.fileserver import FileServer
from tests.support.http_target import HttpTarget
from tests.support.otel import memory_exporter, spans_of
from tests.support.recorder import LOG_CONTEXT

SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def config(tmp_path: Path, store: dict[str, str], jwks: JWKSServer, **sinks: Any) -> Any:
    raw = {
        "receiver": {"jwks_url": jwks.url, "jwks_refetch_interval": 0},
        "store": store,
        "downloads": {"allow_private_hosts": True, "spool_dir": str(tmp_path / "spool")},
        "telemetry": {"enabled": True},
        "sinks": sinks,
        "routes": {"reframe": {"sinks": list(sinks)}},
    }
    return settings_from_dict(raw, base_dir=tmp_path)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name == name]
    return span


def received(rid: str) -> list[ReadableSpan]:
    """The receive spans of this request id."""
    spans = memory_exporter().get_finished_spans()
    return [
        s
        for s in spans
        if s.name == "receive reframe" and s.attributes.get("falhook.request_id") == rid
    ]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


async def test_one_trace_from_the_webhook_to_every_sink_across_receiver_and_worker(
    tmp_path: Path,
    store_section: dict[str, str],
    jwks: JWKSServer,
    signer: FalSigner,
    files: FileServer,
) -> None:
    memory_exporter()
    key = str(tmp_path)
    with HttpTarget() as target:
        settings = config(
            tmp_path,
            store_section,
            jwks,
            local={"type": "disk", "root": str(tmp_path / "files")},
            forward={"type": "http", "url": target.url, "secret": SECRET},
            manifest={"type": "python", "handler": "tests.support.recorder:record", "key": key},
        )
        files.add("/clip.mp4", data=b"m" * 4096, content_type="video/mp4")
        payload = {"video": {"url": files.url("/clip.mp4"), "content_type": "video/mp4"}}
        rid, body, headers = sign_request(signer, payload=payload)

        # The receiver: intake only (`falhook serve --no-worker`).
        app = create_app(settings, run_worker=False)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://falhook") as client:
                answer = await client.post("/webhooks/reframe", content=body, headers=headers)
            assert answer.json() == {"status": "accepted", "request_id": rid}
        finally:
            await app.runtime.close()

        # A separate worker (`falhook worker`): its own runtime and store connection.
        worker = Runtime(settings, worker="on_demand")
        await worker.start()
        try:
            assert worker.worker is not None
            assert await worker.worker.deliver_now(rid, deadline=60) == []
            stored = await worker.store.get_event(rid)
        finally:
            await worker.close()
        [(forwarded, _)] = target.requests

    [receive] = received(rid)
    spans = spans_of(receive.context.trace_id)
    trace_id, receive_id = hex_ids(receive)
    assert stored is not None and stored.trace_context is not None
    assert stored.trace_context.startswith(f"00-{trace_id}-{receive_id}-")
    assert receive.kind is SpanKind.SERVER
    assert receive.attributes["falhook.outcome"] == "accepted"
    assert receive.attributes["http.response.status_code"] == 200
    assert receive.attributes["messaging.destination.name"] == "reframe"
    assert receive.attributes["messaging.operation.type"] == "receive"

    process = one(spans, "process reframe")
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is not None and process.parent.span_id == receive.context.span_id
    assert [link.context.span_id for link in process.links] == [receive.context.span_id]
    assert process.attributes["messaging.message.id"] == rid

    [download] = [s for s in spans if s.name == "download"]
    assert download.parent is not None and download.parent.span_id == process.context.span_id
    assert download.attributes["falhook.file.path"] == "video"
    assert download.attributes["falhook.file_bytes"] == 4096
    assert download.attributes["server.address"] == "127.0.0.1"

    sends = {s.attributes["falhook.sink"]: s for s in spans if s.name.startswith("send ")}
    assert sorted(sends) == ["forward", "local", "manifest"]
    for sink, span in sends.items():
        assert span.kind is SpanKind.PRODUCER, sink
        assert span.parent is not None and span.parent.span_id == process.context.span_id
        assert [link.context.span_id for link in span.links] == [receive.context.span_id]
        assert span.attributes["falhook.outcome"] == "delivered"
        assert span.attributes["messaging.operation.type"] == "send"
        assert span.status.status_code is StatusCode.UNSET

    # The HTTP sink's target got the traceparent of the span that sent it.
    _, forward_id = hex_ids(sends["forward"])
    assert forwarded["traceparent"].startswith(f"00-{trace_id}-{forward_id}-")
    # Log lines written during a delivery carry the trace and the sink's span.
    [logged] = LOG_CONTEXT[key]
    assert (logged["trace_id"], logged["span_id"]) == hex_ids(sends["manifest"])


async def test_a_failed_attempt_is_an_error_span_and_an_alert_joins_the_trace(
    tmp_path: Path, store_section: dict[str, str], jwks: JWKSServer, signer: FalSigner
) -> None:
    memory_exporter()
    with HttpTarget(status=400) as refusing:
        settings = settings_from_dict(
            {
                "receiver": {"jwks_url": jwks.url},
                "store": store_section,
                "telemetry": {"enabled": True},
                "sinks": {
                    "forward": {"type": "http", "url": refusing.url, "secret": SECRET},
                    "local": {"type": "disk", "root": str(tmp_path / "files")},
                },
                "routes": {"reframe": {"sinks": ["forward"], "on_dead": ["local"]}},
            },
            base_dir=tmp_path,
        )
        rid, body, headers = sign_request(signer, payload={"text": "no files"})
        app = create_app(settings, run_worker=False, sinks={})
        worker = Runtime(settings, worker="on_demand")
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://falhook") as client:
                assert (
                    await client.post("/webhooks/reframe", content=body, headers=headers)
                ).is_success
            await worker.start()
            assert worker.worker is not None
            await worker.worker.deliver_now(rid, deadline=60)
            [alert] = [e for e in await worker.store.list_events() if e.source == "alert"]
            await worker.worker.deliver_now(alert.request_id, deadline=60)
        finally:
            await app.runtime.close()
            await worker.close()
    [receive] = received(rid)
    spans = spans_of(receive.context.trace_id)
    failed = one(spans, "send forward")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["falhook.outcome"] == "dead"
    assert "400" in (failed.status.description or "")
    # The alert is delivered in the trace of the event that died.
    alert_job = [s for s in spans if s.attributes.get("falhook.request_id") == alert.request_id]
    assert [s.name for s in alert_job] == ["process reframe"]
    assert one(spans, "send local").attributes["falhook.outcome"] == "delivered"


@pytest.mark.parametrize(
    ("telemetry", "environ", "wanted"),
    [
        (TelemetrySettings(), {}, False),
        (TelemetrySettings(), {"OTEL_TRACES_EXPORTER": "none"}, False),
        (TelemetrySettings(), {"OTEL_TRACES_EXPORTER": "otlp"}, None),
        (TelemetrySettings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
        (TelemetrySettings(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"}, None),
        (TelemetrySettings(enabled=True), {}, True),
        (TelemetrySettings(enabled=False), {"OTEL_TRACES_EXPORTER": "otlp"}, False),
        (TelemetrySettings(enabled=True), {"OTEL_SDK_DISABLED": "true"}, False),
        (TelemetrySettings(), {"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_off_unless_the_config_or_otel_variables_ask(
    telemetry: TelemetrySettings, environ: dict[str, str], wanted: bool | None
) -> None:
    assert tracing_wanted(telemetry, environ) is wanted
