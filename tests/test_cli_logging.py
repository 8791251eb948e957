"""Every CLI command logs to stderr: `--json` stdout is one JSON document, whatever is logged.

The commands run as subprocesses against a running `falhook serve` and fal's emulator, with
debug logging on (each command then logs at least the line naming itself) and a submission
whose webhook fal drops, so that `submissions reconcile` logs what it recovered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from falhook.fal.emulate import Emulator, EmulatorServer
from falhook.testing import FalSigner, JWKSServer, webhook_body
from tests.support.falhook_server import Falhook, base_config, free_port, to_toml, wait_for

REFRAME = "luma/agent/ray/v3.2/reframe"
KEY = "test-key-0123456789"
INPUT = {"prompt": "wider", "video_url": "https://example.invalid/v.mp4", "aspect_ratio": "21:9"}


@pytest.fixture
def running(tmp_path: Path, jwks: JWKSServer) -> Iterator[tuple[EmulatorServer, Falhook]]:
    with EmulatorServer(Emulator(delay=0.1)) as fal:
        port = free_port()
        receiver = {"public_url": f"http://127.0.0.1:{port}", "queue_url": fal.url}
        config = base_config(tmp_path, jwks.url, receiver=receiver, reconcile={"enabled": False})
        with Falhook(tmp_path, config, port=port, env={"FAL_KEY": KEY}) as falhook:
            yield fal, falhook


def cli(falhook: Falhook, *args: str, fmt: str = "json") -> subprocess.CompletedProcess[str]:
    env = falhook.env | {"FALHOOK_LOG_LEVEL": "debug", "FALHOOK_LOG_FORMAT": fmt}
    out = subprocess.run(
        [sys.executable, "-m", "falhook.cli", *args, "--config", str(falhook.config_path)],
        cwd=falhook.tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    return out


def log_events(stderr: str) -> list[str]:
    """The `event` of each stderr line, every line being a JSON log line."""
    return [json.loads(line)["event"] for line in stderr.splitlines() if line.strip()]


def test_json_commands_keep_stdout_pure_and_log_on_stderr(
    running: tuple[EmulatorServer, Falhook], signer: FalSigner, tmp_path: Path
) -> None:
    fal, falhook = running
    # One event straight from fal's webhook, one submission whose webhook fal drops.
    rid, body = webhook_body(str(uuid.uuid4()), payload=None)
    sent = httpx.post(
        falhook.url("/webhooks/default"), content=body, headers=signer.headers(body, rid)
    )
    assert sent.status_code == 200
    falhook.wait_state(rid, "delivered")
    submitted = cli(
        falhook, "submit", REFRAME, "--route", "reframe", "--json",
        "--input", json.dumps({**INPUT, "_emulate": {"outcome": "drop"}}),
    )  # fmt: skip
    sub_id = json.loads(submitted.stdout)["request_id"]
    assert "falhook command" in log_events(submitted.stderr)
    wait_for(fal.emulator.idle, timeout=15, what="the job to finish")

    listed = cli(falhook, "events", "list", "--json")
    assert [e["request_id"] for e in json.loads(listed.stdout)["events"]] == [rid]
    assert "falhook command" in log_events(listed.stderr)

    shown = cli(falhook, "events", "show", rid, "--json")
    assert json.loads(shown.stdout)["state"] == "delivered"
    assert "falhook command" in log_events(shown.stderr)

    subs = cli(falhook, "submissions", "list", "--json")
    assert [s["request_id"] for s in json.loads(subs.stdout)["submissions"]] == [sub_id]
    assert "falhook command" in log_events(subs.stderr)

    # reconcile logs at info what it did (the dropped webhook, recovered by polling).
    rec = cli(falhook, "submissions", "reconcile", "--deadline", "0", "--json")
    assert json.loads(rec.stdout)["recovered"] == 1
    events = log_events(rec.stderr)
    assert {"recovered_by_polling", "reconciled"} <= set(events)
    assert KEY not in rec.stderr and KEY not in rec.stdout

    # `events replay --now` runs a worker in the command (the running serve's worker may win
    # the race): whichever delivers, stdout holds only the command's report.
    replayed = cli(falhook, "events", "replay", rid, "--now", "--force")
    assert replayed.stdout.splitlines()[-1] == "local: delivered"
    assert not any(line.startswith("{") for line in replayed.stdout.splitlines())
    assert "falhook command" in log_events(replayed.stderr)


def test_console_format_logs_go_to_stderr_too(running: tuple[EmulatorServer, Falhook]) -> None:
    _, falhook = running
    out = cli(falhook, "events", "list", "--json", fmt="console")
    assert json.loads(out.stdout) == {"events": []}
    assert "falhook command" in out.stderr


def test_serve_logs_on_stderr_and_prints_nothing_on_stdout(
    tmp_path: Path, jwks: JWKSServer
) -> None:
    """`falhook serve` keeps stdout empty too: its JSON log lines are on stderr, which
    container runtimes collect the same way."""
    port = free_port()
    config = tmp_path / "serve.toml"
    config.write_text(to_toml(base_config(tmp_path, jwks.url)))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "falhook.cli",
            "serve",
            "--port",
            str(port),
            "--config",
            str(config),
        ],
        cwd=tmp_path,
        env=os.environ | {"FALHOOK_LOG_FORMAT": "json"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for(
            lambda: _healthy(f"http://127.0.0.1:{port}/healthz"), timeout=60, what="serve to answer"
        )
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
    assert stdout == ""
    assert "falhook ready" in [
        json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")
    ]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
