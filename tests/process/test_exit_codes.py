"""The command line as documented: one table of exit codes (README), every option in --help
with its default, --version, clear messages for bad values, headers on tables, the README's
command table complete, and progress only on a terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from falhook import __version__
from falhook.cli import main
from falhook.fal.emulate import Emulator, EmulatorServer, tiny_mp4
from falhook.progress import Progress
from tests.support.falhook_server import ROOT, base_config, to_toml

REFRAME = "luma/agent/ray/v3.2/reframe"
INPUT = json.dumps({"prompt": "wider", "aspect_ratio": "21:9", "video_url": "https://x.invalid/v"})
README = (ROOT / "README.md").read_text()


@pytest.fixture
def fal() -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(delay=30)) as server:
        yield server


@pytest.fixture
def config(tmp_path: Path, fal: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> str:
    receiver = {"public_url": "http://127.0.0.1:9", "queue_url": fal.url}
    path = tmp_path / "falhook.toml"
    path.write_text(to_toml(base_config(tmp_path, fal.jwks_url, receiver=receiver)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAL_KEY", "test-key")
    monkeypatch.delenv("FALHOOK_CONFIG", raising=False)
    return str(path)


def run(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capfd.readouterr()
    return code, out, err


# --- exit codes (README: "Exit codes") ----------------------------------------------------------


def test_readme_has_one_exit_code_table_with_every_code() -> None:
    section = README.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `?(\d+)`? \|", section, re.MULTILINE)
    assert rows == ["0", "1", "2", "3", "4", "130"]
    assert README.count("## Exit codes") == 1


def test_an_unconfigured_route_exits_2(
    config: str, fal: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capfd, "submit", REFRAME, "--route", "nope", "--input", INPUT,
                       "--config", config)  # fmt: skip
    assert code == 2 and "route 'nope' is not configured" in err
    assert fal.emulator.requests == []


def test_a_missing_file_path_exits_2(
    config: str, fal: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capfd, "submit", REFRAME, "--route", "reframe", "--input", INPUT,
                       "--file", "video_url=missing.mp4", "--config", config)  # fmt: skip
    assert code == 2 and "missing.mp4: no such file" in err
    assert fal.emulator.requests == []


def test_an_unset_fal_key_exits_2(
    config: str, fal: EmulatorServer, capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("FAL_KEY")
    code, _, err = run(capfd, "submit", REFRAME, "--route", "reframe", "--input", INPUT,
                       "--config", config)  # fmt: skip
    assert code == 2 and "FAL_KEY is not set" in err
    code, _, err = run(capfd, "submissions", "reconcile", "--config", config)
    assert code == 2 and "FAL_KEY is not set" in err
    assert fal.emulator.requests == []


def test_an_unknown_event_exits_1_and_a_config_mistake_2(
    config: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capfd, "events", "show", "nope", "--config", config)
    assert code == 1 and "nope" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[delivery]\nmax_attempts = 0\n")
    code, _, err = run(capfd, "events", "list", "--config", str(bad))
    assert code == 2 and "[delivery].max_attempts" in err


def test_a_refusal_by_fal_exits_1(config: str, capfd: pytest.CaptureFixture[str]) -> None:
    body = json.dumps({"prompt": "x", "_emulate": {"outcome": "explode"}})
    code, _, err = run(capfd, "submit", "fal-ai/flux/dev", "--route", "reframe", "--input",
                       body, "--config", config)  # fmt: skip
    assert code == 1 and "HTTP 422" in err


# --- arguments and help -------------------------------------------------------------------------


def test_version(capfd: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capfd, "--version")
    assert code == 0 and out.strip() == f"falhook {__version__}"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            ["serve"],
            ["--host HOST", "(default: 127.0.0.1)", "--port PORT", "(default: $PORT, else 8000)"],
        ),
        (["events", "list"], ["--state", "--route ROUTE", "--limit LIMIT", "(default: 100)"]),
        (["events", "replay"], ["--timeout TIMEOUT", "(default: 600.0)"]),
        (["emulate"], ["--port PORT", "(default: 8001)", "--tls", "--public-url"]),
        (["submissions", "list"], ["--limit LIMIT", "(default: 100)"]),
    ],
)
def test_every_option_in_help_says_its_default(
    command: list[str], expected: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capfd, *command, "--help")
    assert code == 0
    text = " ".join(out.split())  # argparse wraps lines
    for part in expected:
        assert part in text, (part, out)


def test_help_describes_every_option(capfd: pytest.CaptureFixture[str]) -> None:
    """No option is listed without a sentence (argparse prints a bare name otherwise)."""
    for command in (["serve"], ["events", "list"], ["emulate"], ["submit"]):
        _, out, _ = run(capfd, *command, "--help")
        options = out.split("options:", 1)[1]
        bare = re.findall(r"^  (-[-\w]+(?: [A-Z_|@]+)?)\n(?!\s{10})", options, re.MULTILINE)
        assert bare == [], (command, bare)


def test_emulate_refuses_a_config_it_would_ignore(capfd: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capfd, "emulate", "--config", "falhook.toml")
    assert code == 2 and "unrecognized arguments: --config" in err


def test_a_bad_number_says_what_was_expected(capfd: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capfd, "events", "list", "--limit", "abc")
    assert code == 2
    assert "argument --limit: expected a whole number >= 1, got 'abc'" in err
    assert "_positive_int" not in err


def test_submissions_list_has_a_header_row(
    config: str, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capfd, "submit", REFRAME, "--route", "reframe", "--input", INPUT,
                         "--config", config)  # fmt: skip
    assert code == 0, err
    rid = out.strip()
    code, out, _ = run(capfd, "submissions", "list", "--config", config)
    header, row = out.splitlines()
    assert header.split() == ["SUBMITTED_AT", "STATE", "REQUEST_ID", "ENDPOINT", "ROUTE",
                              "SECONDS", "DETAIL"]  # fmt: skip
    assert rid in row and "pending" in row


def test_the_readme_command_table_lists_every_command(capfd: pytest.CaptureFixture[str]) -> None:
    table = README.split("## Command line", 1)[1].split("\n\n", 2)[1]
    for command in ("serve", "worker", "events list", "events show", "events replay", "submit",
                    "submissions list", "submissions reconcile", "emulate"):  # fmt: skip
        assert f"`falhook {command}" in table, command


# --- progress: on a terminal only ---------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_and_ends_the_line() -> None:
    screen = Terminal()
    with Progress("uploading clip.mp4", total=4 * 1048576, unit="bytes", stream=screen) as bar:
        bar.advance(1048576)
    assert screen.getvalue().startswith("\ruploading clip.mp4: 1.0 MiB of 4.0 MiB (25%)")
    assert screen.getvalue().endswith("\n")


def test_progress_is_silent_elsewhere() -> None:
    pipe = io.StringIO()
    with Progress("looking up", total=3, stream=pipe) as bar:
        bar.update(3)
    assert pipe.getvalue() == ""


def test_a_large_upload_shows_progress_on_a_terminal_only(
    config: str, fal: EmulatorServer, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(tiny_mp4(5.0, padding=3 * 1048576))
    no_url = json.dumps({"prompt": "wider", "aspect_ratio": "21:9"})
    args = [sys.executable, "-m", "falhook.cli", "submit", REFRAME, "--route", "reframe",
            "--input", no_url, "--file", f"video_url={clip}", "--config", config]  # fmt: skip
    env = {**os.environ, "FAL_KEY": "test-key", "FALHOOK_LOG_LEVEL": "error"}
    piped = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert "uploading" not in piped.stderr
    master, slave = pty.openpty()
    try:
        done = subprocess.run(args, stdout=subprocess.PIPE, stderr=slave, env=env, timeout=60)
        os.close(slave)
        seen = b""
        while True:  # bounded: the pty's buffer holds what the finished process wrote
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: nothing more
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert done.returncode == 0
    assert b"uploading clip.mp4" in seen and b"(100%)" in seen
