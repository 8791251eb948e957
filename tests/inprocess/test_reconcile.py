"""Reconciliation: a submission with no webhook by its deadline is looked up on the queue, and a
finished one is taken in as an event recovered by polling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from falhook.config import Settings, settings_from_dict
from falhook.fal.emulate import Emulator
from falhook.fal.queue import FalQueue
from falhook.fal.reconcile import Reconciler, ReconcileSettings
from falhook.fal.submit import submit
from falhook.store import Store, make_store
from falhook.store.models import NewSubmission
from tests.support.emulator import SharedEmulator
from tests.support.falhook_server import base_config, wait_for
from tests.support.inprocess import InProcess, InProcessFactory

REFRAME = "luma/agent/ray/v3.2/reframe"
KEY = "test-key-0123456789"
INPUT = {"prompt": "wider", "video_url": "https://example.invalid/v.mp4", "aspect_ratio": "21:9"}
DEAD_WEBHOOK = "http://127.0.0.1:9"  # nothing listens: every webhook is lost
NOW = ReconcileSettings(deadline=0, interval=0.1)


@pytest.fixture
def fal(fal_host: SharedEmulator) -> SharedEmulator:
    return fal_host.use(Emulator(delay=0.1, webhook_attempts=1))


@pytest.fixture
def settings(tmp_path: Path, fal: SharedEmulator, store_section: dict[str, str]) -> Settings:
    receiver = {"public_url": DEAD_WEBHOOK, "queue_url": fal.url}
    config = base_config(tmp_path, fal.jwks_url, receiver=receiver, store=store_section)
    return settings_from_dict(config, base_dir=tmp_path)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = make_store(settings)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def queue(fal: SharedEmulator) -> AsyncIterator[FalQueue]:
    async with FalQueue(fal.url, key=KEY) as q:
        yield q


async def submitted(queue: FalQueue, store: Store, settings: Settings, **control: Any) -> str:
    inp = {**INPUT, "_emulate": control} if control else INPUT
    sub = await submit(REFRAME, inp, route="reframe", settings=settings, store=store, queue=queue)
    return sub.request_id


async def test_a_dropped_webhook_is_recovered_by_polling(
    fal: SharedEmulator, store: Store, queue: FalQueue, settings: Settings
) -> None:
    rid = await submitted(queue, store, settings, outcome="drop")
    wait_for(fal.emulator.idle, timeout=15, what="the job to finish")
    reconciler = Reconciler(store, queue, settings, NOW)
    counts = await reconciler.run_once()
    assert (counts["checked"], counts["recovered"]) == (1, 1)
    event = await store.get_event(rid)
    assert event is not None and event.source == "poll" and event.fal_status == "OK"
    assert event.route == "reframe" and set(event.deliveries) == {"local"}
    assert [f["path"] for f in event.files] == ["video"]
    assert event.submission is not None and event.submission.endpoint == REFRAME
    sub = await store.get_submission(rid)
    assert sub is not None and sub.state == "recovered"
    assert (await reconciler.run_once())["checked"] == 0  # nothing left to look up
    base = f"/luma/agent/requests/{rid}"
    looked = [(r.method, r.path) for r in fal.emulator.requests if r.method == "GET"]
    assert looked == [("GET", f"{base}/status"), ("GET", base)]


async def test_a_failed_request_is_recovered_as_an_error_event(
    fal: SharedEmulator, store: Store, queue: FalQueue, settings: Settings
) -> None:
    rid = await submitted(queue, store, settings, outcome="error")  # webhook goes nowhere
    wait_for(fal.emulator.idle, timeout=15, what="the job to give up its webhook")
    assert fal.emulator.jobs[rid].webhook_sent is False
    counts = await Reconciler(store, queue, settings, NOW).run_once()
    assert counts["recovered"] == 1
    event = await store.get_event(rid)
    assert event is not None and event.fal_status == "ERROR" and event.error
    assert json.loads(event.body)["payload"]["detail"][0]["loc"] == ["body", "video_url"]
    assert event.files == []


async def test_a_running_request_stays_pending(
    store: Store, queue: FalQueue, settings: Settings
) -> None:
    rid = await submitted(queue, store, settings, delay=60)
    counts = await Reconciler(store, queue, settings, NOW).run_once()
    assert (counts["pending"], counts["recovered"]) == (1, 0)
    sub = await store.get_submission(rid)
    assert sub is not None and sub.state == "pending" and "IN_QUEUE" in (sub.detail or "")
    assert sub.checked_at is not None


async def test_the_deadline_is_respected(
    store: Store, queue: FalQueue, settings: Settings, fal: SharedEmulator
) -> None:
    await submitted(queue, store, settings, outcome="drop")
    wait_for(fal.emulator.idle, timeout=15, what="the job to finish")
    later = ReconcileSettings(deadline=3600)
    assert (await Reconciler(store, queue, settings, later).run_once())["checked"] == 0


async def test_a_request_fal_does_not_know_is_lost(
    store: Store, queue: FalQueue, settings: Settings, fal: SharedEmulator
) -> None:
    await store.record_submission(
        NewSubmission(
            request_id="never-seen",
            endpoint=REFRAME,
            route="reframe",
            input=INPUT,
            status_url=f"{fal.url}/luma/agent/requests/never-seen/status",
            response_url=f"{fal.url}/luma/agent/requests/never-seen",
        )
    )
    counts = await Reconciler(store, queue, settings, NOW).run_once()
    assert counts["lost"] == 1
    [lost] = await store.list_submissions(state="lost")
    assert lost.request_id == "never-seen" and "does not know" in (lost.detail or "")


async def test_an_unreachable_queue_leaves_it_pending(
    store: Store, queue: FalQueue, settings: Settings
) -> None:
    await store.record_submission(
        NewSubmission(
            request_id="r-1",
            endpoint=REFRAME,
            route="reframe",
            input=INPUT,
            status_url=f"{DEAD_WEBHOOK}/luma/agent/requests/r-1/status",
        )
    )
    counts = await Reconciler(store, queue, settings, NOW).run_once()
    assert counts["errors"] == 1
    sub = await store.get_submission("r-1")
    assert sub is not None and sub.state == "pending" and sub.detail


# --- end to end: a dropped webhook, recovered and delivered by a running falhook ----------------


@pytest.fixture
def emulated_fal(fal_host: SharedEmulator) -> SharedEmulator:
    return fal_host.use(Emulator(delay=0.2))


async def receiver(inprocess: InProcessFactory, fal: SharedEmulator, **overrides: Any) -> InProcess:
    """falhook running in this process (not listening: fal drops these webhooks anyway)."""
    receiver = {"queue_url": fal.url, "public_url": DEAD_WEBHOOK}
    return await inprocess(jwks_url=fal.jwks_url, receiver=receiver, **overrides)


async def submitted_dropped(fh: InProcess, fal: SharedEmulator) -> str:
    """A job whose webhook fal drops (`falhook submit` itself: tests/inprocess/test_submit.py)."""
    inp = {**INPUT, "_emulate": {"outcome": "drop"}}
    async with FalQueue(fal.url, key=KEY) as queue:
        sub = await submit(
            REFRAME, inp, route="reframe", settings=fh.settings, store=fh.store, queue=queue
        )
    return sub.request_id


async def test_falhook_recovers_a_dropped_webhook_by_itself(
    inprocess: InProcessFactory,
    emulated_fal: SharedEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAL_KEY", KEY)  # `falhook serve` reconciles while FAL_KEY is set
    fal = emulated_fal
    fh = await receiver(inprocess, fal, reconcile={"deadline": 0.5, "interval": 0.1})
    rid = await submitted_dropped(fh, fal)
    event = await fh.wait_state(rid, "delivered", timeout=20)  # no reconcile command
    assert event["source"] == "poll"
    assert (tmp_path / "files" / "reframe" / rid / "output.mp4").exists()
