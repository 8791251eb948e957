"""The Store protocol's promises, for every backend in tests/support/stores.py; then what only
the SQLite store promises (group commit, errors as StoreUnavailable, migrations)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from falhook.store import sqlite_schema as schema
from falhook.store.models import (
    LEASE_EXPIRED,
    Finish,
    Job,
    NewEvent,
    NewSubmission,
    StoreUnavailable,
    utcnow,
)
from falhook.store.roles import Store
from falhook.store.sqlite import SQLiteStore
from tests.support.stores import STORE_BACKENDS, open_backend, reopen_backend

HOUR = timedelta(hours=1)


@pytest.fixture(params=STORE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_backend(backend, tmp_path) as s:
        yield s


def event(route: str = "r", sinks: tuple[str, ...] = ("a", "b"), **kw: Any) -> NewEvent:
    rid = str(kw.pop("request_id", uuid.uuid4()))
    fields: dict[str, Any] = {
        "request_id": rid,
        "route": route,
        "fal_status": "OK",
        "error": None,
        "payload_error": None,
        "gateway_request_id": "gw-1",
        "headers": {"x-fal-webhook-request-id": rid},
        "body": b'{"request_id": "%s"}' % rid.encode(),
        "files": [{"path": "video", "url": "https://x/v.mp4"}],
        "sinks": sinks,
        "received_at": utcnow() - HOUR,  # in the past: its deliveries are due at once
    }
    fields.update(kw)
    return NewEvent(**fields)


async def lease_all(
    store: Store, owner: str = "w1", seconds: float = 60, limit: int = 100, **kw: Any
) -> list[Job]:
    return await store.lease(owner=owner, limit=limit, lease_seconds=seconds, **kw)


def leased(jobs: list[Job]) -> dict[str, list[str]]:
    return {j.event.request_id: sorted(d.sink for d in j.deliveries) for j in jobs}


async def set_states(store: Store, request_id: str, outcomes: dict[str, str]) -> None:
    """Drive the event's deliveries: "delivered", "retry" (due in an hour), "dead", or
    "pending" (leased, then released)."""
    [job] = await lease_all(store, request_id=request_id)
    for d in job.deliveries:
        outcome = outcomes.get(d.sink, "pending")
        if outcome == "pending":
            await store.release(request_id, d.sink, d.token)
            continue
        later = utcnow() + HOUR if outcome == "retry" else None
        result = Finish(request_id, d.sink, d.token, outcome, "boom", later)  # type: ignore[arg-type]
        assert await store.finish(result)


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


# --- accept ----------------------------------------------------------------------------------


async def test_accept_stores_the_event_and_one_pending_delivery_per_sink(store: Store) -> None:
    e = event()
    assert await store.accept(e) is True
    view = await store.get_event(e.request_id)
    assert view is not None
    assert (view.route, view.fal_status, view.gateway_request_id) == ("r", "OK", "gw-1")
    assert (view.body, view.headers, view.files) == (e.body, e.headers, e.files)
    assert view.received_at.tzinfo is not None
    assert abs(view.received_at - e.received_at) < timedelta(milliseconds=1)
    assert view.source == "webhook" and view.submission is None
    assert sorted(view.deliveries) == ["a", "b"] and view.state == "pending"
    assert all(d.state == "pending" and d.attempts == 0 for d in view.deliveries.values())


async def test_an_unknown_event_is_none(store: Store) -> None:
    assert await store.get_event("nope") is None


async def test_a_second_accept_is_a_duplicate_even_on_another_route(store: Store) -> None:
    e = event()
    await store.accept(e)
    again = event(route="other", sinks=("c",), request_id=e.request_id, body=b"{}", files=[])
    assert await store.accept(again) is False
    view = await store.get_event(e.request_id)
    assert view is not None
    assert (view.route, view.body, view.files) == ("r", e.body, e.files)
    assert sorted(view.deliveries) == ["a", "b"]


async def test_the_same_request_id_accepted_concurrently_is_stored_once(store: Store) -> None:
    e = event()
    results = await asyncio.gather(*(store.accept(e) for _ in range(10)))
    assert sorted(results) == [False] * 9 + [True]


async def test_accepted_events_survive_a_reopen(backend: str, tmp_path: Path) -> None:
    e = event()
    async with open_backend(backend, tmp_path) as s:
        assert await s.accept(e)
    async with reopen_backend(backend, tmp_path) as s:
        view = await s.get_event(e.request_id)
        assert view is not None and view.body == e.body and sorted(view.deliveries) == ["a", "b"]


async def test_concurrent_accepts_are_all_stored_sharing_commits(store: Store) -> None:
    events = [event() for _ in range(200)]
    before = store.commits if isinstance(store, SQLiteStore) else 0
    assert all(await asyncio.gather(*(store.accept(e) for e in events)))
    listed = await store.list_events(limit=1000)
    assert {v.request_id for v in listed} == {e.request_id for e in events}
    if isinstance(store, SQLiteStore):
        assert store.commits - before < 50  # group commit, not one fsync per accept


# --- lease, finish, release, extend ------------------------------------------------------------


async def test_lease_hands_out_only_due_deliveries_grouped_by_event(store: Store) -> None:
    e1, e2, later, done = event(), event(sinks=("a",)), event(sinks=("a",)), event(sinks=("a",))
    for e in (e1, e2, later, done):
        await store.accept(e)
    await set_states(store, later.request_id, {"a": "retry"})
    await set_states(store, done.request_id, {"a": "delivered"})
    jobs = await lease_all(store)
    assert leased(jobs) == {e1.request_id: ["a", "b"], e2.request_id: ["a"]}
    assert all(j.event.body for j in jobs)  # the job carries the event itself
    assert len({d.token for j in jobs for d in j.deliveries}) == 3  # a token each
    assert await lease_all(store, owner="w2") == []  # held: nobody else gets them


async def test_lease_takes_the_oldest_first_up_to_limit_deliveries(store: Store) -> None:
    base = utcnow() - HOUR
    events = [event(received_at=base + timedelta(seconds=i)) for i in range(3)]
    for e in reversed(events):
        await store.accept(e)
    first = await lease_all(store, limit=3)
    assert sum(len(j.deliveries) for j in first) == 3
    assert [j.event.request_id for j in first] == [events[0].request_id, events[1].request_id]
    rest = await lease_all(store, limit=10)
    assert sum(len(j.deliveries) for j in rest) == 3


async def test_a_retry_is_not_leased_before_its_time(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    await set_states(store, e.request_id, {"a": "retry"})
    assert await lease_all(store) == []
    view = await store.get_event(e.request_id)
    assert view is not None and view.state == "retrying"
    d = view.deliveries["a"]
    assert (d.state, d.attempts, d.last_error) == ("retrying", 1, "boom")
    assert d.next_attempt_at is not None and d.next_attempt_at > utcnow()


async def test_a_targeted_lease_ignores_the_retry_time(store: Store) -> None:
    e, other = event(sinks=("a",)), event(sinks=("a",))
    await store.accept(e)
    await store.accept(other)
    await set_states(store, e.request_id, {"a": "retry"})
    jobs = await lease_all(store, request_id=e.request_id)  # fal's retry is the schedule
    assert leased(jobs) == {e.request_id: ["a"]}


async def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    [first] = await lease_all(store, owner="crashed", seconds=0)  # expires at once
    [second] = await lease_all(store, owner="w2")
    old, new = first.deliveries[0].token, second.deliveries[0].token
    assert old != new
    # The crashed worker's attempt counts (an event that kills every worker still ends dead).
    assert [d.attempts for d in first.deliveries] == [0]
    assert [d.attempts for d in second.deliveries] == [1]
    taken = await store.get_event(e.request_id)
    assert taken is not None and taken.deliveries["a"].last_error == LEASE_EXPIRED
    assert await store.finish(Finish(e.request_id, "a", old, "delivered")) is False
    await store.release(e.request_id, "a", old)  # no effect either
    assert await lease_all(store, owner="w3") == []
    assert await store.finish(Finish(e.request_id, "a", new, "delivered", output={"k": 1}))
    view = await store.get_event(e.request_id)
    assert view is not None
    d = view.deliveries["a"]
    assert (d.state, d.attempts, d.output) == ("delivered", 2, {"k": 1})  # crash + success
    assert d.last_error is None


async def test_a_finish_not_counted_reschedules_without_spending_an_attempt(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    [job] = await lease_all(store)
    token = job.deliveries[0].token
    later = utcnow() + HOUR
    waiting = Finish(e.request_id, "a", token, "retry", "waiting", later, counted=False)
    assert await store.finish(waiting)
    view = await store.get_event(e.request_id)
    assert view is not None
    d = view.deliveries["a"]
    assert (d.state, d.attempts, d.last_error) == ("retrying", 0, "waiting")
    assert d.next_attempt_at is not None
    assert abs((d.next_attempt_at - later).total_seconds()) < 60


async def test_finish_records_each_outcome_and_counts_attempts(store: Store) -> None:
    e = event(sinks=("ok", "again", "gone"))
    await store.accept(e)
    [job] = await lease_all(store)
    tokens = {d.sink: d.token for d in job.deliveries}
    later = utcnow() + HOUR
    assert await store.finish(
        Finish(e.request_id, "ok", tokens["ok"], "delivered", output={"url": "s3://x"})
    )
    assert await store.finish(Finish(e.request_id, "again", tokens["again"], "retry", "503", later))
    assert await store.finish(Finish(e.request_id, "gone", tokens["gone"], "dead", "refused"))
    view = await store.get_event(e.request_id)
    assert view is not None
    got = {s: (d.state, d.attempts, d.last_error) for s, d in view.deliveries.items()}
    assert got == {
        "ok": ("delivered", 1, None),
        "again": ("retrying", 1, "503"),
        "gone": ("dead", 1, "refused"),
    }
    assert view.deliveries["ok"].output == {"url": "s3://x"}
    assert view.state == "dead"
    # A finished token holds nothing any more.
    assert not await store.finish(Finish(e.request_id, "ok", tokens["ok"], "delivered"))
    [again] = await lease_all(store, request_id=e.request_id)
    assert [(d.sink, d.attempts) for d in again.deliveries] == [("again", 1)]


async def test_release_makes_a_delivery_due_without_counting(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    [job] = await lease_all(store)
    await store.release(e.request_id, "a", job.deliveries[0].token)
    view = await store.get_event(e.request_id)
    assert view is not None and view.deliveries["a"].state == "pending"
    [again] = await lease_all(store, owner="w2")
    assert again.deliveries[0].attempts == 0


async def test_extend_keeps_a_lease_from_expiring(store: Store) -> None:
    kept, lapsed = event(sinks=("a",)), event(sinks=("a",))
    await store.accept(kept)
    await store.accept(lapsed)
    jobs = await lease_all(store, seconds=0)  # both leases lapse at once...
    tokens = {j.event.request_id: j.deliveries[0].token for j in jobs}
    await store.extend([tokens[kept.request_id]], 3600)  # ...unless extended
    assert leased(await lease_all(store, owner="w2")) == {lapsed.request_id: ["a"]}
    assert await store.finish(Finish(kept.request_id, "a", tokens[kept.request_id], "delivered"))


async def test_two_stores_on_the_same_data_never_lease_a_delivery_twice(
    backend: str, tmp_path: Path
) -> None:
    async with open_backend(backend, tmp_path) as s1, reopen_backend(backend, tmp_path) as s2:
        events = [event() for _ in range(30)]
        await asyncio.gather(*(s1.accept(e) for e in events))
        rounds = await asyncio.gather(
            *(lease_all(s, owner=f"w{i}", limit=10) for i, s in enumerate([s1, s2] * 4))
        )
        taken = [
            (j.event.request_id, d.sink) for jobs in rounds for j in jobs for d in j.deliveries
        ]
        assert len(taken) == len(set(taken)) == 60


# --- replay ------------------------------------------------------------------------------------


async def test_replay_reschedules_one_sink_or_all_dead_and_delivered_included(
    store: Store,
) -> None:
    e = event()
    await store.accept(e)
    await set_states(store, e.request_id, {"a": "delivered", "b": "dead"})
    assert await store.replay(e.request_id, "b") == 1
    view = await store.get_event(e.request_id)
    assert view is not None
    b = view.deliveries["b"]
    assert (b.state, b.attempts, b.last_error) == ("pending", 0, None)
    assert view.deliveries["a"].state == "delivered"
    assert await store.replay(e.request_id) == 2
    view = await store.get_event(e.request_id)
    assert view is not None and {d.state for d in view.deliveries.values()} == {"pending"}
    assert leased(await lease_all(store)) == {e.request_id: ["a", "b"]}


async def test_replay_of_an_unknown_event_or_sink_is_zero(store: Store) -> None:
    e = event()
    await store.accept(e)
    assert await store.replay("unknown") == 0
    assert await store.replay(e.request_id, "zz") == 0


async def test_replay_fences_the_holder_of_a_lease(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    [job] = await lease_all(store)
    assert await store.replay(e.request_id) == 1
    assert not await store.finish(Finish(e.request_id, "a", job.deliveries[0].token, "dead", "x"))
    view = await store.get_event(e.request_id)
    assert view is not None and view.deliveries["a"].state == "pending"


async def test_replay_keeps_outputs_unless_forced(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    [job] = await lease_all(store)
    token = job.deliveries[0].token
    assert await store.finish(Finish(e.request_id, "a", token, "delivered", output={"ts": "1"}))
    await store.replay(e.request_id)
    view = await store.get_event(e.request_id)
    assert view is not None and view.deliveries["a"].output == {"ts": "1"}
    await store.replay(e.request_id, force=True)
    view = await store.get_event(e.request_id)
    assert view is not None and view.deliveries["a"].output is None


# --- reading -----------------------------------------------------------------------------------


async def test_list_events_is_newest_first_with_route_and_limit(store: Store) -> None:
    base = utcnow() - HOUR
    events = [
        event(route="x" if i % 2 else "y", received_at=base + timedelta(seconds=i))
        for i in range(5)
    ]
    for e in events:
        await store.accept(e)
    newest_first = [e.request_id for e in reversed(events)]
    assert [v.request_id for v in await store.list_events()] == newest_first
    assert [v.request_id for v in await store.list_events(route="x")] == [
        e.request_id for e in reversed(events) if e.route == "x"
    ]
    assert [v.request_id for v in await store.list_events(limit=2)] == newest_first[:2]
    assert await store.list_events(route="nope") == []


async def test_list_events_filters_on_the_summed_up_state(store: Store) -> None:
    cases = {
        "untouched": {},
        "partly": {"a": "delivered"},
        "retrying": {"a": "retry", "b": "delivered"},
        "dead": {"a": "dead", "b": "retry"},
        "delivered": {"a": "delivered", "b": "delivered"},
    }
    ids: dict[str, str] = {}
    for name, outcomes in cases.items():
        e = event()
        ids[name] = e.request_id
        await store.accept(e)
        if outcomes:
            await set_states(store, e.request_id, outcomes)
    held = event()
    await store.accept(held)
    await lease_all(store, request_id=held.request_id)

    async def listed(state: str) -> set[str]:
        return {v.request_id for v in await store.list_events(state=state)}

    assert await listed("pending") == {ids["untouched"], ids["partly"], held.request_id}
    assert await listed("retrying") == {ids["retrying"]}
    assert await listed("dead") == {ids["dead"]}
    assert await listed("delivered") == {ids["delivered"]}
    assert await listed("delivering") == {held.request_id}  # a delivery state works too
    for state in ("pending", "retrying", "dead", "delivered"):
        assert all(v.state == state for v in await store.list_events(state=state))


async def test_counts_are_deliveries_per_state(store: Store) -> None:
    e1, e2 = event(), event(sinks=("a",))
    await store.accept(e1)
    await store.accept(e2)
    await set_states(store, e1.request_id, {"a": "delivered", "b": "dead"})
    assert await store.counts() == {"delivered": 1, "dead": 1, "pending": 1}


async def test_record_files_replaces_the_file_list(store: Store) -> None:
    e = event()
    await store.accept(e)
    files = [{"path": "video", "url": "https://x/v.mp4", "sha256": "ab", "size": 3}]
    await store.record_files(e.request_id, files)
    view = await store.get_event(e.request_id)
    assert view is not None and view.files == files


# --- submissions -------------------------------------------------------------------------------


def submission(**kw: Any) -> NewSubmission:
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "endpoint": "luma/agent/ray/v3.2/reframe",
        "route": "r",
        "input": {"prompt": "p"},
        "status_url": "https://queue/status",
    }
    fields.update(kw)
    return NewSubmission(**fields)


async def test_submissions_have_a_derived_state(store: Store) -> None:
    base = utcnow() - HOUR
    subs = {
        name: submission(submitted_at=base + timedelta(seconds=i))
        for i, name in enumerate(("pending", "completed", "recovered", "lost", "unknown"))
    }
    for s in subs.values():
        await store.record_submission(s)
    await store.accept(event(request_id=subs["completed"].request_id))
    await store.accept(event(request_id=subs["recovered"].request_id, source="poll"))
    await store.update_submission(subs["lost"].request_id, state="lost", detail="not found")
    await store.update_submission(subs["unknown"].request_id, state="unknown")
    listed = await store.list_submissions()
    assert [s.request_id for s in listed] == [s.request_id for s in reversed(subs.values())]
    assert {s.request_id: s.state for s in listed} == {s.request_id: n for n, s in subs.items()}
    for name, s in subs.items():
        assert [v.request_id for v in await store.list_submissions(state=name)] == [s.request_id]
    lost = await store.get_submission(subs["lost"].request_id)
    assert lost is not None and lost.detail == "not found" and lost.checked_at is not None
    done = await store.get_submission(subs["completed"].request_id)
    assert done is not None and done.received_at is not None and done.input == {"prompt": "p"}
    assert await store.get_submission("nope") is None


async def test_a_submission_is_recorded_once(store: Store) -> None:
    s = submission()
    await store.record_submission(s)
    await store.record_submission(submission(request_id=s.request_id, endpoint="other"))
    view = await store.get_submission(s.request_id)
    assert view is not None and view.endpoint == s.endpoint
    assert len(await store.list_submissions()) == 1


async def test_an_event_carries_its_submission(store: Store) -> None:
    s = submission()
    await store.record_submission(s)
    await store.accept(event(request_id=s.request_id))
    view = await store.get_event(s.request_id)
    assert view is not None and view.submission is not None
    assert (view.submission.endpoint, view.submission.state) == (s.endpoint, "completed")


async def test_overdue_submissions_are_old_pending_ones_without_an_event(store: Store) -> None:
    old = utcnow() - 2 * HOUR
    older, oldish, answered, given_up = (
        submission(submitted_at=old - timedelta(seconds=10)),
        submission(submitted_at=old),
        submission(submitted_at=old),
        submission(submitted_at=old),
    )
    recent = submission()
    for s in (oldish, older, answered, given_up, recent):
        await store.record_submission(s)
    await store.accept(event(request_id=answered.request_id))
    await store.update_submission(given_up.request_id, state="lost")
    overdue = await store.overdue_submissions(older_than=utcnow() - HOUR, limit=10)
    assert [s.request_id for s in overdue] == [older.request_id, oldish.request_id]
    assert len(await store.overdue_submissions(older_than=utcnow() - HOUR, limit=1)) == 1


# --- waiting for work ------------------------------------------------------------------------


async def test_wait_for_work_wakes_on_accept(store: Store) -> None:
    waiter = asyncio.create_task(store.wait_for_work(3600))
    await asyncio.sleep(0)  # let it start waiting
    assert not waiter.done()
    await store.accept(event())
    await asyncio.wait_for(waiter, 10)  # the accept woke it: max_wait was an hour


async def test_wait_for_work_wakes_on_replay(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    await store.wait_for_work(0)  # consume the accept's wake-up
    waiter = asyncio.create_task(store.wait_for_work(3600))
    await asyncio.sleep(0)
    assert not waiter.done()
    await store.replay(e.request_id)
    await asyncio.wait_for(waiter, 10)


async def test_wait_for_work_returns_after_max_wait_without_work(store: Store) -> None:
    await asyncio.wait_for(store.wait_for_work(0.01), 10)


async def test_ping_answers_while_open(store: Store) -> None:
    assert await store.ping() is True


# --- SQLite only -------------------------------------------------------------------------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "events.db", busy_timeout=0.2)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_sqlite_open_creates_the_missing_folder(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "a" / "b" / "events.db")
    await s.open()
    try:
        assert await s.accept(event())
    finally:
        await s.close()
    assert (tmp_path / "a" / "b" / "events.db").is_file()


async def test_sqlite_file_is_wal_and_fsynced_on_commit(sqlite_store: SQLiteStore) -> None:
    with closing(sqlite3.connect(sqlite_store.path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    sync = await sqlite_store._write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
    assert sync == 2  # FULL


async def test_sqlite_open_on_an_unusable_path_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "events.db"
    blocker.mkdir()  # a folder where the file should be: even root cannot open it
    with pytest.raises(StoreUnavailable):
        await SQLiteStore(blocker).open()


async def test_sqlite_accept_while_locked_past_busy_timeout_is_store_unavailable(
    sqlite_store: SQLiteStore,
) -> None:
    other = sqlite3.connect(sqlite_store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable):
            await sqlite_store.accept(event())
        assert await sqlite_store.ping()  # WAL: reads still work
        other.execute("COMMIT")
    finally:
        other.close()
    assert await sqlite_store.accept(event())  # and the store recovers


async def test_sqlite_accept_on_a_full_disk_is_store_unavailable(
    sqlite_store: SQLiteStore,
) -> None:
    kept = event()
    await sqlite_store.accept(kept)

    def cap(c: sqlite3.Connection) -> None:  # what a full disk looks like to SQLite
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        c.execute(f"PRAGMA max_page_count = {pages}")

    await sqlite_store._write(cap)
    with pytest.raises(StoreUnavailable):
        await sqlite_store.accept(event(body=b"x" * 200_000))
    assert await sqlite_store.ping()
    assert await sqlite_store.get_event(kept.request_id) is not None
    await sqlite_store._write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    assert await sqlite_store.accept(event(body=b"x" * 200_000))  # the writer lived on


async def test_sqlite_a_failing_operation_does_not_sink_its_batch(
    sqlite_store: SQLiteStore,
) -> None:
    entered, gate = threading.Event(), threading.Event()

    def hold(c: sqlite3.Connection) -> str:
        entered.set()
        gate.wait(10)
        return "held"

    holder = asyncio.create_task(sqlite_store._write(hold))
    assert await asyncio.to_thread(entered.wait, 10)
    good, bad, also_good = event(), event(route=None), event()  # a NULL route fails alone
    dup = event(request_id=good.request_id)
    tasks = [asyncio.create_task(sqlite_store.accept(e)) for e in (good, bad, dup, also_good)]
    tasks.append(
        asyncio.create_task(sqlite_store._write(lambda c: c.execute("SELECT * FROM nowhere")))
    )
    writer = sqlite_store._writer
    assert writer is not None
    await wait_until(lambda: writer.ops.qsize() == len(tasks))  # all queued behind the gate
    commits = sqlite_store.commits
    gate.set()
    assert await holder == "held"
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] is True and results[2] is False and results[3] is True
    assert isinstance(results[1], StoreUnavailable) and isinstance(results[4], StoreUnavailable)
    assert sqlite_store.commits == commits + 2  # the held batch, then all five in one
    assert await sqlite_store.get_event(bad.request_id) is None
    assert await sqlite_store.get_event(also_good.request_id) is not None


async def test_sqlite_ping_is_false_once_closed(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "events.db")
    await s.open()
    await s.close()
    assert await s.ping() is False
    with pytest.raises(StoreUnavailable):
        await s.accept(event())


async def test_sqlite_an_older_file_is_migrated_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    conn = schema.connect(path, busy_timeout=1)
    for statement in schema.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    t = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    conn.execute(
        "INSERT INTO events (request_id, route, fal_status, received_at, headers, body, files)"
        " VALUES ('old', 'r', 'OK', ?, '{}', x'7b7d', '[]')",
        (t,),
    )
    conn.close()
    s = SQLiteStore(path)
    await s.open()
    try:
        view = await s.get_event("old")
        assert view is not None and view.received_at == datetime(2026, 1, 1, tzinfo=UTC)
        assert [v.request_id for v in await s.list_events(route="r")] == ["old"]
    finally:
        await s.close()
    with closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        indexes = {r[0] for r in check.execute("SELECT name FROM sqlite_master")}
        assert {"events_by_route", "deliveries_by_token"} <= indexes


async def test_sqlite_a_file_from_a_newer_falhook_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(StoreUnavailable, match="newer"):
        await SQLiteStore(path).open()


async def test_sqlite_a_version_2_file_moves_to_integer_keys_with_every_delivery(
    tmp_path: Path,
) -> None:
    """Version 3 rebuilds events and deliveries (integer keys); states, attempts, errors,
    leases and outputs all survive, and the store works on the result."""
    path = tmp_path / "events.db"
    conn = schema.connect(path, busy_timeout=1)
    for statements in schema.MIGRATIONS[:2]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    t = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    for rid in ("first", "second"):
        conn.execute(
            "INSERT INTO events (request_id, route, fal_status, received_at, headers, body,"
            " files) VALUES (?, 'r', 'OK', ?, '{}', x'7b7d', '[]')",
            (rid, t),
        )
    rows = [
        ("first", "a", "dead", 12, None, "no attempts left", None, None, None, b'{"k": 1}'),
        ("first", "b", "delivered", 1, None, None, None, None, None, b'{"url": "u"}'),
        ("second", "a", "delivering", 2, t, None, "tok", "w9", t + 60, None),
        ("second", "b", "retrying", 3, t, "503", None, None, None, None),
    ]
    conn.executemany(
        "INSERT INTO deliveries (request_id, sink, state, attempts, next_attempt_at,"
        " last_error, lease_token, lease_owner, lease_expires_at, output, updated_at)"
        f" VALUES (?,?,?,?,?,?,?,?,?,?,{t})",
        rows,
    )
    conn.commit()
    conn.close()

    s = SQLiteStore(path)
    await s.open()
    try:
        first, second = await s.get_event("first"), await s.get_event("second")
        assert first is not None and second is not None
        got = {
            (v.request_id, d.sink): (d.state, d.attempts, d.last_error, d.output)
            for v in (first, second)
            for d in v.deliveries.values()
        }
        assert got == {
            ("first", "a"): ("dead", 12, "no attempts left", {"k": 1}),
            ("first", "b"): ("delivered", 1, None, {"url": "u"}),
            ("second", "a"): ("delivering", 2, None, None),
            ("second", "b"): ("retrying", 3, "503", None),
        }
        assert [v.request_id for v in await s.list_events(state="dead")] == ["first"]
        # The lease held before the upgrade is still the one that can finish its delivery.
        assert await s.finish(Finish("second", "a", "tok", "delivered", output={"x": 1}))
        jobs = await lease_all(s)
        assert leased(jobs) == {"second": ["b"]}
        assert await s.replay("first") == 2
        new = event(request_id="third")
        assert await s.accept(new) is True
        assert (await s.get_event("third")).deliveries.keys() == {"a", "b"}  # type: ignore[union-attr]
    finally:
        await s.close()
    with closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert check.execute("PRAGMA foreign_key_check").fetchall() == []
        ids = dict(check.execute("SELECT request_id, id FROM events"))
        assert ids["third"] > max(ids["first"], ids["second"])
        indexes = {r[0] for r in check.execute("SELECT name FROM sqlite_master")}
        assert {"events_by_route", "deliveries_due"} <= indexes
        assert {"deliveries_by_token"} <= indexes


@pytest.mark.parametrize("state", ["dead", "retrying", "delivered", "pending", "delivering"])
def test_sqlite_listing_by_state_reads_each_event_s_deliveries_by_key(
    tmp_path: Path, state: str
) -> None:
    """Through the state index instead, listing dead events read every dead delivery for
    each event listed: 6 s for 100 out of 100k events with 5k dead, against 1.4 ms."""
    conn = schema.connect(tmp_path / "events.db", busy_timeout=1)
    schema.migrate(conn)
    sql, params = schema.list_events_sql(state, None)  # the store's own listing query
    plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", [*params, 10]))
    conn.close()
    assert "deliveries_due" not in plan, plan
    assert "(event_id=?)" in plan, plan


# --- history: every attempt of every delivery ----------------------------------------------------


async def test_each_attempt_goes_into_the_deliverys_history_oldest_first(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    for outcome, error in (("retry", "503"), ("retry", "timeout"), ("delivered", None)):
        [job] = await lease_all(store, request_id=e.request_id)
        [d] = job.deliveries
        result = Finish(e.request_id, "a", d.token, outcome, error, utcnow(), duration_ms=42)  # type: ignore[arg-type]
        assert await store.finish(result)
    view = await store.get_event(e.request_id)
    assert view is not None
    history = view.deliveries["a"].history
    assert [(h.outcome, h.error, h.duration_ms) for h in history] == [
        ("retry", "503", 42),
        ("retry", "timeout", 42),
        ("delivered", None, 42),
    ]
    assert all(h.at.tzinfo is not None for h in history)
    assert history[0].at <= history[1].at <= history[2].at


async def test_a_sink_waiting_for_another_is_not_an_attempt_but_a_skip_is_history(
    store: Store,
) -> None:
    e = event(sinks=("a", "b"))
    await store.accept(e)
    [job] = await lease_all(store, request_id=e.request_id)
    tokens = {d.sink: d.token for d in job.deliveries}
    waiting = Finish(e.request_id, "a", tokens["a"], "retry", "waiting", utcnow(), counted=False)
    skipped = Finish(e.request_id, "b", tokens["b"], "skipped", "filter", counted=False)
    assert await store.finish(waiting) and await store.finish(skipped)
    view = await store.get_event(e.request_id)
    assert view is not None
    assert view.deliveries["a"].history == ()
    assert [(h.outcome, h.error) for h in view.deliveries["b"].history] == [("skipped", "filter")]
    assert view.deliveries["b"].state == "skipped"


async def test_only_skipped_and_delivered_sinks_make_a_delivered_event(store: Store) -> None:
    e = event(sinks=("a", "b"))
    await store.accept(e)
    [job] = await lease_all(store, request_id=e.request_id)
    tokens = {d.sink: d.token for d in job.deliveries}
    await store.finish(Finish(e.request_id, "a", tokens["a"], "skipped", "filter", counted=False))
    view = await store.get_event(e.request_id)
    assert view is not None and view.state == "pending"
    await store.finish(Finish(e.request_id, "b", tokens["b"], "delivered"))
    view = await store.get_event(e.request_id)
    assert view is not None and view.state == "delivered"
    [listed] = await store.list_events(state="delivered")
    assert listed.request_id == e.request_id


async def test_a_lease_taken_over_from_a_dead_worker_is_an_expired_entry(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    await lease_all(store, seconds=0, request_id=e.request_id)  # the worker dies at once
    [job] = await lease_all(store, owner="w2")
    view = await store.get_event(e.request_id)
    assert view is not None
    [entry] = view.deliveries["a"].history
    assert entry.outcome == "expired" and entry.error == LEASE_EXPIRED
    assert job.deliveries[0].attempts == 1


async def test_history_survives_a_replay_and_old_entries_are_pruned(store: Store) -> None:
    e = event(sinks=("a",))
    await store.accept(e)
    await set_states(store, e.request_id, {"a": "dead"})
    assert await store.replay(e.request_id, force=True) == 1
    view = await store.get_event(e.request_id)
    assert view is not None and [h.outcome for h in view.deliveries["a"].history] == ["dead"]
    assert await store.prune_history(utcnow() - HOUR) == 0
    assert await store.prune_history(utcnow() + HOUR) == 1
    view = await store.get_event(e.request_id)
    assert view is not None and view.deliveries["a"].history == ()
