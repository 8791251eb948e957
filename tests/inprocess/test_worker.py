"""The delivery worker, driven directly on the real stores (SQLite and PostgreSQL) with small
sinks of the test's own: leasing, `after` ordering, retries with backoff, dead-lettering, and
the shutdown hand-back. Backoff settings are tiny, so every test runs in milliseconds (the
heartbeat's test waits for a lease to outlive its length, about a second)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from falhook.config import Settings, settings_from_dict
from falhook.delivery.worker import Worker
from falhook.intake.envelope import parse_envelope
from falhook.intake.events import new_event
from falhook.sinks import DeliveryContext, Permanent, Retryable, Sink
from falhook.store import DeliveryView, EventView, Store, make_store
from falhook.store.models import LEASE_EXPIRED, Finish
from falhook.testing import webhook_body
from tests.support.fileserver import FileServer
from tests.support.inprocess import wait_until
from tests.support.workers import downloader_for

# What a scripted sink does at one attempt: deliver (None, or this output), raise this, or
# wait for this event (forever, if nobody sets it).
Step = dict[str, Any] | BaseException | asyncio.Event | None
FINAL = ("delivered", "dead")


class ScriptedSink(Sink):
    """Answers its attempts from a script, in order, then delivers; records every call."""

    def __init__(self, name: str, script: list[Step], journal: list[tuple[str, str]]) -> None:
        self.name = name
        self.script = list(script)
        self.journal = journal  # ("start" | "end", sink name), shared by a test's sinks
        self.calls: list[DeliveryContext] = []
        self.called_at: list[float] = []  # wall clock, unix seconds

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any] | None:
        self.calls.append(ctx)
        self.called_at.append(time.time())
        self.journal.append(("start", self.name))
        step = self.script.pop(0) if self.script else None
        try:
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, asyncio.Event):
                await step.wait()
                step = None
            return step if step is not None else {"from": self.name, "attempt": ctx.attempt}
        finally:
            self.journal.append(("end", self.name))


class Bench:
    """One test's store, settings and sinks, and the helpers to drive a worker over them."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        sinks: dict[str, ScriptedSink],
        journal: list[tuple[str, str]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.sinks = sinks
        self.journal = journal  # every sink's starts and ends, in order
        self.downloader = downloader_for(settings)  # closed with the store, at the end

    def worker(self, *, without: tuple[str, ...] = (), store: Any = None) -> Worker:
        sinks = {name: s for name, s in self.sinks.items() if name not in without}
        return Worker(
            self.settings,
            store or self.store,
            sinks,
            downloader=self.downloader,
            owner=f"w-{uuid.uuid4()}",
        )

    async def accept(self, payload: Any = None, sinks: tuple[str, ...] | None = None) -> str:
        rid, body = webhook_body(str(uuid.uuid4()), payload=payload)
        names = sinks or tuple(self.sinks)
        event = new_event(parse_envelope(body), route="r", sinks=names, body=body, headers={})
        assert await self.store.accept(event)
        return rid

    async def view(self, rid: str) -> EventView:
        view = await self.store.get_event(rid)
        assert view is not None
        return view

    async def delivery(self, rid: str, sink: str) -> DeliveryView:
        return (await self.view(rid)).deliveries[sink]

    async def settle(self, worker: Worker, rid: str, *, timeout: float = 10) -> EventView:
        """Run the worker batch by batch until each of the event's deliveries is delivered
        or dead (retries become due after their tiny backoff)."""

        async def settled() -> EventView | None:
            await worker.run_once()
            view = await self.view(rid)
            return view if all(d.state in FINAL for d in view.deliveries.values()) else None

        return await wait_until(settled, timeout=timeout, interval=0.005, what=f"{rid} settled")


MakeBench = Callable[..., Awaitable[Bench]]


@pytest.fixture
async def bench(tmp_path: Path, store_section: dict[str, str]) -> AsyncIterator[MakeBench]:
    """make(scripts, after={sink: [deps]}, **delivery): sinks scripted in this order, the
    route `r` naming all of them, on this test's store (opened, closed at the end)."""
    benches: list[Bench] = []

    async def make(
        scripts: dict[str, list[Step]],
        after: dict[str, list[str]] | None = None,
        **delivery: Any,
    ) -> Bench:
        after = after or {}
        config = {
            "store": store_section,
            "delivery": {"backoff_initial": 0.01, "backoff_max": 0.05, **delivery},
            "downloads": {"allow_private_hosts": True, "spool_dir": str(tmp_path / "spool")},
            "sinks": {n: {"type": "scripted", "after": after.get(n, [])} for n in scripts},
            "routes": {"r": {"sinks": list(scripts)}},
        }
        settings = settings_from_dict(config, base_dir=tmp_path)
        store = make_store(settings)
        await store.open()
        journal: list[tuple[str, str]] = []
        sinks = {name: ScriptedSink(name, script, journal) for name, script in scripts.items()}
        bench = Bench(settings, store, sinks, journal)
        benches.append(bench)
        return bench

    yield make
    for bench in benches:
        await bench.downloader.aclose()
        await bench.store.close()


def seconds(at: datetime | None) -> float:
    assert at is not None
    return at.timestamp()


# --- leasing -----------------------------------------------------------------------------------


async def test_due_deliveries_are_leased_delivered_and_recorded_once(bench: MakeBench) -> None:
    b = await bench({"a": [], "b": []})
    rid = await b.accept()
    worker = b.worker()
    assert await worker.run_once() == 2
    view = await b.view(rid)
    assert {n: (d.state, d.attempts) for n, d in view.deliveries.items()} == {
        "a": ("delivered", 1),
        "b": ("delivered", 1),
    }
    assert view.deliveries["a"].output == {"from": "a", "attempt": 1}
    assert await worker.run_once() == 0  # nothing left to lease
    assert [len(s.calls) for s in b.sinks.values()] == [1, 1]
    ctx = b.sinks["a"].calls[0]
    assert (ctx.event.request_id, ctx.event.route, ctx.sink, ctx.attempt) == (rid, "r", "a", 1)


async def test_a_delivery_leased_by_another_worker_is_left_alone(bench: MakeBench) -> None:
    b = await bench({"a": []})
    rid = await b.accept()
    [held] = await b.store.lease(owner="other", limit=10, lease_seconds=60)
    assert held.event.request_id == rid
    assert await b.worker().run_once() == 0
    assert b.sinks["a"].calls == []
    assert (await b.delivery(rid, "a")).state == "delivering"


async def test_a_crashed_workers_lease_is_taken_over_and_its_attempt_counts(
    bench: MakeBench,
) -> None:
    b = await bench({"a": []})
    rid = await b.accept()
    await b.store.lease(owner="crashed", limit=10, lease_seconds=0)  # expires at once
    assert await b.worker().run_once() == 1
    d = await b.delivery(rid, "a")
    assert (d.state, d.attempts) == ("delivered", 2)  # the crashed attempt, then this one
    assert [ctx.attempt for ctx in b.sinks["a"].calls] == [2]


async def test_an_event_that_crashed_max_attempts_workers_is_dead_without_another_try(
    bench: MakeBench,
) -> None:
    b = await bench({"a": []}, max_attempts=2)
    rid = await b.accept()
    for crashed in ("crashed-1", "crashed-2"):
        assert await b.store.lease(owner=crashed, limit=10, lease_seconds=0)
    await b.worker().run_once()
    d = await b.delivery(rid, "a")
    assert (d.state, d.attempts) == ("dead", 2)
    assert d.last_error == f"no attempts left (2 made); last: {LEASE_EXPIRED}"
    assert b.sinks["a"].calls == []


class WatchedQueue:
    """A store whose wait_for_work says when the worker went idle."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.idle = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def wait_for_work(self, max_wait: float) -> None:
        self.idle.set()
        await self._store.wait_for_work(max_wait)


async def test_an_idle_worker_wakes_when_an_event_is_accepted(bench: MakeBench) -> None:
    b = await bench({"a": []}, poll_interval=60)  # no poll would find it in time
    watched = WatchedQueue(b.store)
    stop = asyncio.Event()
    running = asyncio.create_task(b.worker(store=watched).run(stop))
    try:
        await asyncio.wait_for(watched.idle.wait(), 10)
        rid = await b.accept()

        async def delivered() -> bool:
            return (await b.delivery(rid, "a")).state == "delivered"

        await wait_until(delivered, timeout=10, what="the idle worker to deliver")
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


@pytest.mark.one_store("the heartbeat is the worker's; extend() is tested on every store")
async def test_a_long_delivery_keeps_its_lease_alive(bench: MakeBench) -> None:
    lease = 1.2  # the heartbeat extends it every 0.5 s
    gate = asyncio.Event()
    b = await bench({"a": [gate]}, lease_seconds=lease)
    rid = await b.accept()
    stop = asyncio.Event()
    running = asyncio.create_task(b.worker().run(stop))
    try:
        await wait_until(_called(b.sinks["a"]), what="the delivery to start")
        past_expiry = time.monotonic() + lease + 0.3

        async def lease_outlived() -> bool:
            return time.monotonic() > past_expiry

        await wait_until(lease_outlived, timeout=lease + 5, what="the lease's first length")
        assert await b.store.lease(owner="thief", limit=10, lease_seconds=60) == []
        gate.set()
        await b.settle(b.worker(), rid)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    d = await b.delivery(rid, "a")
    assert (d.state, d.attempts) == ("delivered", 1)


def _called(sink: ScriptedSink, times: int = 1) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(sink.calls) >= times

    return check


# --- retries and dead letters ------------------------------------------------------------------


async def test_a_retryable_failure_is_retried_after_its_backoff(bench: MakeBench) -> None:
    b = await bench({"a": [Retryable("busy")]}, backoff_initial=0.2, backoff_max=1.0)
    rid = await b.accept()
    worker = b.worker()
    before = time.time()
    await worker.run_once()
    after = time.time()
    d = await b.delivery(rid, "a")
    assert (d.state, d.attempts, d.last_error) == ("retrying", 1, "busy")
    # Equal jitter: between half the first step (0.2 s) and the whole step.
    assert before + 0.1 - 0.01 <= seconds(d.next_attempt_at) <= after + 0.2 + 0.01
    assert await worker.run_once() == 0  # not due yet
    view = await b.settle(worker, rid)
    assert (view.deliveries["a"].state, view.deliveries["a"].attempts) == ("delivered", 2)
    assert [ctx.attempt for ctx in b.sinks["a"].calls] == [1, 2]
    assert b.sinks["a"].called_at[1] >= seconds(d.next_attempt_at) - 0.01


async def test_retry_after_from_a_sink_delays_the_next_attempt_at_least_that_long(
    bench: MakeBench,
) -> None:
    b = await bench({"a": [Retryable("429", retry_after=0.5)]}, backoff_max=5.0)
    rid = await b.accept()
    before = time.time()
    await b.worker().run_once()
    d = await b.delivery(rid, "a")
    assert d.state == "retrying" and seconds(d.next_attempt_at) >= before + 0.5 - 0.01


async def test_a_delivery_failing_every_time_is_dead_after_max_attempts(bench: MakeBench) -> None:
    script: list[Step] = [Retryable(f"down {n}") for n in (1, 2, 3, 4)]
    b = await bench({"a": script}, max_attempts=3)
    rid = await b.accept()
    view = await b.settle(b.worker(), rid)
    d = view.deliveries["a"]
    assert (d.state, d.attempts, d.last_error) == ("dead", 3, "down 3")
    assert d.next_attempt_at is None
    assert [ctx.attempt for ctx in b.sinks["a"].calls] == [1, 2, 3]


async def test_a_permanent_failure_is_dead_at_once(bench: MakeBench) -> None:
    b = await bench({"a": [Permanent("bad credentials")]}, max_attempts=5)
    rid = await b.accept()
    await b.worker().run_once()
    d = await b.delivery(rid, "a")
    assert (d.state, d.attempts, d.last_error) == ("dead", 1, "bad credentials")
    assert len(b.sinks["a"].calls) == 1


async def test_a_sink_raising_an_unexpected_error_is_retried_not_lost(bench: MakeBench) -> None:
    b = await bench({"a": [ValueError("a bug in the sink")]})
    rid = await b.accept()
    worker = b.worker()
    await worker.run_once()
    d = await b.delivery(rid, "a")
    assert (d.state, d.attempts, d.last_error) == ("retrying", 1, "ValueError: a bug in the sink")
    view = await b.settle(worker, rid)
    assert (view.deliveries["a"].state, view.deliveries["a"].attempts) == ("delivered", 2)


async def test_an_attempt_over_attempt_timeout_is_retried(bench: MakeBench) -> None:
    b = await bench({"a": [asyncio.Event()]}, attempt_timeout=0.05)  # never set
    rid = await b.accept()
    worker = b.worker()
    await worker.run_once()
    d = await b.delivery(rid, "a")
    assert (d.state, d.attempts, d.last_error) == ("retrying", 1, "attempt timed out")
    assert (await b.settle(worker, rid)).deliveries["a"].state == "delivered"


async def test_a_sink_no_longer_configured_is_dead_and_the_others_deliver(
    bench: MakeBench,
) -> None:
    b = await bench({"a": [], "gone": []})
    rid = await b.accept()
    await b.worker(without=("gone",)).run_once()
    view = await b.view(rid)
    assert view.deliveries["a"].state == "delivered"
    gone = view.deliveries["gone"]
    assert (gone.state, gone.last_error) == ("dead", "sink 'gone' is not configured")


# --- `after` ordering --------------------------------------------------------------------------


async def test_a_sink_runs_after_its_prerequisites_and_reads_their_outputs(
    bench: MakeBench,
) -> None:
    stored = {"url": "s3://bucket/clip.mp4"}
    b = await bench({"team": [], "archive": [stored]}, after={"team": ["archive"]})
    rid = await b.accept()
    assert await b.worker().run_once() == 2  # one job: both leased together
    assert b.journal == [
        ("start", "archive"),
        ("end", "archive"),
        ("start", "team"),
        ("end", "team"),
    ]
    [ctx] = b.sinks["team"].calls
    assert ctx.outputs == {"archive": stored}
    view = await b.view(rid)
    assert {n: (d.state, d.attempts) for n, d in view.deliveries.items()} == {
        "archive": ("delivered", 1),
        "team": ("delivered", 1),
    }


async def test_a_sink_waits_for_a_failing_prerequisite_without_spending_attempts(
    bench: MakeBench, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = await bench(
        {"archive": [Retryable("s3 down"), Retryable("s3 down")], "team": []},
        after={"team": ["archive"]},
        max_attempts=3,
    )
    rid = await b.accept()
    recorded: dict[str, Finish] = {}
    finish_many = b.store.finish_many

    async def recording(results: list[Finish], files: Any = None) -> list[bool]:
        for result in results:
            recorded.setdefault(result.sink, result)  # the first job's outcome of each sink
        await asyncio.sleep(0.1)  # a slow store: archive's tiny backoff passes meanwhile
        return await finish_many(results, files)

    monkeypatch.setattr(b.store, "finish_many", recording)
    worker = b.worker()
    await worker.run_once()
    view = await b.view(rid)
    archive, team = view.deliveries["archive"], view.deliveries["team"]
    assert (archive.state, archive.attempts) == ("retrying", 1)
    assert (team.state, team.attempts) == ("retrying", 0)  # rescheduled, not tried
    assert team.last_error == "waiting for ['archive'] to deliver"
    # Due with archive, so that one lease takes both: the worker asks for the same time
    # (PostgreSQL then adds the delay to its own clock at each statement, so the stored times
    # differ by the time between the two statements, more on a loaded machine).
    assert recorded["team"].next_attempt_at == recorded["archive"].next_attempt_at
    assert abs(seconds(team.next_attempt_at) - seconds(archive.next_attempt_at)) < 1
    assert b.sinks["team"].calls == []
    view = await b.settle(worker, rid)
    assert (view.deliveries["archive"].state, view.deliveries["archive"].attempts) == (
        "delivered",
        3,
    )
    # Two waits spent none of team's three attempts: it ran once, when archive had delivered.
    assert (view.deliveries["team"].state, view.deliveries["team"].attempts) == ("delivered", 1)
    assert len(b.sinks["team"].calls) == 1


async def test_a_sink_after_a_dead_prerequisite_is_dead_without_a_try(bench: MakeBench) -> None:
    b = await bench(
        {"archive": [Permanent("no such bucket")], "team": []}, after={"team": ["archive"]}
    )
    rid = await b.accept()
    await b.worker().run_once()
    view = await b.view(rid)
    assert view.deliveries["archive"].state == "dead"
    team = view.deliveries["team"]
    assert (team.state, team.last_error) == ("dead", "runs after ['archive'], which is dead")
    assert b.sinks["team"].calls == []


async def test_a_sink_leased_without_its_prerequisite_waits_for_it_without_downloading(
    bench: MakeBench, files: FileServer
) -> None:
    b = await bench(
        {"archive": [Retryable("s3 down", retry_after=20)], "team": []},
        after={"team": ["archive"]},
        backoff_max=30,
    )
    files.add("/v.mp4", data=b"video")
    rid = await b.accept(payload={"video": {"url": files.url("/v.mp4")}})
    worker = b.worker()
    await worker.run_once()  # both tried: the file is downloaded once for the job
    assert files.hits("/v.mp4") == 1
    assert await b.store.replay(rid, "team") == 1  # team alone is due now; archive in 20 s
    assert await worker.run_once() == 1
    view = await b.view(rid)
    archive, team = view.deliveries["archive"], view.deliveries["team"]
    assert (team.state, team.attempts) == ("retrying", 0)
    assert team.last_error == "waiting for ['archive'] to deliver"
    assert abs(seconds(team.next_attempt_at) - seconds(archive.next_attempt_at)) < 0.01
    assert b.sinks["team"].calls == [] and files.hits("/v.mp4") == 1


# --- shutdown ----------------------------------------------------------------------------------


async def test_stop_mid_delivery_hands_the_lease_back_without_counting(bench: MakeBench) -> None:
    b = await bench({"a": [asyncio.Event()]}, shutdown_grace=0)  # the sink never finishes
    rid = await b.accept()
    stop = asyncio.Event()
    running = asyncio.create_task(b.worker().run(stop))
    try:
        await wait_until(_called(b.sinks["a"]), what="the delivery to start")
    finally:
        stop.set()  # the worker stops even when the test fails
    await asyncio.wait_for(running, 10)
    assert b.journal == [("start", "a"), ("end", "a")]  # cancelled, not left running
    d = await b.delivery(rid, "a")
    assert (d.state, d.attempts) == ("pending", 0)
    assert seconds(d.next_attempt_at) <= time.time()  # due again at once
    [job] = await b.store.lease(owner="next", limit=10, lease_seconds=60)
    assert [(x.sink, x.attempts) for x in job.deliveries] == [("a", 0)]


async def test_stop_lets_in_flight_deliveries_finish_within_shutdown_grace(
    bench: MakeBench,
) -> None:
    gate = asyncio.Event()
    b = await bench({"a": [gate]}, shutdown_grace=30)
    rid = await b.accept()
    stop = asyncio.Event()
    running = asyncio.create_task(b.worker().run(stop))
    try:
        await wait_until(_called(b.sinks["a"]), what="the delivery to start")
    finally:
        stop.set()
        gate.set()  # the sink finishes while the worker drains
    await asyncio.wait_for(running, 10)
    d = await b.delivery(rid, "a")
    assert (d.state, d.attempts) == ("delivered", 1)
