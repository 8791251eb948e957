"""`falhook console` as a process: the console alone on the store that `falhook serve`
processes write, live across processes, and refused when `[console] enabled = false`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import Falhook

TOKEN = "cli-console-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_the_console_alone_reads_and_follows_what_a_receiver_stores(
    falhook_factory: Callable[..., Falhook], signer: FalSigner
) -> None:
    console_section = {"token": TOKEN, "stream_interval": 0.1}
    receiver = falhook_factory(name="receiver", console={"enabled": False}).start()
    console = falhook_factory(name="console", command=("console",), console=console_section)
    console.start()
    first, body = webhook_body(payload={"prompt": "before the tab opened"})
    assert httpx.post(receiver.url("/webhooks/default"), content=body,
                      headers=signer.headers(body, first)).status_code == 200  # fmt: skip
    assert httpx.get(receiver.url("/console/"), timeout=5).status_code == 404
    receiver.wait_state(first, "delivered")
    listed = httpx.get(console.url("/console/api/events"), headers=BEARER, timeout=10).json()
    assert [e["request_id"] for e in listed["events"]] == [first]
    assert httpx.get(console.url("/"), timeout=5, follow_redirects=False).status_code == 307
    messages: list[dict[str, Any]] = []
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", console.url("/console/api/stream"), headers=BEARER) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        rid, body = webhook_body(payload={"prompt": "while it was open"})
        assert httpx.post(receiver.url("/webhooks/default"), content=body,
                          headers=signer.headers(body, rid)).status_code == 200  # fmt: skip
        deadline = time.monotonic() + 30  # keep-alive comments come every 15 s: not a bound
        for line in lines:
            assert time.monotonic() < deadline, f"no delivered message in 30 s: {messages}"
            if line.startswith("data: "):
                messages.append(json.loads(line[6:]))
            if any(m.get("state") == "delivered" for m in messages):
                break
        # Stopping with a tab still streaming: the stream ends and the process exits on
        # SIGTERM (uvicorn re-raises it once shut down), never killed after stop's timeout.
        assert console.stop() in (0, -signal.SIGTERM)
    assert messages[0] == {"request_id": rid, "kind": "accepted", "route": "default"}


def test_a_disabled_console_is_a_config_error(
    falhook_factory: Callable[..., Falhook],
) -> None:
    console = falhook_factory(name="console", command=("console",), console={"enabled": False})
    done = run_console(console)
    assert done.returncode == 2
    assert "[console].enabled: is false" in done.stderr


def test_the_console_alone_without_a_token_behind_a_public_url_is_a_config_error(
    falhook_factory: Callable[..., Falhook],
) -> None:
    console = falhook_factory(
        name="console", command=("console",), receiver={"public_url": "https://hooks.example.com"}
    )
    done = run_console(console)
    assert done.returncode == 2, done.stderr
    assert "[console].token: is empty while [receiver].public_url" in done.stderr


def run_console(console: Falhook) -> subprocess.CompletedProcess[str]:
    """`falhook console` on this config, to its end (a start-up refusal ends it at once)."""
    return subprocess.run(
        [sys.executable, "-m", "falhook.cli", "console", "--config", str(console.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=console.tmp_path,
    )
