"""The exec sink as users run it: a route of a real `falhook serve` (or `falhook worker`),
a real file server, commands written by the test and run with this interpreter. Exit codes
become delivery states, the timeout stops the command's whole process group, a replay runs
nothing again unless forced, and a bad command stops start-up naming the key."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import Falhook
from tests.support.fileserver import FileServer
from tests.support.processes import TREE, kill_if_running, pids_of, running

PY = sys.executable
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 400

# Appends one JSON line per run to argv[1]: what the command was given.
RECORD = """
    import hashlib, json, os, sys
    stdin = sys.stdin.buffer.read()
    run = {
        "argv": sys.argv[2:],
        "event": json.loads(stdin),
        "event_json_is_stdin": open(sys.argv[3], "rb").read() == stdin,
        "video_sha256": hashlib.sha256(open(sys.argv[4], "rb").read()).hexdigest(),
        "attempt": os.environ["FALHOOK_ATTEMPT"],
        "team": os.environ["TEAM"],
    }
    with open(sys.argv[1], "a") as fh:
        fh.write(json.dumps(run) + "\\n")
"""

# Exit 75 on the first run and 0 on the next (a counter file in argv[1]).
FLAKY = """
    import os, sys
    runs = open(sys.argv[1]).read() if os.path.exists(sys.argv[1]) else ""
    with open(sys.argv[1], "a") as fh:
        fh.write(os.environ["FALHOOK_ATTEMPT"] + " ")
    if not runs:
        print("the render farm is busy", file=sys.stderr)
        sys.exit(75)
"""

FAILING = """
    import sys
    for i in range(30):
        print(f"noise {i}", file=sys.stderr)
    print("Error opening input: Invalid data found when processing input", file=sys.stderr)
    sys.exit(1)
