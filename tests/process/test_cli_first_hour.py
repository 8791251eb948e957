"""The command line as a newcomer meets it: a busy port, a read-only command run in the wrong
folder, a config named by FALHOOK_CONFIG that is not there, an empty config, a mistyped
option. Each says what happened and what to do, in its own words, with a documented exit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXIT_LISTEN = 4


def falhook(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> (
    subprocess.CompletedProcess[str]
):
    environ = {k: v for k, v in os.environ.items() if k != "FALHOOK_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "falhook.cli", *args],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another process (here: the test) listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("command", [["serve"], ["console"], ["emulate"]])
def test_a_busy_port_fails_before_serving_with_its_own_exit_code(
    tmp_path: Path, busy_port: int, command: list[str]
) -> None:
    done = falhook(tmp_path, *command, "--port", str(busy_port))
    assert done.returncode == EXIT_LISTEN, done.stderr
    assert f"falhook: cannot listen on 127.0.0.1:{busy_port}: the port is in use" in done.stderr
    for said in ("serving on", "console on", "fal emulator on", "falhook ready", "Errno"):
        assert said not in done.stderr, said
    assert "Traceback" not in done.stderr
