"""The exec sink against real processes: small Python scripts written by each test and run
with this interpreter. What reaches the command (arguments, stdin, the event file, the
downloaded file, the environment), how its exit becomes an outcome, and that nothing it
started outlives its run."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from falhook_sinks.base import DeliveryContext, OptionError, Permanent, Retryable, SinkEnv
from falhook_sinks.exec import ExecSink
from falhook_sinks.registry import construct
from tests.support.processes import TREE, kill_if_running, pids_of, running
from tests.support.sink_ctx import local_file, make_ctx

PY = sys.executable
T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Run[Any]]:
    """Runs a coroutine on asyncio's loop or on uvloop: `falhook worker` runs on the first,
    `falhook serve` on the second (uvicorn's choice when installed), and their subprocess
    transports differ."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner.run


VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64


def script(tmp_path: Path, body: str, name: str = "cmd.py") -> Path:
    """A small command, written for the test: `body` runs with sys, os, json imported."""
    path = tmp_path / name
    path.write_text("import json, os, sys\n" + textwrap.dedent(body))
    return path


def sink(tmp_path: Path, command: list[str], name: str = "run", **options: Any) -> ExecSink:
    return construct(ExecSink, name, {"command": command, **options}, SinkEnv(base_dir=tmp_path))


def video_ctx(tmp_path: Path, **kw: Any) -> DeliveryContext:
    video = local_file(tmp_path / "spool", "video", "clip.mp4", VIDEO, content_type="video/mp4")
    return make_ctx([video], payload={"video": {"url": video.url}}, **kw)


RECORD = """
    record = {
        "argv": sys.argv[1:],
        "stdin": sys.stdin.read(),
        "event_json": open(sys.argv[3]).read(),
        "file_sha256": __import__("hashlib").sha256(open(sys.argv[4], "rb").read()).hexdigest(),
        "file_path": sys.argv[4],
        "env": {k: v for k, v in os.environ.items() if k.startswith(("FALHOOK_", "EXTRA"))},
        "cwd": os.getcwd(),
    }
    with open(sys.argv[1], "w") as fh:
        json.dump(record, fh)
"""


def test_arguments_stdin_event_file_downloaded_file_and_env_reach_the_command(
    tmp_path: Path, run: Run[Any]
) -> None:
    out = tmp_path / "record.json"
    cmd = script(tmp_path, RECORD)
    command = [PY, str(cmd), str(out), "{route}/{request_id}", "{event_json}", "{file:video}"]
    s = sink(tmp_path, command, env={"EXTRA_ONE": "1", "EXTRA_TWO": "two words"})
    ctx = video_ctx(tmp_path, request_id="2b0c4f0e-aa", route="reframe", attempt=3, sink="run")
    result = run(s.deliver(ctx))
    got = json.loads(out.read_text())
    assert got["argv"][:2] == [str(out), "reframe/2b0c4f0e-aa"]
    assert got["event_json"] == got["stdin"]
    event = json.loads(got["stdin"])
    assert {k: event[k] for k in ("request_id", "route", "fal_status")} == {
        "request_id": "2b0c4f0e-aa",
        "route": "reframe",
        "fal_status": "OK",
    }
    assert event["payload"] == ctx.event.payload
    [video] = event["files"]
    assert video["path"] == "video" and video["local_path"] == got["file_path"]
    assert Path(got["file_path"]).name == "clip.mp4"  # the safe name, with its extension
    assert got["file_sha256"] == hashlib.sha256(VIDEO).hexdigest()
    inherited = {k for k in os.environ if k.startswith("FALHOOK_")}  # e.g. CI's FALHOOK_NO_SKIP
    assert {k: v for k, v in got["env"].items() if k not in inherited} == {
        "EXTRA_ONE": "1",
        "EXTRA_TWO": "two words",
        "FALHOOK_REQUEST_ID": "2b0c4f0e-aa",
        "FALHOOK_ROUTE": "reframe",
        "FALHOOK_SINK": "run",
        "FALHOOK_ATTEMPT": "3",
        "FALHOOK_FAL_STATUS": "OK",
        "FALHOOK_EVENT_JSON": got["argv"][2],
        "FALHOOK_FILES_DIR": str(Path(got["file_path"]).parent),
    }
    assert got["cwd"] == str(tmp_path.resolve())  # the config file's folder
    assert result == {"ran": True, "exit_code": 0, "seconds": result["seconds"], "attempt": 3,
                      "stdout": []}  # fmt: skip
    assert not Path(got["argv"][2]).parent.exists()  # the run's folder is gone


def test_payload_values_arrive_as_one_sanitised_argument_each(
    tmp_path: Path, run: Run[Any]
) -> None:
    out = tmp_path / "argv.json"
    cmd = script(tmp_path, "json.dump([sys.argv[2:], os.environ['FALHOOK_REQUEST_ID']], "
                           "open(sys.argv[1], 'w'))\n")  # fmt: skip
    hostile = "--force ../../etc; rm -rf $HOME"
    video = local_file(tmp_path / "spool", "video", "-rf; x.mp4", b"v")
    ctx = make_ctx([video], request_id=hostile)
    run(sink(tmp_path, [PY, str(cmd), str(out), "{request_id}", "{file:video}"]).deliver(ctx))
    [argv, raw_id] = json.loads(out.read_text())
    digest = hashlib.sha256(hostile.encode()).hexdigest()[:16]
    assert argv[0] == f"force_.._.._etc__rm_-rf__HOME~{digest}"  # no flag, no path
    assert argv[1].endswith("/files/-rf; x.mp4") and argv[1].startswith("/")
    assert raw_id == hostile  # the exact id, for scripts that look it up


def test_exit_75_is_retried_with_the_stderr_tail(tmp_path: Path, run: Run[Any]) -> None:
    cmd = script(tmp_path, "print('busy, try later', file=sys.stderr)\nsys.exit(75)\n")
    with pytest.raises(Retryable) as err:
        run(sink(tmp_path, [PY, str(cmd)]).deliver(video_ctx(tmp_path)))
    assert "exited with 75 (EX_TEMPFAIL)" in str(err.value)
    assert str(err.value).endswith("of stderr:\nbusy, try later")


def test_exit_1_is_permanent_with_the_last_lines_of_stderr(tmp_path: Path, run: Run[Any]) -> None:
    cmd = script(tmp_path, "for i in range(10): print(f'line {i}', file=sys.stderr)\nsys.exit(1)\n")
    with pytest.raises(Permanent) as err:
        run(sink(tmp_path, [PY, str(cmd)], stderr_lines=3).deliver(video_ctx(tmp_path)))
    assert str(err.value) == (
        f"{PY!r} exited with status 1; last 3 lines of stderr:\nline 7\nline 8\nline 9"
    )


def test_a_command_killed_by_a_signal_is_permanent(tmp_path: Path, run: Run[Any]) -> None:
    cmd = script(tmp_path, "import signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(Permanent, match="was killed by SIGKILL; stderr was empty"):
        run(sink(tmp_path, [PY, str(cmd)]).deliver(video_ctx(tmp_path)))


def test_a_huge_stderr_stays_bounded_in_the_error(tmp_path: Path, run: Run[Any]) -> None:
    body = """
        line = b"e" * 999 + b"\\n"
        for _ in range(30_000):  # 30 MB of lines
            sys.stderr.buffer.write(line)
        sys.stderr.buffer.write(b"x" * 5_000_000)  # then 5 MB without a line end
        sys.stderr.buffer.write(b"\\nthe real error\\n")
        sys.exit(2)
    """
    cmd = script(tmp_path, body)
    with pytest.raises(Permanent) as err:
        run(sink(tmp_path, [PY, str(cmd)], stderr_lines=5).deliver(video_ctx(tmp_path)))
    message = str(err.value)
    assert message.endswith("x [...]\nthe real error")
    assert len(message) < 5 * 320 + 200


def test_a_chatty_command_that_never_reads_stdin_does_not_block(
    tmp_path: Path, run: Run[Any]
) -> None:
    # 20 MB on stdout and on stderr, stdin never read while a 2 MB event waits in it: the
    # pipes are pumped together, so neither side waits for the other.
    body = """
        chunk = b"o" * 1023 + b"\\n"
        for _ in range(20_000):
            sys.stdout.buffer.write(chunk)
            sys.stderr.buffer.write(chunk)
        print("done")
    """
    cmd = script(tmp_path, body)
    ctx = make_ctx([], payload={"big": "p" * 2_000_000})
    result = run(sink(tmp_path, [PY, str(cmd)], stdout_lines=2).deliver(ctx))
    assert result["exit_code"] == 0
    assert result["stdout"] == ["o" * 300 + " [...]", "done"]


@pytest.mark.parametrize("flags", [[], ["--ignore-term"]], ids=["polite", "ignores-sigterm"])
def test_a_timeout_kills_the_command_and_its_children(
    tmp_path: Path, flags: list[str], run: Run[Any]
) -> None:
    pids_file = tmp_path / "pids.json"
    cmd = script(tmp_path, TREE)
    s = sink(tmp_path, [PY, str(cmd), str(pids_file), *flags], timeout=1.5, kill_grace=0.5)
    try:
        with pytest.raises(Permanent) as err:
            run(s.deliver(video_ctx(tmp_path)))
        pids = pids_of(pids_file)
        assert not any(running(pid) for pid in pids)
    finally:
        if pids_file.exists():
            kill_if_running(json.loads(pids_file.read_text()))
    assert str(err.value) == (
        f"{PY!r} timed out after 1.5 s and was killed with its process group; "
        "last 1 line of stderr:\nstarted a child"
    )


def test_processes_left_behind_by_a_finished_command_are_stopped(
    tmp_path: Path, run: Run[Any]
) -> None:
    pids_file = tmp_path / "pids.json"
    cmd = script(tmp_path, TREE)
    s = sink(tmp_path, [PY, str(cmd), str(pids_file), "--exit"], kill_grace=0.5)
    try:
        result = run(s.deliver(video_ctx(tmp_path)))  # the child holds stdout: no hang
        assert result["exit_code"] == 0
        [_, child] = pids_of(pids_file)
        assert not running(child)
    finally:
        if pids_file.exists():
            kill_if_running(json.loads(pids_file.read_text()))


def test_a_cancelled_delivery_kills_the_process_group(tmp_path: Path, run: Run[Any]) -> None:
    pids_file = tmp_path / "pids.json"
    cmd = script(tmp_path, TREE)
    s = sink(tmp_path, [PY, str(cmd), str(pids_file), "--ignore-term"], timeout=60)

    async def cancel_once_started() -> list[int]:
        task = asyncio.create_task(s.deliver(video_ctx(tmp_path)))
        pids = await asyncio.to_thread(pids_of, pids_file)
        task.cancel()  # as the worker's shutdown or its attempt_timeout does
        with pytest.raises(asyncio.CancelledError):
            await task
        return pids

    try:
        pids = run(cancel_once_started())
        assert not any(running(pid) for pid in pids)
    finally:
        if pids_file.exists():
            kill_if_running(json.loads(pids_file.read_text()))


def test_a_file_the_event_lacks_is_permanent_and_runs_nothing(
    tmp_path: Path, run: Run[Any]
) -> None:
    marker = tmp_path / "ran"
    cmd = script(tmp_path, "open(sys.argv[1], 'w').close()\n")
    image = local_file(tmp_path / "spool", "images[0]", "a.png", b"png")
    with pytest.raises(Permanent) as err:
        run(sink(tmp_path, [PY, str(cmd), str(marker), "{file:video}"]).deliver(make_ctx([image])))
    assert str(err.value) == (
        "the command needs {file:video}, but this event has no file at 'video' "
        "(its files: images[0])"
    )
    assert not marker.exists()


def test_an_error_event_without_the_file_hints_at_run_on(tmp_path: Path, run: Run[Any]) -> None:
    s = sink(tmp_path, [PY, "-c", "pass", "{file:video}"])
    with pytest.raises(Permanent, match="its files: none\\); a failed event has no files: run_on"):
        run(s.deliver(make_ctx([], status="ERROR", error="boom")))


def test_run_on_chooses_ok_or_failed_events(tmp_path: Path, run: Run[Any]) -> None:
    runs = tmp_path / "runs"
    cmd = script(tmp_path, "open(sys.argv[1], 'a').write(os.environ['FALHOOK_FAL_STATUS'] + ' ')\n")
    ok, failed = video_ctx(tmp_path), make_ctx([], status="ERROR", error="Invalid input")
    only_ok = sink(tmp_path, [PY, str(cmd), str(runs)], run_on="ok")
    only_errors = sink(tmp_path, [PY, str(cmd), str(runs)], run_on="error")
    assert run(only_ok.deliver(failed)) == {
        "ran": False,
        "skipped": 'run_on = "ok" and the event is ERROR',
    }
    assert run(only_ok.deliver(ok))["ran"] is True
    assert run(only_errors.deliver(ok)) == {
        "ran": False,
        "skipped": 'run_on = "error" and the event is OK',
    }
    assert run(only_errors.deliver(failed))["ran"] is True
    assert runs.read_text() == "OK ERROR "


def test_a_replay_runs_nothing_again_unless_forced(tmp_path: Path, run: Run[Any]) -> None:
    runs = tmp_path / "runs"
    cmd = script(tmp_path, "open(sys.argv[1], 'a').write('run ')\n")
    s = sink(tmp_path, [PY, str(cmd), str(runs)])
    first = run(s.deliver(video_ctx(tmp_path)))
    assert run(s.deliver(video_ctx(tmp_path, previous=first))) == first  # replay
    run(s.deliver(video_ctx(tmp_path, previous=None)))  # replay --force
    assert runs.read_text() == "run run "


def test_concurrency_limits_the_runs_at_once(tmp_path: Path, run: Run[Any]) -> None:
    log = tmp_path / "log"
    body = """
        def note(what):
            with open(sys.argv[1], "a") as fh:
                fh.write(what + " ")
        note("start")
        __import__("time").sleep(0.2)  # without the limit, the runs would overlap here
        note("end")
    """
    s = sink(tmp_path, [PY, str(script(tmp_path, body)), str(log)], concurrency=1)

    async def three_at_once() -> None:
        await asyncio.gather(
            *(s.deliver(video_ctx(tmp_path, request_id=f"r{i}")) for i in range(3))
        )

    run(three_at_once())
    assert log.read_text() == "start end " * 3


def test_the_event_document_links_copies_stored_by_earlier_sinks(
    tmp_path: Path, run: Run[Any]
) -> None:
    out = tmp_path / "event.json"
    cmd = script(tmp_path, "open(sys.argv[1], 'w').write(sys.stdin.read())\n")
    stored = {"archive": {"objects": {"video": {"url": "https://s3.example/clip.mp4?sig"}}}}
    run(sink(tmp_path, [PY, str(cmd), str(out)]).deliver(video_ctx(tmp_path, outputs=stored)))
    [video] = json.loads(out.read_text())["files"]
    assert video["stored_url"] == "https://s3.example/clip.mp4?sig"
    assert video["url"] == "https://v3.fal.media/files/abc/clip.mp4"  # fal's, as received


def test_inherit_env_false_passes_only_basic_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: Run[Any]
) -> None:
    monkeypatch.setenv("FAL_KEY", "secret-of-the-worker")
    out = tmp_path / "env.json"
    cmd = script(tmp_path, "json.dump(dict(os.environ), open(sys.argv[1], 'w'))\n")
    for inherit in (True, False):
        s = sink(tmp_path, [PY, str(cmd), str(out)], inherit_env=inherit, env={"MINE": "1"})
        run(s.deliver(video_ctx(tmp_path)))
        env = json.loads(out.read_text())
        assert env["MINE"] == "1" and env["PATH"] == os.environ["PATH"]
        assert ("FAL_KEY" in env) is inherit


def test_cwd_is_resolved_against_the_config_folder(tmp_path: Path, run: Run[Any]) -> None:
    (tmp_path / "work").mkdir()
    out = tmp_path / "cwd.txt"
    cmd = script(tmp_path, "open(sys.argv[1], 'w').write(os.getcwd())\n")
    run(sink(tmp_path, [PY, str(cmd), str(out)], cwd="work").deliver(video_ctx(tmp_path)))
    assert out.read_text() == str(tmp_path / "work")


def test_a_relative_program_is_found_from_cwd(tmp_path: Path, run: Run[Any]) -> None:
    out = tmp_path / "ran"
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text(f"#!{PY}\nimport sys\nopen(sys.argv[1], 'w').close()\n")
    tool.chmod(0o755)
    run(sink(tmp_path, ["bin/tool", str(out)]).deliver(video_ctx(tmp_path)))
    assert out.exists()


def test_a_program_gone_since_start_up_is_permanent(tmp_path: Path, run: Run[Any]) -> None:
    tool = tmp_path / "tool"
    tool.write_text(f"#!{PY}\n")
    tool.chmod(0o755)
    s = sink(tmp_path, [str(tool)])
    tool.unlink()
    with pytest.raises(Permanent, match=r"cannot start .*tool'"):
        run(s.deliver(video_ctx(tmp_path)))


def test_a_missing_temporary_folder_is_retryable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: Run[Any]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))  # e.g. a tmpfs unmounted
    with pytest.raises(Retryable, match="cannot prepare the run's folder"):
        run(sink(tmp_path, [PY, "-c", "pass"]).deliver(video_ctx(tmp_path)))


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({}, "command", "is required"),
        ({"command": []}, "command", "must be a non-empty list"),
        ({"command": "ffmpeg -i x"}, "command", "must be a list"),
        ({"command": [PY, "{video}"]}, "command", "unknown placeholder {video}"),
        ({"command": [PY, "{file:video"]}, "command", "unbalanced '{'"),
        ({"command": [PY, "out}"]}, "command", "unbalanced '}'"),
        ({"command": ["{request_id}"]}, "command", "the program"),
        ({"command": ["no-such-program-here"]}, "command", "is not on PATH"),
        ({"command": ["./missing.sh"]}, "command", "is not an executable file"),
        ({"command": [PY, "a\x00b"]}, "command", "NUL"),
        ({"command": [PY], "timeout": 0}, "timeout", "must be a number > 0"),
        ({"command": [PY], "kill_grace": -1}, "kill_grace", "must be a number >= 0"),
        ({"command": [PY], "env": {"A": 1}}, "env", "must be a string"),
        ({"command": [PY], "env": {"A B": "1"}}, "env", "is not a variable name"),
        ({"command": [PY], "env": {"FALHOOK_ATTEMPT": "1"}}, "env", "set by falhook"),
        ({"command": [PY], "cwd": "nowhere"}, "cwd", "is not a folder"),
        ({"command": [PY], "run_on": "always"}, "run_on", 'must be one of "all", "error", "ok"'),
        ({"command": [PY], "stderr_lines": 0}, "stderr_lines", "must be an integer from 1 to 200"),
        ({"command": [PY], "concurrency": -1}, "concurrency", "must be an integer >= 0"),
        ({"command": [PY], "shell": True}, "shell", "unknown option"),
    ],
)
def test_option_mistakes_name_the_key(
    tmp_path: Path, options: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(OptionError) as err:
        construct(ExecSink, "transcode", options, SinkEnv(base_dir=tmp_path))
    assert err.value.key == f"[sinks.transcode].{key}"
    assert problem in err.value.problem


def test_a_child_gone_before_its_stdin_is_written_is_no_error(run: Run[Any]) -> None:
    """On a loaded machine the child can exit before the event is fed to it; uvloop has then
    closed its stdin (a write there raised RuntimeError, failing the delivery)."""
    from falhook_sinks.exec.process import _feed, _Pipes
    from falhook_sinks.exec.tail import LineTail

    async def quick_child() -> int | None:
        loop = asyncio.get_running_loop()
        transport, pipes = await loop.subprocess_exec(
            lambda: _Pipes(loop, LineTail(5), LineTail(5)),
            PY, "-c", "pass",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            await asyncio.wait_for(pipes.exited, 30)
            await asyncio.wait_for(pipes.closed, 30)
            _feed(transport, b"{}" * 1000)  # after the child is gone
        finally:
            transport.close()
        return transport.get_returncode()

    assert run(quick_child()) == 0
