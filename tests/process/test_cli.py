"""The `falhook` command line: events list|show|replay, JSON output, exit codes, config errors.

Every command runs as a real process, since its exit code, stdout and stderr are the contract;
the events it reads are put in the store by falhook running in this process (the app and its
worker, see tests/support/inprocess.py), not by a `falhook serve` process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from falhook.config import embedded_defaults
from falhook.store import Finish, Store, make_store
from falhook.testing import FalSigner, webhook_body
from tests.support.contract import EVENT_KEYS
from tests.support.falhook_server import Falhook, to_toml
from tests.support.fileserver import FileServer
from tests.support.inprocess import InProcess, InProcessFactory, run_cli


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


def request_ids(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert out.returncode == 0, out.stderr
    return [e["request_id"] for e in json.loads(out.stdout)["events"]]


async def delivered(fh: InProcess, signer: FalSigner, route: str = "default", **kw: object) -> str:
    """An event accepted and delivered by falhook in this process."""
    rid = await fh.send(signer, {"n": 1}, route=route, **kw)
    await fh.wait_state(rid, "delivered")
    return rid


@pytest.fixture
async def fh(inprocess: InProcessFactory) -> InProcess:
    return await inprocess()


async def test_events_list_json_is_newest_first_and_filters(
    fh: InProcess, signer: FalSigner
) -> None:
    first = await delivered(fh, signer)
    second = await delivered(fh, signer, route="reframe")
    listed, by_route, limited, none_dead, table = await asyncio.gather(
        fh.cli("events", "list", "--json"),
        fh.cli("events", "list", "--route", "reframe", "--json"),
        fh.cli("events", "list", "--limit", "1", "--json"),
        fh.cli("events", "list", "--state", "dead", "--json"),
        fh.cli("events", "list"),
    )
    assert request_ids(listed) == [second, first]
    assert set(json.loads(listed.stdout)["events"][0]) >= EVENT_KEYS
    assert request_ids(by_route) == [second]
    assert len(request_ids(limited)) == 1
    assert json.loads(none_dead.stdout) == {"events": []}
    assert first in table.stdout and "REQUEST_ID" in table.stdout


async def test_events_show_prints_one_event(fh: InProcess, signer: FalSigner) -> None:
    rid = await delivered(fh, signer, status="ERROR", error="boom")
    as_json, human = await asyncio.gather(
        fh.cli("events", "show", rid, "--json"), fh.cli("events", "show", rid)
    )
    doc = json.loads(as_json.stdout)
    assert doc["request_id"] == rid and doc["fal_status"] == "ERROR" and doc["error"] == "boom"
    assert doc["deliveries"]["local"]["state"] == "delivered"
    assert "boom" in human.stdout and "local" in human.stdout


async def test_unknown_request_ids_exit_1_with_a_message(inprocess: InProcessFactory) -> None:
    config = inprocess.build()  # a config on this test's store; nothing needs to run
    shown, replayed = await asyncio.gather(
        config.cli("events", "show", "nope"), config.cli("events", "replay", "nope")
    )
    for out in (shown, replayed):
        assert out.returncode == 1
        assert "nope" in out.stderr and out.stdout == ""


async def test_replay_of_an_unknown_sink_names_it(fh: InProcess, signer: FalSigner) -> None:
    rid = await delivered(fh, signer)
    out = await fh.cli("events", "replay", rid, "--sink", "s3")
    assert out.returncode == 1 and "'s3'" in out.stderr


async def test_replay_schedules_and_a_running_worker_delivers(
    fh: InProcess, signer: FalSigner
) -> None:
    rid = await delivered(fh, signer)
    written = (fh.event_dir("default", rid) / "event.json").stat().st_ino
    out = await fh.cli("events", "replay", rid)
    assert out.returncode == 0 and "scheduled 1 delivery" in out.stdout
    event = await fh.wait_state(rid, "delivered")  # by the worker running in this process
    assert event["deliveries"]["local"]["attempts"] == 1
    assert (fh.event_dir("default", rid) / "event.json").stat().st_ino != written  # rewritten


async def finish_all(store: Store, request_id: str, output: dict[str, str]) -> None:
    """Record every delivery of the event as delivered with this output, straight through
    the store's DeliveryQueue role (no worker)."""
    [job] = await store.lease(owner="seed", limit=10, lease_seconds=60, request_id=request_id)
    for d in job.deliveries:
        assert await store.finish(Finish(request_id, d.sink, d.token, "delivered", output=output))


async def test_replay_of_one_sink_keeps_its_output_unless_forced(
    inprocess: InProcessFactory, signer: FalSigner, tmp_path: Path
) -> None:
    copy = {"type": "disk", "root": str(tmp_path / "copy")}
    fh = await inprocess(
        run_worker=False, sinks={"copy": copy}, routes={"default": {"sinks": ["local", "copy"]}}
    )
    rid = await fh.send(signer, {"n": 1})
    await finish_all(fh.store, rid, {"posted": "message-1"})

    async def deliveries() -> dict[str, tuple[str, bool]]:
        view = await fh.store.get_event(rid)
        assert view is not None
        return {n: (d.state, d.output is not None) for n, d in view.deliveries.items()}

    out = await fh.cli("events", "replay", rid, "--sink", "local")
    assert out.returncode == 0 and "scheduled 1 delivery" in out.stdout
    assert await deliveries() == {"local": ("pending", True), "copy": ("delivered", True)}
    out = await fh.cli("events", "replay", rid, "--sink", "local", "--force")
    assert out.returncode == 0, out.stderr
    assert await deliveries() == {"local": ("pending", False), "copy": ("delivered", True)}


