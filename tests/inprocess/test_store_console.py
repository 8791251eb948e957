"""The console's reads (falhook.store.roles.ConsoleReader) on every store backend: filters,
search, cursor paging while events arrive, bulk replay, changes since a mark, dead groups
and delivery statistics; and the SQLite migration that indexes stored events for search."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from falhook.console.overview import DayTrends
from falhook.store import sqlite_schema as schema
from falhook.store import trend_queries
from falhook.store.models import (
    Change,
    ChangeMark,
    DeliveryTrends,
    EventQuery,
    Finish,
    TrendWindow,
    utcnow,
)
from falhook.store.roles import Store
from falhook.store.sqlite import SQLiteStore
from falhook.store.trends import window_ending
from tests.inprocess.test_store import HOUR, event, lease_all, set_states, submission
from tests.support.inprocess import wait_until
from tests.support.stores import STORE_BACKENDS, open_backend, retime


@pytest.fixture(params=STORE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_backend(backend, tmp_path) as s:
        yield s


def body(rid: str, payload: Any = None, **extra: Any) -> bytes:
    return json.dumps({"request_id": rid, "status": "OK", "payload": payload, **extra}).encode()


def made(**kw: Any) -> Any:
    e = event(**kw)
    if "body" not in kw:
        e = event(**kw, body=body(e.request_id, {"prompt": "a quiet harbour at dawn"}))
    return e


async def ids(store: Store, **filters: Any) -> list[str]:
    page = await store.find_events(EventQuery(**filters), limit=100)
    return [v.request_id for v in page.events]


async def test_filters_each_narrow_the_listing(store: Store) -> None:
    a = made(route="r1", request_id="req-a")
    b = made(route="r2", request_id="req-b", fal_status="ERROR", error="boom")
    c = made(route="r1", request_id="req-c", received_at=utcnow() - 3 * HOUR)
    for e in (c, a, b):
        assert await store.accept(e)
    await store.record_submission(submission(request_id=b.request_id, endpoint="fal-ai/flux"))
    await set_states(store, a.request_id, {"a": "dead", "b": "delivered"})
    assert await ids(store) == ["req-b", "req-a", "req-c"]  # newest stored first
    assert await ids(store, route="r1") == ["req-a", "req-c"]
    assert await ids(store, fal_status="ERROR") == ["req-b"]
    assert await ids(store, endpoint="fal-ai/flux") == ["req-b"]
    assert await ids(store, state="dead") == ["req-a"]
    assert await ids(store, since=utcnow() - 2 * HOUR) == ["req-b", "req-a"]
    assert await ids(store, until=utcnow() - 2 * HOUR) == ["req-c"]
    assert await ids(store, route="r1", state="pending") == ["req-c"]
    assert await store.count_events(EventQuery(route="r1")) == 2


async def test_search_finds_request_ids_payload_words_and_errors(store: Store) -> None:
    harbour = made(request_id="2b0c4f0e-13ab-4c5d-9e8f-0a1b2c3d4e5f")
    forest = made(request_id="req-forest", body=body("req-forest", {"prompt": "Pine Forest"}))
    failed = made(
        request_id="req-failed",
        body=body("req-failed", None, status="ERROR", error="GPU quota exceeded"),
    )
    for e in (harbour, forest, failed):
        await store.accept(e)
    await set_states(store, forest.request_id, {"a": "dead"})  # last_error "boom"
    assert await ids(store, q=harbour.request_id) == [harbour.request_id]
    assert await ids(store, q="2b0c4f0e") == [harbour.request_id]  # a part of it
    assert await ids(store, q="pine forest") == [forest.request_id]
    assert await ids(store, q="harbo") == [harbour.request_id]  # a word's beginning
    assert await ids(store, q="quota exceeded") == ["req-failed"]
    assert await ids(store, q="boom") == [forest.request_id]  # a delivery's last error
    assert await ids(store, q="%") == []  # LIKE's wildcards are literal
    assert await ids(store, q="nothing-like-this") == []
    assert await store.count_events(EventQuery(q="harbour")) == 1


async def test_cursor_pages_never_repeat_or_skip_while_events_arrive(store: Store) -> None:
    before = [made() for _ in range(23)]
    for e in before:
        await store.accept(e)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(20):
        page = await store.find_events(EventQuery(), limit=5, cursor=cursor)
        seen += [v.request_id for v in page.events]
        for _ in range(3):  # newer events keep arriving between pages
            await store.accept(made())
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == {e.request_id for e in before}


async def test_a_malformed_cursor_is_a_value_error(store: Store) -> None:
    for cursor in ("nonsense", "W10", "WzEsMiwzXQ"):
        with pytest.raises(ValueError, match="cursor"):
            await store.find_events(EventQuery(), cursor=cursor)


async def test_replay_many_reschedules_the_matching_deliveries(store: Store) -> None:
    e1, e2, e3 = made(), made(), made(sinks=("b",))
    for e in (e1, e2, e3):
        await store.accept(e)
    await set_states(store, e1.request_id, {"a": "dead", "b": "delivered"})
    await set_states(store, e2.request_id, {"a": "dead", "b": "dead"})
    wanted = [e1.request_id, e2.request_id, e3.request_id, "unknown"]
    assert await store.replay_many(wanted, "a") == (2, 2)  # e3 has no sink "a"
    view = await store.get_event(e1.request_id)
    assert view is not None
    assert view.deliveries["a"].state == "pending" and view.deliveries["b"].state == "delivered"
    assert await store.replay_many(wanted) == (5, 3)
    assert await store.replay_many([]) == (0, 0)


async def test_replay_creates_the_delivery_of_a_sink_the_route_gained(store: Store) -> None:
    older, other_route, current = made(), made(route="q"), made(sinks=("a", "b", "c"))
    for e in (older, other_route, current):
        await store.accept(e)
    await set_states(store, older.request_id, {"a": "delivered", "b": "delivered"})
    # Without add_to_routes nothing is made: the event has no delivery for "c".
    assert await store.replay(older.request_id, "c") == 0
    assert await store.replay(older.request_id, "c", add_to_routes=["r"]) == 1
    view = await store.get_event(older.request_id)
    assert view is not None
    assert list(view.deliveries) == ["a", "b", "c"]  # after the route's first sinks
    added = view.deliveries["c"]
    assert (added.state, added.attempts, added.last_error) == ("pending", 0, None)
    assert view.state == "pending"  # the event has work again
    [job] = await lease_all(store, request_id=older.request_id)
    assert [d.sink for d in job.deliveries] == ["c"]  # due now, leased like any other
    await store.release(older.request_id, "c", job.deliveries[0].token)
    # In bulk: only events of the routes named, each once, an existing delivery replayed.
    everyone = [older.request_id, other_route.request_id, current.request_id]
    assert await store.replay_many(everyone, "c", add_to_routes=["r"]) == (2, 2)
    view = await store.get_event(other_route.request_id)
    assert view is not None and "c" not in view.deliveries


async def test_a_lease_of_one_event_can_be_narrowed_to_some_sinks(store: Store) -> None:
    e = made(sinks=("a", "b", "c"))
    await store.accept(e)
    [job] = await lease_all(store, request_id=e.request_id, sinks=["b"])
    assert [d.sink for d in job.deliveries] == ["b"]
    jobs = await lease_all(store, request_id=e.request_id, sinks=["b"])
    assert jobs == []  # held already
    [job] = await lease_all(store, request_id=e.request_id)
    assert sorted(d.sink for d in job.deliveries) == ["a", "c"]


async def changes_until(
    store: Store, mark: ChangeMark, wanted: int
) -> tuple[list[Change], ChangeMark]:
    found: list[Change] = []
    for _ in range(200):
        got, mark = await store.changes(mark)
        found += got
        if len(found) >= wanted:
            return found, mark
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {found}")


async def test_changes_report_each_accept_and_state_change_once(store: Store) -> None:
    earlier = made(received_at=utcnow())
    await store.accept(earlier)  # before the reader came: not news
    await set_states(store, earlier.request_id, {"a": "delivered"})
    _, mark = await store.changes(None)
    e = made(received_at=utcnow())
    await store.accept(e)
    found, mark = await changes_until(store, mark, 1)
    assert found == [Change(e.request_id, "accepted", route="r")]
    [job] = await lease_all(store, request_id=e.request_id)
    found, mark = await changes_until(store, mark, 2)
    assert {(c.kind, c.sink, c.state) for c in found} == {
        ("delivery", "a", "delivering"),
        ("delivery", "b", "delivering"),
    }
    token = {d.sink: d.token for d in job.deliveries}
    await store.finish(Finish(e.request_id, "a", token["a"], "delivered"))
    found, mark = await changes_until(store, mark, 1)
    assert [(c.kind, c.sink, c.state) for c in found] == [("delivery", "a", "delivered")]
    again, _ = await store.changes(mark)
    assert again == []  # nothing twice


async def test_an_accept_committed_while_changes_are_read_is_reported_as_an_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the events and the deliveries of one look are read in one snapshot, so an
    accept committing between the two reads is not seen as a pending delivery of an event
    never reported (SQLite's readers always read in one snapshot)."""
    from falhook.store import postgres_reads

    async with open_backend("postgres", tmp_path) as store:
        _, mark = await store.changes(None)
        late = made(received_at=utcnow())
        real = postgres_reads._accepted

        async def then_an_accept(c: Any, m: ChangeMark) -> Any:
            found = await real(c, m)
            if not await store.get_event(late.request_id):
                await store.accept(late)  # commits between the two reads of this look
            return found

        monkeypatch.setattr(postgres_reads, "_accepted", then_an_accept)
        found, mark = await changes_until(store, mark, 1)
        assert found[0] == Change(late.request_id, "accepted", route="r")
        assert all(c.kind == "accepted" for c in found)


