"""Shared pieces of the benchmarks: a JWKS server, a falhook process, a file server, RSS.

Benchmarks use public tools only (wrk, curl, /proc) and print ratios against a baseline
measured in the same run, because this machine is shared and noisy.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.falhook_server import to_toml  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def falhook_config(workdir: Path, jwks_url: str, **sections: dict[str, Any]) -> Path:
    config = {
        "receiver": {"jwks_url": jwks_url, "max_body_bytes": 10 * 1024 * 1024},
        "store": {"url": f"sqlite:///{workdir}/data/events.db"},
        "downloads": {
            "allow_private_hosts": True,
            "max_file_bytes": 8 * 1024**3,
            "spool_dir": str(workdir / "data" / "spool"),
        },
        "sinks": {"local": {"type": "disk", "root": str(workdir / "files")}},
        "routes": {"default": {"sinks": ["local"]}},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = workdir / "falhook.toml"
    path.write_text(to_toml(config))
    return path


def start(
    args: list[str],
    *,
    log: Path,
    cpus: set[int] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            args,
            stdout=fh,
            stderr=fh,
            cwd=cwd or ROOT,
            env=env or {**os.environ, "FALHOOK_LOG_FORMAT": "json"},
        )
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    return proc


def serve_command(config: Path, port: int, *extra: str) -> list[str]:
    """`falhook serve` with a config on a loopback port."""
    return [
        sys.executable,
        "-m",
        "falhook.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        *extra,
    ]


def start_falhook(
    config: Path, port: int, *, log: Path, cpus: set[int] | None = None, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start `falhook serve` and wait until it answers /healthz."""
    proc = start(serve_command(config, port, *extra), log=log, cpus=cpus)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_status(pid: int, key: str) -> int:
    """VmRSS / VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak_rss(pid: int) -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def median(values: list[float]) -> float:
    return statistics.median(values)


def make_file(path: Path, size: int) -> None:
    """`size` bytes (whole MiB) of random data at path, kept across runs."""
    if path.exists() and path.stat().st_size == size:
        return
    subprocess.run(
        ["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={size // (1024 * 1024)}"],
        check=True,
        capture_output=True,
    )