async def test_replay_now_delivers_in_the_command_and_leaves_one_copy(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer
) -> None:
    fh = await inprocess()
    files.add("/r.mp4", data=b"r" * 1000)
    rid = await fh.send(signer, {"video": {"url": files.url("/r.mp4"), "file_name": "r.mp4"}})
    await fh.wait_state(rid, "delivered")
    await fh.aclose()  # no worker runs now but the command's own
    done = await fh.cli("events", "replay", rid, "--sink", "local", "--now")
    assert done.returncode == 0, done.stderr
    assert "local: delivered" in done.stdout
    assert sorted(p.name for p in fh.event_dir("default", rid).iterdir()) == [
        "event.json",
        "r.mp4",
    ]
    assert files.hits("/r.mp4") == 2


async def test_replay_now_counts_a_sink_its_filter_skips_as_settled(
    inprocess: InProcessFactory, signer: FalSigner, tmp_path: Path
) -> None:
    errors_only = {
        "type": "disk",
        "root": str(tmp_path / "errors"),
        "filter": {"fal_status": "ERROR"},
    }
    fh = await inprocess(
        sinks={"errors": errors_only}, routes={"default": {"sinks": ["local", "errors"]}}
    )
    rid = await fh.send(signer, {"n": 1})
    await fh.wait_state(rid, "delivered")
    await fh.aclose()  # no worker runs now but the command's own
    done = await fh.cli("events", "replay", rid, "--now", "--force", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    assert "errors: skipped" in done.stdout and "local: delivered" in done.stdout


async def test_config_mistakes_fail_at_start_up_naming_the_key(tmp_path: Path) -> None:
    mistakes = {
        "typo.toml": {"delivery": {"max_attemps": 3}},
        "type.toml": {"sinks": {"x": {"type": "nosuch"}}, "routes": {"r": {"sinks": ["x"]}}},
        "env.toml": {"receiver": {"public_url": "${NOT_SET_ANYWHERE}"}},
    }
    for name, config in mistakes.items():
        (tmp_path / name).write_text(to_toml(config))
    typo, bad_type, unset, missing = await asyncio.gather(
        run_cli("serve", "--config", str(tmp_path / "typo.toml"), cwd=tmp_path),
        run_cli("serve", "--config", str(tmp_path / "type.toml"), cwd=tmp_path),
        run_cli("events", "list", "--config", str(tmp_path / "env.toml"), cwd=tmp_path),
        run_cli("events", "list", "--config", str(tmp_path / "missing.toml"), cwd=tmp_path),
    )
    assert typo.returncode == 2 and "[delivery].max_attemps" in typo.stderr
    assert bad_type.returncode == 2
    assert "[sinks.x].type" in bad_type.stderr and "nosuch" in bad_type.stderr
    assert unset.returncode == 2 and "NOT_SET_ANYWHERE" in unset.stderr
    assert missing.returncode == 2 and "missing.toml" in missing.stderr


@pytest.mark.one_store("which config file is read, not what it stores")
async def test_falhook_config_names_the_file_when_no_flag_is_given(
    fh: InProcess, signer: FalSigner, tmp_path: Path
) -> None:
    rid = await fh.send(signer, {"n": 1})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"FALHOOK_CONFIG": str(fh.config_path)}
    out = await run_cli("events", "show", rid, "--json", cwd=elsewhere, env=env)
    assert out.returncode == 0 and json.loads(out.stdout)["request_id"] == rid


def test_embedded_defaults_keep_everything_under_falhook_data(tmp_path: Path) -> None:
    out = run("events", "list", "--json", cwd=tmp_path, env={"FALHOOK_CONFIG": ""})
    assert out.returncode == 2 and "no store found" in out.stderr  # listing makes no store
    assert list(tmp_path.iterdir()) == []
    store = make_store(embedded_defaults(base_dir=tmp_path))  # as `falhook serve` opens it
    asyncio.run(store.open())
    asyncio.run(store.close())
    assert [p.name for p in tmp_path.iterdir()] == ["falhook-data"]
    out = run("events", "list", "--json", cwd=tmp_path, env={"FALHOOK_CONFIG": ""})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"events": []}
    assert (tmp_path / "falhook-data" / "events.db").exists()


async def test_a_receive_only_serve_and_a_separate_worker_deliver_together(
    falhook_factory: Callable[..., Falhook],
    inprocess: InProcessFactory,
    signer: FalSigner,
    files: FileServer,
) -> None:
    """`serve --no-worker` stores and nobody delivers; another falhook on the same store sees
    the event (a duplicate there); a `falhook worker` process delivers it."""
    receiver = falhook_factory(name="receiver", command=("serve", "--no-worker")).start()
    other = await inprocess(run_worker=False, name="other")  # a second receiver, same store
    files.add("/w.mp4", data=b"from the worker")
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/w.mp4")}})
    headers = signer.headers(body, rid)
    async with httpx.AsyncClient() as client:
        first = await client.post(receiver.url("/webhooks/default"), content=body, headers=headers)
    assert first.json() == {"status": "accepted", "request_id": rid}
    again = await other.post(body, headers)
    assert again.json()["status"] == "duplicate"  # deduplication is global to the store
    assert (await other.event(rid))["state"] == "pending"  # type: ignore[index]  # no worker
    falhook_factory(name="worker", command=("worker",)).start(wait=False)
    await other.wait_state(rid, "delivered")
    assert (other.event_dir("default", rid) / "video.mp4").read_bytes() == b"from the worker"
