"""The local fal: queue, JWKS, files and signed webhooks shaped like the real endpoints'."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from falhook.fal.ray import mp4_duration
from tests.inprocess.test_emulate import INPUT, REFRAME
from tests.support.falhook_server import Falhook, base_config, free_port, wait_for


def test_quick_start_emulate_serve_submit_ends_with_a_file_on_disk(tmp_path: Path) -> None:
    fal_port = free_port()
    fal_url = f"http://127.0.0.1:{fal_port}"
    log = (tmp_path / "emulate.log").open("wb")
    emulate = subprocess.Popen(
        [sys.executable, "-m", "falhook.cli", "emulate", "--port", str(fal_port),
         "--delay", "0.2"],
        cwd=tmp_path, stdout=log, stderr=log,
    )  # fmt: skip
    try:

        def jwks_up() -> bool:
            assert emulate.poll() is None, (tmp_path / "emulate.log").read_text()
            try:
                return httpx.get(f"{fal_url}/.well-known/jwks.json", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(jwks_up, timeout=30, what="falhook emulate to answer")
        port = free_port()
        receiver = {"public_url": f"http://127.0.0.1:{port}", "queue_url": fal_url}
        config = base_config(tmp_path, f"{fal_url}/.well-known/jwks.json", receiver=receiver)
        with Falhook(tmp_path, config, port=port, env={"FAL_KEY": "any-key"}) as falhook:
            done = falhook.cli("submit", REFRAME, "--route", "reframe", "--input",
                               json.dumps(INPUT))  # fmt: skip
            assert done.returncode == 0, done.stderr
            rid = done.stdout.strip()
            falhook.wait_state(rid, "delivered")
            video = tmp_path / "files" / "reframe" / rid / "output.mp4"
            assert mp4_duration(video) == 5.0
    finally:
        emulate.terminate()
        try:
            emulate.wait(timeout=15)
        except subprocess.TimeoutExpired:
            emulate.kill()
            emulate.wait(timeout=10)
        log.close()
