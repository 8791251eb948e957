"""`falhook serve` (or `falhook worker`) as a real subprocess on loopback, configured per test,
and its store read from the test's own process (`StoreReader`: no `falhook events show`
process per look).

Everything here waits on conditions with deadlines; nothing sleeps for luck.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from falhook.config import settings_from_dict
from falhook.store import EventView, make_store
from falhook.store.document import event_document

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_toml(doc: dict[str, Any]) -> str:
    """Enough TOML for test configs: scalars and lists at the top of nested tables."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(type(v))

    def key(k: str) -> str:  # bare when TOML allows it ("$in" is not a bare key)
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix and (scalars or not d):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{key(k)} = {value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{key(k)}" if prefix else key(k), v)

    table("", doc)
    return "\n".join(lines) + "\n"


def base_config(tmp_path: Path, jwks_url: str, **overrides: Any) -> dict[str, Any]:
    """A config for tests: SQLite and a disk sink under tmp_path, loopback downloads allowed."""
    config: dict[str, Any] = {
        "receiver": {"jwks_url": jwks_url, "jwks_refetch_interval": 0},
        "store": {"url": f"sqlite:///{tmp_path}/data/events.db"},
        "delivery": {"backoff_initial": 0.2, "backoff_max": 1.0, "poll_interval": 0.2},
        "downloads": {"allow_private_hosts": True, "spool_dir": str(tmp_path / "data" / "spool")},
        "sinks": {"local": {"type": "disk", "root": str(tmp_path / "files")}},
        "routes": {"default": {"sinks": ["local"]}, "reframe": {"sinks": ["local"]}},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


class StoreReader:
    """The store a falhook config names, opened once in this process and read through its
    EventReader role from synchronous test code (the store lives on an event loop of its
    own thread). Reads what `falhook events show --json` would print, in milliseconds."""

    def __init__(self, config: dict[str, Any], base_dir: Path) -> None:
        self.store = make_store(settings_from_dict(config, base_dir=base_dir))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="store-reader", daemon=True
        )
        self._thread.start()
        try:
            self._call(self.store.open())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def view(self, request_id: str) -> EventView | None:
        return self._call(self.store.get_event(request_id))

    def event(self, request_id: str) -> dict[str, Any] | None:
        """The event as `falhook events show --json` prints it, or None."""
        view = self.view(request_id)
        return event_document(view) if view is not None else None

    def states(self, limit: int = 100_000) -> dict[str, str]:
        """request_id -> the event's state, for every stored event (up to `limit`)."""
        views = self._call(self.store.list_events(limit=limit))
        return {v.request_id: v.state for v in views}

    def close(self) -> None:
        try:
            self._call(self.store.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class Falhook:
    """A falhook process. `start()` waits until /healthz answers."""

    def __init__(
        self,
        tmp_path: Path,
        config: dict[str, Any],
        *,
        command: tuple[str, ...] = ("serve",),
        port: int | None = None,
        env: dict[str, str] | None = None,
        name: str = "falhook",
        cwd: Path | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.cwd = cwd or tmp_path  # where the process runs (the config's folder by default)
        self.config_path = tmp_path / f"{name}.toml"
        self.config_path.write_text(to_toml(config))
        self.config = config
        self.command = command
        self.port = port or free_port()
        self.env = {**os.environ, "FALHOOK_LOG_FORMAT": "json", **(env or {})}
        self.log_path = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: StoreReader | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self, *, wait: bool = True) -> Falhook:
        args = [
            sys.executable,
            "-m",
            "falhook.cli",
            *self.command,
            "--config",
            str(self.config_path),
        ]
        if self.command[0] in ("serve", "console"):
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.cwd, env=self.env, stdout=log, stderr=log)
        if wait and self.command[0] in ("serve", "console"):
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until /healthz answers (a serve started with wait=False)."""
        wait_for(self._healthy, timeout=timeout, what=f"falhook on {self.port} to be healthy")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"falhook exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            return httpx.get(self.url("/healthz"), timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def close(self) -> None:
        """Stop the process and close the store reader, if one was opened."""
        try:
            self.stop()
        finally:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    @property
    def reader(self) -> StoreReader:
        """This config's store, read in the test's process (opened on first use; it stays
        open across stops and restarts of the process)."""
        if self._reader is None:
            self._reader = StoreReader(self.config, self.tmp_path)
        return self._reader

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run another falhook command against this config."""
        return subprocess.run(
            [sys.executable, "-m", "falhook.cli", *args, "--config", str(self.config_path)],
            cwd=self.tmp_path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def event(self, request_id: str) -> dict[str, Any] | None:
        """The event as `falhook events show --json` prints it, or None."""
        return self.reader.event(request_id)

    def wait_state(self, request_id: str, state: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            ev = self.event(request_id)
            return ev if ev and ev["state"] == state else None

        return wait_for(check, timeout=timeout, what=f"{request_id} to be {state}")

    def __enter__(self) -> Falhook:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
