"""The PostgreSQL store's console reads: filtered and searched listings with cursors, changes
since a mark, dead deliveries grouped, delivery statistics.

Listings walk `events_by_time` (received_at, request_id), newest first; a cursor is that
pair. Search goes through `events.search`, a tsvector of the request id and the body
(payload, fal's error) set by a trigger at insert and indexed with GIN (core PostgreSQL, no
extension); delivery errors, which change, are matched with ILIKE on the deliveries that
have one.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from falhook.store import dialect, trend_queries
from falhook.store.changes import ACCEPTED, LIMIT, OVERLAP, delivery_changes
from falhook.store.dialect import POSTGRES, Params
from falhook.store.models import (
    Change,
    ChangeMark,
    DeadGroup,
    DeliveryStats,
    DeliveryTrends,
    EventQuery,
    TrendWindow,
)
from falhook.store.paging import (
    InvalidCursor,
    decode_cursor,
    encode_cursor,
    like_pattern,
    search_terms,
)
from falhook.store.postgres_schema import as_utc
from falhook.store.trends import assemble


def query_where(query: EventQuery, p: Params, errors: list[str] | None = None) -> list[str]:
    """The conditions of every filter; `errors`: the request ids whose deliveries' errors
    match the search (read first, by _error_matches)."""
    return dialect.query_where(POSTGRES, query, p, lambda q, p: _search(q, p, errors or []))


ERROR_MATCHES_MAX = 10000  # events found by their deliveries' errors, at most


def _search(q: str, p: Params, errors: list[str]) -> str:
    """One condition on the event's own row, so the planner picks by the words' frequency:
    for a common word, walking the newest events stops after a page of matches; for a rare
    one, the GIN and primary-key indexes find the few rows."""
    ids = p([q.strip(), *errors])
    terms = search_terms(q)
    if not terms:
        return f"e.request_id = ANY({ids}::text[])"
    # The words as PostgreSQL's parser splits them (hyphenated ids whole), or as a phrase
    # whose last word may be a beginning ("harbo" finds "harbour").
    prefix = " <-> ".join(terms) + ":*"
    words = f"phraseto_tsquery('simple', {p(q)}) || to_tsquery('simple', {p(prefix)})"
    return f"(e.search @@ ({words}) OR e.request_id = ANY({ids}::text[]))"


async def _error_matches(c: asyncpg.Connection, query: EventQuery) -> list[str]:
    """The events one of whose deliveries' last error contains the search text (few rows:
    only deliveries with an error are read, through a partial index)."""
    if not query.q:
        return []
    rows = await c.fetch(
        "SELECT DISTINCT request_id FROM deliveries WHERE last_error IS NOT NULL"
        " AND last_error ILIKE $1 LIMIT $2",
        like_pattern(query.q),
        ERROR_MATCHES_MAX,
    )
    return [r[0] for r in rows]


async def _fetch(c: asyncpg.Connection, sql: str, values: list[Any], searched: bool) -> Any:
    """Run a listing; a search is planned for its own words every time (a cached generic
    plan cannot tell a common word from a rare one)."""
    if not searched:
        return await c.fetch(sql, *values)
    async with c.transaction():
        await c.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        return await c.fetch(sql, *values)


async def find_ids(
    c: asyncpg.Connection, query: EventQuery, limit: int, cursor: str | None
) -> tuple[list[str], str | None]:
    p = POSTGRES.params()
    where = query_where(query, p, await _error_matches(c, query))
    if cursor is not None:
        at, rid = decode_cursor(cursor, 2)
        try:
            after = datetime.fromisoformat(at)
        except (TypeError, ValueError):
            raise InvalidCursor("malformed cursor") from None
        where.append(f"(e.received_at, e.request_id) < ({p(after)}, {p(str(rid))})")
    sql = (
        f"SELECT e.request_id, e.received_at FROM events e WHERE {' AND '.join(where) or 'true'}"
        f" ORDER BY e.received_at DESC, e.request_id DESC LIMIT {p(limit + 1)}"
    )
    rows = await _fetch(c, sql, p.values, bool(query.q))
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    next_cursor = (
        encode_cursor([last["received_at"].isoformat(), last["request_id"]])
        if more and last is not None
        else None
    )
    return [r["request_id"] for r in rows], next_cursor


async def count_events(c: asyncpg.Connection, query: EventQuery) -> int:
    p = POSTGRES.params()
    where = query_where(query, p, await _error_matches(c, query))
    sql = f"SELECT count(*) FROM events e WHERE {' AND '.join(where) or 'true'}"
    [row] = await _fetch(c, sql, p.values, bool(query.q))
    count: int = row[0]
    return count


# Deliveries changed and events received, each read twice: the overlap before the mark
# (late commits; newest first, bounded) and what is new since it, by keyset. Deliveries by
# the database's clock; events by their receivers' (an event delivered within one look is
# still reported as accepted).
_DELIVERIES = """
SELECT d.request_id, d.sink, d.state, extract(epoch FROM d.updated_at)::float8 AS at,
    d.updated_at AS t
FROM deliveries d
"""
_DELIVERIES_LATE = (
    _DELIVERIES
    + """
WHERE d.updated_at > $1 AND d.updated_at <= $2 ORDER BY d.updated_at DESC LIMIT $3
"""
)
_DELIVERIES_NEW = (
    _DELIVERIES
    + """
WHERE (d.updated_at, d.request_id, d.sink) > ($1, $2, $3)
ORDER BY d.updated_at, d.request_id, d.sink LIMIT $4
"""
)
_EVENTS = """
SELECT request_id, route, extract(epoch FROM received_at)::float8 AS at, received_at AS t
FROM events
"""
_EVENTS_LATE = (
    _EVENTS
    + """
