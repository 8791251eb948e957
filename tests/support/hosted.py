"""falhook run by someone else's server, as a real process on loopback: the user's own app
under uvicorn (docs/embedding.md's examples, the Modal factory), functions-framework (Cloud
Functions), the container's own command with $PORT (Cloud Run). Its store is read from the
test's process (StoreReader); a delivery is held mid-download to be in flight when SIGTERM
comes.

Every wait is a condition with a deadline; nothing sleeps for luck.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from falhook.store.models import utcnow
from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import StoreReader, free_port, to_toml, wait_for
from tests.support.fileserver import FileServer

BIN = Path(sys.executable).parent  # the venv's scripts: uvicorn, functions-framework


def doc_blocks(markdown: str) -> dict[str, str]:
    """The Python blocks of a document that begin with a `# NAME.py` line, by NAME.py."""
    blocks = re.findall(r"```python\n(# ([\w.]+\.py)\n.*?)```", markdown, flags=re.S)
    return {name: code for code, name in blocks}


class Hosted:
    """A server process serving falhook. `start()` waits until `health` answers 200."""

    def __init__(
        self,
        tmp_path: Path,
        config: dict[str, Any],
        args: list[str],
        *,
        name: str,
        health: str = "/healthz",
        env: dict[str, str] | None = None,
        port: int | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.config = config
        self.config_path = tmp_path / f"{name}.toml"
        self.config_path.write_text(to_toml(config))
        self.port = port or free_port()
        self.args = [a.replace("{port}", str(self.port)) for a in args]
        self.health = health
        self.env = {
            **os.environ,
            "FALHOOK_CONFIG": str(self.config_path),
            "FALHOOK_LOG_FORMAT": "json",
            **(env or {}),
        }
        self.cwd = cwd or tmp_path
        self.log_path = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: StoreReader | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Hosted:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=self.cwd, env=self.env, stdout=log, stderr=log
            )
        wait_for(self._healthy, timeout=60, what=f"{self.args[:3]} to answer {self.health}")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            return httpx.get(self.url(self.health), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, float]:
        """(exit status, seconds from the signal to the exit)."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        return code, time.monotonic() - started

    @property
    def reader(self) -> StoreReader:
        if self._reader is None:
            self._reader = StoreReader(self.config, self.tmp_path)
        return self._reader

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.stop()
        finally:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def post(self, path: str, signer: FalSigner, payload: Any) -> tuple[str, httpx.Response]:
        rid, body = webhook_body(str(uuid.uuid4()), payload=payload)
        answer = httpx.post(
            self.url(path), content=body, headers=signer.headers(body, rid), timeout=60
        )
        return rid, answer

    def wait_state(self, rid: str, state: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            doc = self.reader.event(rid)
            return doc if doc is not None and doc["state"] == state else None

        found: dict[str, Any] = wait_for(check, timeout=timeout, what=f"{rid} to be {state}")
        return found


def sigterm_mid_delivery(
    app: Hosted, files: FileServer, signer: FalSigner, webhooks: str
) -> tuple[str, float]:
    """A webhook whose download is held half-way; SIGTERM once it is in flight. Returns its
    request id and how long the process took to exit. The caller checks the hand-back."""
    held = f"/held-{uuid.uuid4().hex[:8]}.bin"
    files.add(held, size=1024 * 1024, pause_after=512 * 1024)
    rid, answer = app.post(webhooks, signer, {"video": {"url": files.url(held)}})
    assert answer.status_code == 200, answer.text
    wait_for(lambda: files.hits(held) >= 1, timeout=30, what="the download to start")
    code, took = app.stop(signal.SIGTERM)
    files.resume(held)
    assert code in (0, -signal.SIGTERM), f"exit {code}:\n{app.logs()}"
    return rid, took


def assert_handed_back(app: Hosted, rid: str, sink: str = "local") -> None:
    """The delivery stopped mid-attempt is pending again, due now, its attempt not counted."""
    view = app.reader.view(rid)
    assert view is not None
    delivery = view.deliveries[sink]
    assert (delivery.state, delivery.attempts) == ("pending", 0), delivery
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at <= utcnow()
