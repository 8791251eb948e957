"""Faults inside a delivery attempt, through the real Worker and store (both engines): every
attempt ends with its real cause in last_error and a retry or dead decision; a stalled file
cannot starve other events."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from falhook.config import Settings, settings_from_dict
from falhook.intake.envelope import parse_envelope
from falhook.intake.events import new_event
from falhook.runtime import make_sinks
from falhook.store import Store
from falhook.store.models import EventView
from tests.support.falhook_server import base_config
from tests.support.fileserver import FileServer
from tests.support.inprocess import wait_until
from tests.support.stores import open_backend
from tests.support.workers import worker_for


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    config = base_config(tmp_path, "http://127.0.0.1:9/jwks", **overrides)
    return settings_from_dict(config, base_dir=tmp_path)


@pytest.fixture
async def store(store_backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_backend(store_backend, tmp_path) as opened:
        yield opened


async def accept(store: Store, payload: Any, route: str = "default") -> str:
    rid = str(uuid.uuid4())
    body = json.dumps({"request_id": rid, "status": "OK", "payload": payload}).encode()
    event = new_event(parse_envelope(body), route=route, sinks=["local"], body=body, headers={})
    assert await store.accept(event)
    return rid


async def deliver_once(settings: Settings, store: Store) -> None:
    async with worker_for(settings, store, make_sinks(settings)) as worker:
        await worker.run_once(limit=50)


async def view(store: Store, rid: str) -> EventView:
    found = await store.get_event(rid)
    assert found is not None
    return found


async def test_a_gzip_body_that_is_not_gzip_ends_the_attempt_with_its_cause(
    store: Store, files: FileServer, tmp_path: Path
) -> None:
    """Before: zlib.error killed the attempt's task; the delivery stayed `delivering` until
    its lease expired, and said only `lease expired`."""
    files.add("/z", data=b"this is not gzip", headers={"Content-Encoding": "gzip"})
    rid = await accept(store, {"video": {"url": files.url("/z")}})
    await deliver_once(settings_for(tmp_path), store)
    d = (await view(store, rid)).deliveries["local"]
    assert d.state == "retrying" and d.attempts == 1
    assert d.last_error is not None and "not valid gzip" in d.last_error


async def test_a_spool_that_cannot_hold_files_ends_the_attempt_naming_the_spool(
    store: Store, files: FileServer, tmp_path: Path
) -> None:
    """A spool folder that cannot be made (here its parent is a file; no inodes or a full
    disk look the same): the delivery retries with the spool's path in last_error."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    files.add("/v", data=b"video")
    rid = await accept(store, {"video": {"url": files.url("/v")}})
    settings = settings_for(tmp_path, downloads={"spool_dir": str(blocker / "spool")})
    await deliver_once(settings, store)
    d = (await view(store, rid)).deliveries["local"]
    assert d.state == "retrying" and d.attempts == 1
    assert d.last_error is not None and str(blocker) in d.last_error


async def test_an_unexpected_error_in_an_attempt_is_recorded_not_lost(
    store: Store, files: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception inside an attempt (here: a bug in preparing the event) is the attempt's
    result: retried, with the exception in last_error."""
    import falhook.delivery.job as job_module

    def broken(*_: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(job_module, "event_info", broken)
    rid = await accept(store, None)
    await deliver_once(settings_for(tmp_path), store)
    d = (await view(store, rid)).deliveries["local"]
    assert d.state == "retrying" and d.last_error == "KeyError: 'a bug'"


async def test_stalled_files_do_not_starve_other_events(
    store: Store, files: FileServer, tmp_path: Path
) -> None:
    """Two events whose files stop mid-body hold both delivery slots; they are cut after one
    rate window and retried, and the event behind them is delivered."""
    files.add("/stalled", data=b"s" * 100_000, pause_after=10)
    files.add("/fine", data=b"fine")
    stalled = [await accept(store, {"v": {"url": files.url("/stalled")}}) for _ in range(2)]
    fine = await accept(store, {"v": {"url": files.url("/fine")}})
    settings = settings_for(
        tmp_path,
        delivery={"concurrency": 2, "backoff_initial": 60.0, "backoff_max": 60.0},
        downloads={"min_rate": 1024.0, "rate_window": 1.0},
    )
    stop = asyncio.Event()
    async with worker_for(settings, store, make_sinks(settings)) as worker:
        running = asyncio.create_task(worker.run(stop))
        try:

            async def fine_delivered() -> bool:
                return (await view(store, fine)).state == "delivered"

            await wait_until(fine_delivered, timeout=60, what="the event behind the stalled ones")
        finally:
            stop.set()
            await running
            files.resume("/stalled")
    for rid in stalled:
        d = (await view(store, rid)).deliveries["local"]
        assert d.state == "retrying" and "no data for 1 s" in (d.last_error or "")


async def test_thousands_of_files_are_named_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of Files named frame.png (over OFF_LOOP_FILES): naming them (linear:
    tests/unit/test_naming.py) runs in a thread, so webhooks on the event loop are not held while
    the worker names 8,000 of them."""
    import falhook.downloads.files as files_module
    from falhook.downloads.cache import EventSpool
    from falhook.downloads.fetch import Fetcher
    from falhook.downloads.files import Downloader, parse_stored
    from falhook.downloads.transfer import JobFiles
    from falhook.metrics import Metrics

    named_in: list[str] = []
    real = files_module.file_names

    def watched(described: Any) -> list[str]:
        named_in.append(threading.current_thread().name)
        return real(described)

    monkeypatch.setattr(files_module, "file_names", watched)
    image = {"url": "data:image/png;base64,aGk=", "file_name": "frame.png"}
    body = json.dumps({"request_id": "r", "status": "OK", "payload": [image] * 300}).encode()
    event = new_event(parse_envelope(body), route="r", sinks=["s"], body=body, headers={})
    view = EventView(
        request_id="r", route="r", fal_status="OK", error=None, payload_error=None,
        gateway_request_id=None, received_at=event.received_at, headers={}, body=body,
        files=event.files, deliveries={},
    )  # fmt: skip
    refs = parse_stored(view).refs
    fetcher = Fetcher(max_file_bytes=1 << 20, timeout=10, allow_private_hosts=True)
    try:
        spool = EventSpool(tmp_path / "spool", "r")
        downloader = Downloader(fetcher, None, Metrics())
        files = JobFiles(downloader, spool, view, refs, keep=False)
        await files.prepare()  # the worker's step that names the files
        local = await files.download()
    finally:
        await fetcher.aclose()
    assert named_in and named_in[0] != threading.main_thread().name
    assert len({f.name for f in local}) == 300 and local[-1].name == "frame-300.png"