"""


def script(tmp_path: Path, body: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def exec_route(make: Callable[..., Falhook], sink: dict[str, Any], **kw: Any) -> Falhook:
    """A falhook whose route `default` has one exec sink, `run`."""
    return make(
        sinks={"run": {"type": "exec", **sink}},
        routes={"default": {"sinks": ["run"]}},
        **kw,
    )


def send(fh: Falhook, signer: FalSigner, payload: Any, **kw: Any) -> str:
    rid, body = webhook_body(str(uuid.uuid4()), payload=payload, **kw)
    resp = httpx.post(
        fh.url("/webhooks/default"), content=body, headers=signer.headers(body, rid), timeout=30
    )
    assert resp.status_code == 200, resp.text
    return rid


def runs_of(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_route_runs_the_command_on_the_downloaded_video_once_per_event(
    falhook_factory: Callable[..., Falhook],
    signer: FalSigner,
    files: FileServer,
    tmp_path: Path,
) -> None:
    log = tmp_path / "runs.jsonl"
    cmd = script(tmp_path, RECORD, "record.py")
    command = [PY, str(cmd), str(log), "{request_id}", "{event_json}", "{file:video}"]
    fh = exec_route(
        falhook_factory, {"command": command, "env": {"TEAM": "post"}, "run_on": "ok"}
    ).start()
    files.add("/out/video.mp4", data=VIDEO, content_type="video/mp4")
    payload = {"video": {"url": files.url("/out/video.mp4"), "file_name": "reframed.mp4"}}
    rid = send(fh, signer, payload)
    failed = send(fh, signer, {"detail": "bad input"}, status="ERROR", error="Invalid input")

    event = fh.wait_state(rid, "delivered")
    assert event["deliveries"]["run"]["attempts"] == 1
    assert fh.wait_state(failed, "delivered")["deliveries"]["run"]["attempts"] == 1
    [run] = runs_of(log)  # run_on = "ok": the ERROR event ran nothing
    assert run["argv"][0] == rid
    assert run["event"]["request_id"] == rid and run["event"]["payload"] == payload
    assert run["event_json_is_stdin"] is True
    assert run["video_sha256"] == hashlib.sha256(VIDEO).hexdigest() == event["files"][0]["sha256"]
    assert run["argv"][2].endswith("/files/reframed.mp4")
    assert (run["attempt"], run["team"]) == ("1", "post")

    replayed = fh.cli("events", "replay", rid, "--now")
    assert replayed.returncode == 0, replayed.stderr
    assert len(runs_of(log)) == 1  # the command already ran for this event
    forced = fh.cli("events", "replay", rid, "--force", "--now")
    assert forced.returncode == 0, forced.stderr
    assert len(runs_of(log)) == 2


def test_exit_75_then_0_is_delivered_on_the_second_attempt(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, tmp_path: Path
) -> None:
    counter = tmp_path / "attempts"
    cmd = script(tmp_path, FLAKY, "flaky.py")
    fh = exec_route(falhook_factory, {"command": [PY, str(cmd), str(counter)]}).start()
    rid = send(fh, signer, {"text": "no files"})
    event = fh.wait_state(rid, "delivered")
    assert event["deliveries"]["run"]["attempts"] == 2
    assert counter.read_text() == "1 2 "  # FALHOOK_ATTEMPT of each run


@pytest.mark.one_store("the exit code's outcome does not depend on the store")
def test_exit_1_is_dead_with_the_last_lines_of_stderr_in_last_error(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, tmp_path: Path
) -> None:
    cmd = script(tmp_path, FAILING, "fail.py")
    fh = exec_route(falhook_factory, {"command": [PY, str(cmd)], "stderr_lines": 3}).start()
    rid = send(fh, signer, {"text": "no files"})
    event = fh.wait_state(rid, "dead")
    delivery = event["deliveries"]["run"]
    assert delivery["attempts"] == 1  # permanent: dead at once
    assert delivery["last_error"] == (
        f"{PY!r} exited with status 1; last 3 lines of stderr:\n"
        "noise 28\nnoise 29\nError opening input: Invalid data found when processing input"
    )
    listed = json.loads(fh.cli("events", "list", "--state", "dead", "--json").stdout)["events"]
    assert [e["request_id"] for e in listed] == [rid]


@pytest.mark.one_store("the timeout's outcome does not depend on the store")
def test_a_timeout_kills_the_command_and_its_children_and_the_event_is_dead(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids.json"
    cmd = script(tmp_path, TREE, "tree.py")
    sink = {"command": [PY, str(cmd), str(pids_file)], "timeout": 2, "kill_grace": 1}
    fh = exec_route(falhook_factory, sink).start()
    try:
        rid = send(fh, signer, {"text": "no files"})
        event = fh.wait_state(rid, "dead")
        assert not any(running(pid) for pid in pids_of(pids_file))
    finally:
        if pids_file.exists():
            kill_if_running(json.loads(pids_file.read_text()))
    assert event["deliveries"]["run"]["last_error"] == (
        f"{PY!r} timed out after 2 s and was killed with its process group; "
        "last 1 line of stderr:\nstarted a child"
    )


@pytest.mark.one_store("a worker process beside a receiver, as on one machine")
def test_a_falhook_worker_process_runs_the_command(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, tmp_path: Path
) -> None:
    counter = tmp_path / "attempts"
    cmd = script(tmp_path, FLAKY, "flaky.py")
    sink = {"command": [PY, str(cmd), str(counter)]}
    receiver = exec_route(falhook_factory, sink, name="receiver")
    receiver.command = ("serve", "--no-worker")
    receiver.start()
    rid = send(receiver, signer, {"text": "no files"})
    worker = exec_route(falhook_factory, sink, name="worker", command=("worker",)).start()
    event = receiver.wait_state(rid, "delivered")
    assert event["deliveries"]["run"]["attempts"] == 2
    assert worker.proc is not None and worker.proc.poll() is None


@pytest.mark.one_store("start-up checks read no store")
def test_a_bad_command_stops_start_up_naming_the_key(
    falhook_factory: Callable[..., Falhook],
) -> None:
    fh = exec_route(falhook_factory, {"command": ["ffmpeg", "-i", "{file:video", "out.webm"]})
    done = fh.cli("worker", timeout=60)
    assert done.returncode == 2
    assert "[sinks.run].command: unbalanced '{' in '{file:video'" in done.stderr
