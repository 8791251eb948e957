"""The `falhook` command line: events list|show|replay, JSON output, exit codes, config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import Falhook, to_toml
from tests.support.fileserver import FileServer


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "falhook.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def deliver_one(fh: Falhook, signer: FalSigner, route: str = "default", **kw: object) -> str:
    rid, body = webhook_body(str(uuid.uuid4()), payload={"n": 1}, **kw)  # type: ignore[arg-type]
    r = httpx.post(fh.url(f"/webhooks/{route}"), content=body, headers=signer.headers(body, rid))
    assert r.status_code == 200
    return rid


def test_events_list_json_is_newest_first_and_filters(falhook: Falhook, signer: FalSigner) -> None:
    first = deliver_one(falhook, signer)
    second = deliver_one(falhook, signer, route="reframe")
    falhook.wait_state(second, "delivered")
    falhook.wait_state(first, "delivered")
    out = falhook.cli("events", "list", "--json")
    assert out.returncode == 0, out.stderr
    events = json.loads(out.stdout)["events"]
    assert [e["request_id"] for e in events] == [second, first]
    assert set(events[0]) >= {
        "request_id",
        "route",
        "fal_status",
        "error",
        "payload_error",
        "received_at",
        "state",
        "deliveries",
        "files",
    }
    by_route = json.loads(falhook.cli("events", "list", "--route", "reframe", "--json").stdout)
    assert [e["request_id"] for e in by_route["events"]] == [second]
    limited = json.loads(falhook.cli("events", "list", "--limit", "1", "--json").stdout)
    assert len(limited["events"]) == 1
    none_dead = json.loads(falhook.cli("events", "list", "--state", "dead", "--json").stdout)
    assert none_dead == {"events": []}
    table = falhook.cli("events", "list")
    assert first in table.stdout and "REQUEST_ID" in table.stdout


def test_events_show_prints_one_event(falhook: Falhook, signer: FalSigner) -> None:
    rid = deliver_one(falhook, signer, status="ERROR", error="boom")
    falhook.wait_state(rid, "delivered")
    doc = json.loads(falhook.cli("events", "show", rid, "--json").stdout)
    assert doc["request_id"] == rid and doc["fal_status"] == "ERROR" and doc["error"] == "boom"
    assert doc["deliveries"]["local"]["state"] == "delivered"
    human = falhook.cli("events", "show", rid)
    assert "boom" in human.stdout and "local" in human.stdout


def test_unknown_request_ids_exit_1_with_a_message(falhook: Falhook) -> None:
    for args in (("events", "show", "nope"), ("events", "replay", "nope")):
        out = falhook.cli(*args)
        assert out.returncode == 1
        assert "nope" in out.stderr and out.stdout == ""


def test_replay_of_an_unknown_sink_names_it(falhook: Falhook, signer: FalSigner) -> None:
    rid = deliver_one(falhook, signer)
    falhook.wait_state(rid, "delivered")
    out = falhook.cli("events", "replay", rid, "--sink", "s3")
    assert out.returncode == 1 and "'s3'" in out.stderr


def test_replay_schedules_and_a_running_worker_delivers(
    falhook: Falhook, signer: FalSigner
) -> None:
    rid = deliver_one(falhook, signer)
    falhook.wait_state(rid, "delivered")
    out = falhook.cli("events", "replay", rid)
    assert out.returncode == 0 and "scheduled 1 delivery" in out.stdout
    event = falhook.wait_state(rid, "delivered")
    assert event["deliveries"]["local"]["attempts"] == 1


def test_config_mistakes_fail_at_start_up_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(to_toml({"delivery": {"max_attemps": 3}}))
    out = run("serve", "--config", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and "[delivery].max_attemps" in out.stderr
    bad.write_text(to_toml({"sinks": {"x": {"type": "nosuch"}}, "routes": {"r": {"sinks": ["x"]}}}))
    out = run("serve", "--config", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and "[sinks.x].type" in out.stderr and "nosuch" in out.stderr
    bad.write_text(to_toml({"receiver": {"public_url": "${NOT_SET_ANYWHERE}"}}))
    out = run("events", "list", "--config", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and "NOT_SET_ANYWHERE" in out.stderr
    out = run("events", "list", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert out.returncode == 2 and "missing.toml" in out.stderr


@pytest.mark.one_store("which config file is read, not what it stores")
def test_falhook_config_names_the_file_when_no_flag_is_given(
    falhook: Falhook, signer: FalSigner, tmp_path: Path
) -> None:
    rid = deliver_one(falhook, signer)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run(
        "events",
        "show",
        rid,
        "--json",
        cwd=elsewhere,
        env={"FALHOOK_CONFIG": str(falhook.config_path)},
    )
    assert out.returncode == 0 and json.loads(out.stdout)["request_id"] == rid


def test_embedded_defaults_keep_everything_under_falhook_data(tmp_path: Path) -> None:
    out = run("events", "list", "--json", cwd=tmp_path, env={"FALHOOK_CONFIG": ""})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"events": []}
    assert (tmp_path / "falhook-data" / "events.db").exists()


def test_a_second_serve_on_the_same_store_shares_events(
    falhook_factory: Callable[..., Falhook], signer: FalSigner
) -> None:
    a = falhook_factory(name="a").start()
    b = Falhook(a.tmp_path, a.config, name="b").start()
    try:
        rid, body = webhook_body(str(uuid.uuid4()), payload={"n": 1})
        headers = signer.headers(body, rid)
        first = httpx.post(b.url("/webhooks/default"), content=body, headers=headers)
        assert first.json()["status"] == "accepted"
        again = httpx.post(a.url("/webhooks/default"), content=body, headers=headers)
        assert again.json()["status"] == "duplicate"  # deduplication is global to the store
        a.wait_state(rid, "delivered")
    finally:
        b.stop()


def test_a_receive_only_serve_and_a_separate_worker_deliver_together(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, files: FileServer
) -> None:
    receiver = falhook_factory(name="receiver")
    receiver.command = ("serve", "--no-worker")
    receiver.start()
    files.add("/w.mp4", data=b"from the worker")
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/w.mp4")}})
    assert (
        httpx.post(
            receiver.url("/webhooks/default"), content=body, headers=signer.headers(body, rid)
        ).json()["status"]
        == "accepted"
    )
    assert receiver.event(rid)["state"] == "pending"  # type: ignore[index]  # nobody delivers
    worker = Falhook(receiver.tmp_path, receiver.config, command=("worker",), name="worker")
    worker.start(wait=False)
    try:
        receiver.wait_state(rid, "delivered")
    finally:
        worker.stop()
    root = Path(receiver.config["sinks"]["local"]["root"])
    assert (root / "default" / rid / "video.mp4").read_bytes() == b"from the worker"
