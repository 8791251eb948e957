"""The official `fal-client` against `falhook emulate --tls`: submit with a webhook_url, status
(with logs), result, cancel, and a namespaced app; the webhook lands in a real falhook and
the output file on its disk.

fal-client reads FAL_QUEUE_RUN_HOST when it is imported and speaks only https, so it runs as
a user would run it: in its own process, with SSL_CERT_FILE naming the emulator's CA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from falhook.fal.emulate import Emulator, EmulatorServer
from falhook.fal.ray import mp4_duration
from tests.support.falhook_server import Falhook, base_config, free_port

REFRAME = "luma/agent/ray/v3.2/reframe"
KEY = "test-key-0123456789"
INPUT = {"prompt": "wider", "video_url": "https://example.invalid/v.mp4", "aspect_ratio": "21:9"}

SCRIPT = """
import asyncio, json, os, sys
import fal_client

async def main():
    endpoint, hook, inp = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    client = fal_client.AsyncClient()
    handle = await client.submit(endpoint, arguments=inp, webhook_url=hook)
    first = await handle.status(with_logs=True)
    result = await handle.get()
    done = await client.status(endpoint, handle.request_id, with_logs=True)
    slow = await client.submit(endpoint, arguments={**inp, "_emulate": {"delay": 60}})
    await slow.cancel()
    cancelled = await slow.status()
    flow = "workflows/fal-ai/my-flow"
    named = await client.submit(flow, arguments={"prompt": "x", "_emulate": {"delay": 60}})
    named_status = await client.status(flow, named.request_id)
    print(json.dumps({
        "request_id": handle.request_id,
        "first": type(first).__name__,
        "result": result,
        "done": type(done).__name__,
        "done_logs": done.logs,
        "cancelled": [slow.request_id, type(cancelled).__name__, cancelled.error],
        "named": [named.request_id, named.status_url, type(named_status).__name__],
    }))

asyncio.run(main())
"""


@pytest.fixture
def tls_fal(tmp_path: Path) -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(delay=0.3), tls_dir=tmp_path / "tls") as server:
        yield server


def test_fal_client_against_the_emulator_with_tls(
    tls_fal: EmulatorServer, tmp_path: Path, store_section: dict[str, str]
) -> None:
    assert tls_fal.tls is not None and tls_fal.url.startswith("https://")
    ca = str(tls_fal.tls.ca)
    port = free_port()
    config = base_config(
        tmp_path,
        tls_fal.jwks_url,  # https: falhook trusts the emulator through SSL_CERT_FILE too
        receiver={"public_url": f"http://127.0.0.1:{port}", "queue_url": tls_fal.url},
        store=store_section,
    )
    env = {"FAL_KEY": KEY, "SSL_CERT_FILE": ca}
    with Falhook(tmp_path, config, port=port, env=env) as falhook:
        client_env = {
            **os.environ,
            "FAL_KEY": KEY,
            "SSL_CERT_FILE": ca,
            "FAL_QUEUE_RUN_HOST": f"127.0.0.1:{tls_fal.port}",
        }
        hook = f"{falhook.base_url}/webhooks/reframe"
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, REFRAME, hook, json.dumps(INPUT)],
            capture_output=True, text=True, env=client_env, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        rid = got["request_id"]
        event = falhook.wait_state(rid, "delivered")
    assert got["first"] in ("Queued", "InProgress", "Completed")  # parsed, whatever the timing
    assert got["result"]["video"]["content_type"] == "video/mp4"
    assert got["done"] == "Completed" and got["done_logs"]
    assert got["cancelled"][1:] == ["Completed", "Request was cancelled"]
    named_id, named_status_url, named_state = got["named"]
    assert named_status_url == (
        f"{tls_fal.url}/workflows/fal-ai/my-flow/requests/{named_id}/status"
    )
    assert named_state == "Queued"
    # What fal-client sent, exactly as fal would receive it.
    [submit, *_] = tls_fal.emulator.submits()
    assert submit.path == f"/{REFRAME}" and submit.query == {"fal_webhook": hook}
    assert submit.headers["authorization"] == f"Key {KEY}"
    assert "x-fal-store-io" not in submit.headers
    # The webhook landed in falhook, verified, and the file on its disk.
    assert tls_fal.emulator.jobs[rid].webhook_answers == [200]
    assert event["source"] == "webhook" and event["files"][0]["url"].startswith("https://")
    video = tmp_path / "files" / "reframe" / rid / "output.mp4"
    assert mp4_duration(video) == 5.0