async def test_dead_deliveries_are_grouped_by_sink_and_error(store: Store) -> None:
    events = [made() for _ in range(3)]
    for e in events:
        await store.accept(e)
        await set_states(store, e.request_id, {"a": "dead", "b": "delivered"})
    await set_states_error(store, made(), "timeout")
    groups = await store.dead_groups()
    assert [(g.sink, g.error, g.count) for g in groups] == [("a", "boom", 3), ("a", "timeout", 1)]
    assert set(groups[0].request_ids) == {e.request_id for e in events}
    assert await store.dead_count() == 4


async def set_states_error(store: Store, e: Any, error: str) -> None:
    await store.accept(e)
    [job] = await lease_all(store, request_id=e.request_id)
    for d in job.deliveries:
        outcome = "dead" if d.sink == "a" else "delivered"
        await store.finish(Finish(e.request_id, d.sink, d.token, outcome, error))  # type: ignore[arg-type]


async def test_delivery_stats_count_the_last_hour_by_sink(store: Store) -> None:
    e = made(received_at=utcnow() - timedelta(seconds=30))
    await store.accept(e)
    [job] = await lease_all(store, request_id=e.request_id)
    for d in job.deliveries:
        outcome = "delivered" if d.sink == "a" else "retry"
        await store.finish(
            Finish(e.request_id, d.sink, d.token, outcome, duration_ms=120)  # type: ignore[arg-type]
        )
    stats = await store.delivery_stats(utcnow() - HOUR)
    assert stats.outcomes == {"a": {"delivered": 1}, "b": {"retry": 1}}
    assert stats.by_state == {"delivered": 1, "retrying": 1}
    [latency] = stats.latencies
    assert 29 < latency < 120 and stats.durations_ms == [120]
    assert stats.oldest_due_at is not None


