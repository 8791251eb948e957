"""The command line as a newcomer meets it: a busy port, a read-only command run in the wrong
folder, a config named by FALHOOK_CONFIG that is not there, an empty config, a mistyped
option. Each says what happened and what to do, in its own words, with a documented exit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.falhook_server import Falhook, free_port, wait_for

EXIT_LISTEN = 4


def falhook(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
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


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["events", "list"], 2),
        (["events", "list", "--json"], 2),
        (["events", "list", "--format", "csv"], 2),
        (["submissions", "list"], 2),
        (["events", "show", "abc"], 1),  # the event is unknown, as the contract says
        (["events", "replay", "abc"], 1),
    ],
)
def test_a_command_that_reads_never_makes_a_store(
    tmp_path: Path, args: list[str], code: int
) -> None:
    done = falhook(tmp_path, *args)
    assert done.returncode == code and done.stdout == ""
    assert "no store found: falhook-data/events.db does not exist" in done.stderr
    assert "--config PATH or FALHOOK_CONFIG=PATH" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no falhook-data/, no events.db


def test_a_config_that_names_a_store_not_made_yet_says_so(tmp_path: Path) -> None:
    (tmp_path / "falhook.toml").write_text('[store]\nurl = "sqlite:///state/events.db"\n')
    done = falhook(tmp_path, "events", "list", "--config", "falhook.toml")
    assert done.returncode == 2
    assert "state/events.db ([store].url of falhook.toml) does not exist" in done.stderr
    assert not (tmp_path / "state").exists()


def test_a_missing_falhook_config_file_is_blamed_on_falhook_config(tmp_path: Path) -> None:
    done = falhook(tmp_path, "events", "list", env={"FALHOOK_CONFIG": "nope.toml"})
    assert done.returncode == 2
    assert done.stderr.strip() == "falhook: config error: FALHOOK_CONFIG: no such file: nope.toml"
    done = falhook(tmp_path, "events", "list", "--config", "nope.toml")
    assert "config error: --config: no such file: nope.toml" in done.stderr


def test_a_mistyped_option_gets_its_commands_usage_and_a_suggestion(tmp_path: Path) -> None:
    done = falhook(tmp_path, "serve", "--hots", "0.0.0.0")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: falhook serve ")
    assert "falhook serve: error: unrecognized arguments: --hots 0.0.0.0" in done.stderr
    assert "(did you mean --host?)" in done.stderr
    done = falhook(tmp_path, "events", "list", "--rout", "x", "--limt", "3")
    assert done.stderr.startswith("usage: falhook events list ")
    assert "(did you mean --limit?)" in done.stderr
    done = falhook(tmp_path, "emulate", "--config", "falhook.toml")
    assert "unrecognized arguments: --config falhook.toml" in done.stderr
    assert "--config is an option of other commands, not of falhook emulate" in done.stderr


def test_an_empty_configs_banner_says_it_has_no_routes(tmp_path: Path) -> None:
    with Falhook(tmp_path, {}) as served:
        wait_for(lambda: "serving on" in served.logs(), timeout=30, what="the banner")
    banner = next(line for line in served.logs().splitlines() if "serving on" in line)
    assert "(no routes: every webhook is answered 404; config: " in banner
    assert "routes: ;" not in banner


def test_serve_on_the_embedded_defaults_offline_points_at_the_emulator(tmp_path: Path) -> None:
    """The set-up's first command, with fal's JWKS out of reach (this machine is offline):
    the not-ready line says where a newcomer can go instead."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "FALHOOK_CONFIG"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "falhook.cli", "serve", "--port", str(port)],
            cwd=tmp_path, env={**env, "FALHOOK_LOG_FORMAT": "json"}, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        wait_for(lambda: "not ready" in log_path.read_text(), timeout=60, what="not ready")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    line = next(json.loads(x) for x in log_path.read_text().splitlines() if "not ready" in x)
    assert "falhook emulate" in line["offline"] and "Quick start" in line["offline"]
