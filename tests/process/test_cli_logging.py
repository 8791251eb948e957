"""Every CLI command logs to stderr: `--json` stdout is one JSON document, whatever is logged.

The commands run as subprocesses with debug logging on (each command then logs at least the
line naming itself), on a store holding an event delivered by falhook in this process and a
submission whose webhook fal's emulator drops, so that `submissions reconcile` logs what it
recovered.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from falhook.fal.emulate import Emulator, EmulatorServer
from falhook.testing import FalSigner, JWKSServer
from tests.support.falhook_server import base_config, free_port, to_toml, wait_for
from tests.support.inprocess import InProcess, InProcessFactory, sync_condition, wait_until

REFRAME = "luma/agent/ray/v3.2/reframe"
KEY = "test-key-0123456789"
INPUT = {"prompt": "wider", "video_url": "https://example.invalid/v.mp4", "aspect_ratio": "21:9"}
pytestmark = pytest.mark.one_store("where commands log, not what they store")


@pytest.fixture
def fal() -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(delay=0.1)) as server:
        yield server


async def cli(fh: InProcess, *args: str, fmt: str = "json") -> subprocess.CompletedProcess[str]:
    env = {"FALHOOK_LOG_LEVEL": "debug", "FALHOOK_LOG_FORMAT": fmt, "FAL_KEY": KEY}
    out = await fh.cli(*args, env=env)
    assert out.returncode == 0, out.stderr
    return out


def log_events(stderr: str) -> list[str]:
    """The `event` of each stderr line, every line being a JSON log line."""
    return [json.loads(line)["event"] for line in stderr.splitlines() if line.strip()]


async def test_json_commands_keep_stdout_pure_and_log_on_stderr(
    inprocess: InProcessFactory, fal: EmulatorServer, signer: FalSigner
) -> None:
    # One event straight from fal's webhook, delivered; then no falhook runs but the commands.
    fh = await inprocess(receiver={"queue_url": fal.url}, reconcile={"enabled": False})
    rid = await fh.send(signer, None)
    await fh.wait_state(rid, "delivered")
    await fh.aclose()
    # One submission whose webhook fal drops.
    submitted = await cli(
        fh, "submit", REFRAME, "--route", "reframe", "--json",
        "--input", json.dumps({**INPUT, "_emulate": {"outcome": "drop"}}),
    )  # fmt: skip
    sub_id = json.loads(submitted.stdout)["request_id"]
    assert "falhook command" in log_events(submitted.stderr)
    await wait_until(sync_condition(fal.emulator.idle), timeout=15, what="the job to finish")

    listed, shown, subs = await asyncio.gather(
        cli(fh, "events", "list", "--json"),
        cli(fh, "events", "show", rid, "--json"),
        cli(fh, "submissions", "list", "--json"),
    )
    assert [e["request_id"] for e in json.loads(listed.stdout)["events"]] == [rid]
    assert json.loads(shown.stdout)["state"] == "delivered"
    assert [s["request_id"] for s in json.loads(subs.stdout)["submissions"]] == [sub_id]
    for out in (listed, shown, subs):
        assert "falhook command" in log_events(out.stderr)

    # reconcile logs at info what it did (the dropped webhook, recovered by polling).
    rec = await cli(fh, "submissions", "reconcile", "--deadline", "0", "--json")
    assert json.loads(rec.stdout)["recovered"] == 1
    events = log_events(rec.stderr)
    assert {"recovered_by_polling", "reconciled"} <= set(events)
    assert KEY not in rec.stderr and KEY not in rec.stdout

    # `events replay --now` runs a worker in the command: stdout holds only its report.
    replayed = await cli(fh, "events", "replay", rid, "--now", "--force")
    assert replayed.stdout.splitlines()[-1] == "local: delivered"
    assert not any(line.startswith("{") for line in replayed.stdout.splitlines())
    assert "falhook command" in log_events(replayed.stderr)


async def test_console_format_logs_go_to_stderr_too(inprocess: InProcessFactory) -> None:
    config = await inprocess(run_worker=False)  # an empty store; nothing else matters
    out = await cli(config, "events", "list", "--json", fmt="console")
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