async def test_sqlite_a_version_4_file_is_indexed_for_search(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    conn = schema.connect(path, busy_timeout=1)
    for statements in schema.MIGRATIONS[:4]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    conn.execute(
        "INSERT INTO events (id, request_id, route, fal_status, received_at, headers, body,"
        " files) VALUES (1, 'old', 'r', 'OK', 0, '{}', ?, '[]')",
        (body("old", {"prompt": "lighthouse"}),),
    )
    conn.close()
    s = SQLiteStore(path)
    await s.open()
    try:
        assert await ids(s, q="lighthouse") == ["old"]
    finally:
        await s.close()
    with closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION


def fts_hits(path: Path, word: str) -> list[int]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT rowid FROM events_fts WHERE events_fts MATCH ?", (word,))
        return [r[0] for r in rows]


async def test_sqlite_indexes_for_search_after_the_acknowledging_commit(tmp_path: Path) -> None:
    """Search indexing is not part of the transaction that acknowledges fal: the writer
    indexes on its own afterwards, a search catches up first, and an index left behind by
    a crash is caught up when the store opens."""
    path = tmp_path / "events.db"
    s = SQLiteStore(path)
    await s.open()
    try:
        first = made(body=body("req-1", {"prompt": "a red kite"}), request_id="req-1")
        assert await s.accept(first)

        async def indexed() -> bool:
            return fts_hits(path, "kite") == [1]

        await wait_until(indexed, timeout=10, what="the writer to index on its own")
        second = made(body=body("req-2", {"prompt": "a green kite"}), request_id="req-2")
        assert await s.accept(second)
        assert sorted(await ids(s, q="kite")) == ["req-1", "req-2"]  # at once, whatever the writer
    finally:
        await s.close()
    with closing(sqlite3.connect(path)) as conn:  # as a crash between commit and index leaves it
        conn.execute("INSERT INTO events_fts (events_fts) VALUES ('delete-all')")
        conn.execute("UPDATE search_index SET indexed_to = 0")
        conn.commit()
    s = SQLiteStore(path)
    await s.open()
    try:
        await wait_until(lambda: asyncio.sleep(0, sorted(fts_hits(path, "kite")) == [1, 2]),
                         timeout=10, what="the index caught up on open")  # fmt: skip
    finally:
        await s.close()


async def test_changes_move_on_past_a_busy_window(store: Store, monkeypatch: Any) -> None:
    from falhook.store import postgres_reads, sqlite_reads

    for module in (sqlite_reads, postgres_reads):
        monkeypatch.setattr(module, "LIMIT", 5)  # rows read per look
    _, mark = await store.changes(None)
    events = [made(received_at=utcnow()) for _ in range(12)]
    for e in events:
        await store.accept(e)
    await lease_all(store)  # 24 deliveries change state within a moment
    found: list[Change] = []
    for _ in range(100):
        got, mark = await store.changes(mark)
        found += got
        if len(found) >= 36:
            break
    assert sorted(c.request_id for c in found if c.kind == "accepted") == sorted(
        e.request_id for e in events
    )
    moved = {(c.request_id, c.sink) for c in found if c.state == "delivering"}
    assert len(moved) == 24 and len(found) == 36


async def finish_as(store: Store, rid: str, outcomes: dict[str, str]) -> None:
    """One attempt of each named delivery of the event, with that outcome (due again at
    once after a retry)."""
    [job] = await lease_all(store, request_id=rid)
    for d in job.deliveries:
        if d.sink in outcomes:
            again = utcnow() if outcomes[d.sink] == "retry" else None
            result = Finish(rid, d.sink, d.token, outcomes[d.sink], "boom", again)  # type: ignore[arg-type]
            assert await store.finish(result)
        else:
            await store.release(rid, d.sink, d.token)


@pytest.mark.parametrize("few_buckets", [0, 1000], ids=["scans", "lookups"])
async def test_trends_put_a_seeded_history_into_its_buckets(
    store: Store, few_buckets: int, monkeypatch: Any
) -> None:
    """A day's history in eight 15-minute buckets: arrivals, outcomes, latency percentiles
    and the backlog at each bucket's end, rebuilt from the attempt log (a replay included).
    PostgreSQL reads a whole day with scans and a few buckets with lookups: both ways."""
    monkeypatch.setattr(trend_queries, "FEW_BUCKETS", few_buckets)
    window = window_ending(utcnow(), step=900, buckets=8)

    def at(bucket: int, minute: float = 7.5) -> datetime:
        return window.since + timedelta(seconds=900 * bucket + 60 * minute)

    a = made(request_id="trend-a", received_at=at(1))
    b = made(request_id="trend-b", received_at=at(2))
    c = made(request_id="trend-c", received_at=at(5))
    d = made(request_id="trend-d", received_at=at(-3))  # before the window
    alert = made(request_id="trend-alert", received_at=at(3), source="alert", sinks=())
    for e in (a, b, c, d, alert):
        assert await store.accept(e)
    await finish_as(store, "trend-a", {"a": "delivered", "b": "retry"})
    await finish_as(store, "trend-a", {"b": "delivered"})
    await retime(store, "trend-a", "a", [at(2, 1)])
    await retime(store, "trend-a", "b", [at(2, 2), at(3, 4)])
    await finish_as(store, "trend-b", {"a": "dead", "b": "delivered"})
    await retime(store, "trend-b", "a", [at(4)])
    await retime(store, "trend-b", "b", [at(4, 12)])
    await finish_as(store, "trend-c", {"b": "delivered"})  # a: never tried, still pending
    await retime(store, "trend-c", "b", [at(5, 9)])
    await finish_as(store, "trend-d", {"a": "delivered", "b": "delivered"})
    await retime(store, "trend-d", "a", [at(-2)])
    await retime(store, "trend-d", "b", [at(-2)])
    assert await store.replay("trend-d", "a") == 1  # replayed, not tried since
    await retime(store, "trend-d", "a", [at(-2)], updated_at=at(6))

    trends = await store.delivery_trends(window)
    assert trends.window == window
    assert trends.received == [0, 1, 1, 0, 0, 1, 0, 0]  # webhooks only, not the alert
    assert trends.outcomes["delivered"] == [0, 0, 1, 1, 1, 1, 0, 0]
    assert trends.outcomes["retry"] == [0, 0, 1, 0, 0, 0, 0, 0]
    assert trends.outcomes["dead"] == [0, 0, 0, 0, 1, 0, 0, 0]
    assert trends.outcomes["skipped"] == trends.outcomes["expired"] == [0] * 8
    assert trends.backlog == [0, 2, 3, 2, 0, 1, 2, 2]
    minutes = 60.0
    assert set(trends.latency) == {"a", "b"}
    # received at minute 7.5 of its bucket, delivered at minute m of a later one
    assert trends.latency["a"]["p50"] == [None, None, 8.5 * minutes] + [None] * 5
    b_p99 = trends.latency["b"]["p99"]
    assert b_p99[3] == pytest.approx(26.5 * minutes)  # trend-a: bucket 1 → bucket 3, 4 min
    assert b_p99[4] == pytest.approx(34.5 * minutes)  # trend-b: bucket 2 → bucket 4, 12 min
    assert b_p99[5] == pytest.approx(1.5 * minutes)  # trend-c: within bucket 5
    assert [i for i, v in enumerate(b_p99) if v is not None] == [3, 4, 5]


async def test_trend_percentiles_are_nearest_ranks_in_each_bucket(store: Store) -> None:
    window = window_ending(utcnow(), step=900, buckets=2)
    start = window.since + timedelta(seconds=60)
    for n in range(10):  # latencies 1..10 s, all delivered in the first bucket
        e = made(request_id=f"rank-{n}", received_at=start, sinks=("a",))
        await store.accept(e)
        await finish_as(store, e.request_id, {"a": "delivered"})
        await retime(store, e.request_id, "a", [start + timedelta(seconds=n + 1)])
    trends = await store.delivery_trends(window)
    series = trends.latency["a"]
    assert (series["p50"][0], series["p90"][0], series["p99"][0]) == (5.0, 9.0, 10.0)
    assert series["p50"][1] is None
    assert trends.backlog == [0, 0] and trends.received == [10, 0]


class CountingReader:
    """The store, noting the size of each trends read (how much of the day was read)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads: list[int] = []

    async def delivery_trends(self, window: TrendWindow) -> DeliveryTrends:
        self.reads.append(window.buckets)
        return await self.store.delivery_trends(window)


async def test_the_consoles_day_trends_read_the_newest_buckets_and_agree_with_whole_reads(
    store: Store,
) -> None:
    start = utcnow()
    clock, ticks = [start], [0.0]
    reader = CountingReader(store)
    changes = [0]  # what the live feed has published
    day = DayTrends(
        reader,  # type: ignore[arg-type]
        clock=lambda: clock[0],
        monotonic=lambda: ticks[0],
        changes_seen=lambda: changes[0],
    )
    for hours in (20, 9, 3):
        e = made(received_at=start - timedelta(hours=hours), sinks=("a",))
        await store.accept(e)
        await finish_as(store, e.request_id, {"a": "delivered"})
        await retime(store, e.request_id, "a", [start - timedelta(hours=hours, minutes=-2)])

    async def look(after: float = 2.0) -> DeliveryTrends:
        ticks[0] += after
        return await day.get()

    first = await look()
    assert first == await store.delivery_trends(window_ending(clock[0]))
    fresh = made(received_at=utcnow() - timedelta(seconds=5), sinks=("a", "b"))
    await store.accept(fresh)
    await finish_as(store, fresh.request_id, {"a": "delivered", "b": "retry"})
    assert await look(0.5) == first  # read a moment ago: every tab shares it
    changes[0] += 1  # ... until the live feed sees a change: a tab refreshing for it reads
    second = await look(0.1)
    assert second == await store.delivery_trends(window_ending(clock[0]))
    assert sum(second.received) == 4 and second.backlog[-1] == 1
    clock[0] += timedelta(minutes=15)  # a bucket later: the day moves on by one
    third = await look()
    assert third == await store.delivery_trends(window_ending(clock[0]))
    await look(DayTrends.FULL_EVERY + 1)  # now and then the whole day again (replays)
    clock[0] += timedelta(hours=25)  # too far on to move: read whole again
    assert await look() == await store.delivery_trends(window_ending(clock[0]))
    assert reader.reads == [96, 2, 3, 96, 96]