WHERE received_at > $1 AND received_at <= $2 ORDER BY received_at DESC LIMIT $3
"""
)
_EVENTS_NEW = (
    _EVENTS
    + """
WHERE (received_at, request_id) > ($1, $2) ORDER BY received_at, request_id LIMIT $3
"""
)
_WINDOW = timedelta(seconds=OVERLAP)


def _row(r: Any) -> tuple[Any, ...]:
    return (r["request_id"], r["sink"], r["state"], r["at"], (r["t"], r["request_id"], r["sink"]))


async def _accepted(
    c: asyncpg.Connection, mark: ChangeMark
) -> tuple[list[Change], frozenset[Any], tuple[Any, Any]]:
    """Events received since the mark: their changes, the accept keys still in the
    window, and the events' new keyset position."""
    since, after_id = mark.event_after
    late = await c.fetch(_EVENTS_LATE, since - _WINDOW, since, LIMIT)
    new = await c.fetch(_EVENTS_NEW, since, after_id, LIMIT)
    seen = {k for k in mark.seen if k[2] == ACCEPTED}
    found = []
    for r in [*late[::-1], *new]:
        key = (r["request_id"], "", ACCEPTED, r["at"])
        if key not in seen:
            seen.add(key)
            found.append(Change(r["request_id"], "accepted", route=r["route"]))
    position = (new[-1]["t"], new[-1]["request_id"]) if new else mark.event_after
    newest = position[0].timestamp()
    return found, frozenset(k for k in seen if k[3] > newest - OVERLAP), position


async def changes(
    c: asyncpg.Connection, mark: ChangeMark | None
) -> tuple[list[Change], ChangeMark]:
    if mark is None:
        now = await c.fetchval("SELECT now()")
        # What happened within the overlap before now is not news: seen, not reported.
        first = ChangeMark(None, now.timestamp(), after=(now, None, None), event_after=(now, None))
        return [], (await changes(c, first))[1]
    accepted, accept_keys, event_after = await _accepted(c, mark)
    since = mark.after[0]
    late = [_row(r) for r in await c.fetch(_DELIVERIES_LATE, since - _WINDOW, since, LIMIT)]
    new = [_row(r) for r in await c.fetch(_DELIVERIES_NEW, *mark.after, LIMIT)]
    others = replace(mark, seen=frozenset(k for k in mark.seen if k[2] != ACCEPTED))
    moved, moved_mark = delivery_changes(others, late[::-1], new, {a.request_id for a in accepted})
    seen = frozenset(k for k in moved_mark.seen if k[2] != ACCEPTED) | accept_keys
    return [*accepted, *moved], replace(moved_mark, seen=seen, event_after=event_after)


async def dead_groups(c: asyncpg.Connection, limit: int) -> list[DeadGroup]:
    rows = await c.fetch(
        "SELECT sink, last_error, count(*) AS n, max(updated_at) AS latest,"
        " (array_agg(request_id ORDER BY updated_at DESC))[1:5] AS ids"
        " FROM deliveries WHERE state = 'dead' GROUP BY sink, last_error"
        " ORDER BY n DESC, latest DESC LIMIT $1",
        limit,
    )
    return [
        DeadGroup(r["sink"], r["last_error"], r["n"], r["latest"], tuple(r["ids"])) for r in rows
    ]


SAMPLE = 20000  # latencies read for the percentiles, at most


async def delivery_stats(c: asyncpg.Connection, since: datetime) -> DeliveryStats:
    by_state = {
        r[0]: r[1] for r in await c.fetch("SELECT state, count(*) FROM deliveries GROUP BY state")
    }
    oldest = await c.fetchval(
        "SELECT min(due_at) FROM deliveries WHERE due_at IS NOT NULL"
        " AND state IN ('pending', 'retrying')"
    )
    outcomes: dict[str, dict[str, int]] = {}
    for r in await c.fetch(
        "SELECT sink, outcome, count(*) FROM attempts WHERE at >= $1 GROUP BY sink, outcome",
        as_utc(since),
    ):
        outcomes.setdefault(r[0], {})[r[1]] = r[2]
    rows = await c.fetch(
        "SELECT extract(epoch FROM a.at - e.received_at)::float8 AS latency, a.duration_ms"
        " FROM attempts a JOIN events e ON e.request_id = a.request_id"
        " WHERE a.at >= $1 AND a.outcome = 'delivered' ORDER BY a.at DESC LIMIT $2",
        as_utc(since),
        SAMPLE,
    )
    return DeliveryStats(
        by_state=by_state,
        oldest_due_at=oldest,
        outcomes=outcomes,
        latencies=[max(0.0, r["latency"]) for r in rows],
        durations_ms=[r["duration_ms"] for r in rows if r["duration_ms"] is not None],
    )


# --- trends (store/trend_queries.py: the statements both engines run) ---------------------


async def delivery_trends(c: asyncpg.Connection, window: TrendWindow) -> DeliveryTrends:
    """In one snapshot (the caller's repeatable-read transaction). JIT is off: compiling
    these few aggregates costs more than running them."""
    await c.execute("SET LOCAL jit = off")

    async def rows(statement: tuple[str, list[Any]]) -> list[tuple[Any, ...]]:
        sql, values = statement
        return [tuple(r) for r in await c.fetch(sql, *values)]

    return assemble(
        window,
        received=await rows(trend_queries.received(POSTGRES, window)),
        outcomes=await rows(trend_queries.outcomes(POSTGRES, window)),
        latencies=await rows(trend_queries.latencies(POSTGRES, window)),
        backlog_now=await c.fetchval(trend_queries.backlog_now()),
        backlog_changes=await rows(trend_queries.backlog_changes(POSTGRES, window)),
    )
