"""The SQLite store's console reads: filtered and searched listings with cursors, changes
since a mark, dead deliveries grouped, delivery statistics. Each function runs on one read
connection inside one snapshot (sqlite.py's readers).

Listings walk events by id, newest first (ids grow in commit order). Search goes through
`events_fts`, a contentless FTS5 index of each event's request id and body (the payload and
fal's error), filled after each accepting commit (sqlite.py); delivery errors, which change,
are matched with LIKE on the few deliveries that have one.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from typing import Any

from falhook.store import dialect, trend_queries
from falhook.store.changes import LIMIT, OVERLAP, delivery_changes
from falhook.store.dialect import SQLITE, Params
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
    fts5_query,
    like_pattern,
)
from falhook.store.sqlite_schema import to_dt
from falhook.store.trends import assemble


def query_where(query: EventQuery) -> tuple[list[str], list[Any]]:
    """WHERE conditions on events `e` for every filter of the query, and their values."""
    p = SQLITE.params()
    return dialect.query_where(SQLITE, query, p, _search), p.values


def _search(q: str, p: Params) -> str:
    parts = [f"SELECT id FROM events WHERE request_id = {p(q.strip())}"]
    match = fts5_query(q)
    if match is not None:
        parts.append(f"SELECT rowid FROM events_fts WHERE events_fts MATCH {p(match)}")
    parts.append(
        "SELECT event_id FROM deliveries WHERE last_error IS NOT NULL"
        f" AND last_error LIKE {p(like_pattern(q))} ESCAPE '\\'"
    )
    return f"e.id IN ({' UNION '.join(parts)})"


def find_ids(
    c: sqlite3.Connection, query: EventQuery, limit: int, cursor: str | None
) -> tuple[list[str], str | None]:
    where, params = query_where(query)
    if cursor is not None:
        [after] = decode_cursor(cursor, 1)
        if not isinstance(after, int):
            raise InvalidCursor("malformed cursor")
        where.append("e.id < ?")
        params.append(after)
    sql = (
        f"SELECT e.id, e.request_id FROM events e WHERE {' AND '.join(where) or '1'}"
        " ORDER BY e.id DESC LIMIT ?"
    )
    rows = c.execute(sql, [*params, limit + 1]).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor([rows[-1][0]]) if more and rows else None
    return [r[1] for r in rows], next_cursor


def count_events(c: sqlite3.Connection, query: EventQuery) -> int:
    where, params = query_where(query)
    sql = f"SELECT count(*) FROM events e WHERE {' AND '.join(where) or '1'}"
    count: int = c.execute(sql, params).fetchone()[0]
    return count


_CHANGED = (
    "SELECT e.request_id, d.sink, d.state, d.updated_at, d.rowid FROM deliveries d"
    " JOIN events e ON e.id = d.event_id"
)
_LATE = _CHANGED + (
    " WHERE d.updated_at > ? AND d.updated_at <= ? ORDER BY d.updated_at DESC LIMIT ?"
)
_NEW = _CHANGED + (" WHERE (d.updated_at, d.rowid) > (?, ?) ORDER BY d.updated_at, d.rowid LIMIT ?")
_LAST_ROWID = 2**63 - 1  # a first mark: nothing stamped at its instant is new


def changes(c: sqlite3.Connection, mark: ChangeMark | None) -> tuple[list[Change], ChangeMark]:
    if mark is None:
        newest = c.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        # What happened within the overlap before now is not news: seen, not reported.
        first = ChangeMark(event_key=newest, at=time.time(), after=_LAST_ROWID)
        return [], changes(c, first)[1]
    fresh = c.execute(
        "SELECT id, request_id, route FROM events WHERE id > ? ORDER BY id LIMIT ?",
        (mark.event_key, LIMIT),
    ).fetchall()
    accepted = [Change(request_id=r[1], kind="accepted", route=r[2]) for r in fresh]
    late = c.execute(_LATE, (mark.at - OVERLAP, mark.at, LIMIT)).fetchall()
    new = c.execute(_NEW, (mark.at, mark.after, LIMIT)).fetchall()
    moved, moved_mark = delivery_changes(mark, late[::-1], new, {r[1] for r in fresh})
    newest = fresh[-1][0] if fresh else mark.event_key
    return [*accepted, *moved], replace(moved_mark, event_key=newest)


def dead_groups(c: sqlite3.Connection, limit: int) -> list[DeadGroup]:
    groups = c.execute(
        "SELECT sink, last_error, count(*), max(updated_at) FROM deliveries"
        " WHERE state = 'dead' GROUP BY sink, last_error ORDER BY count(*) DESC, 4 DESC"
        " LIMIT ?",
        (limit,),
    ).fetchall()
    found = []
    for sink, error, count, latest in groups:
        ids = c.execute(
            "SELECT e.request_id FROM deliveries d JOIN events e ON e.id = d.event_id"
            " WHERE d.state = 'dead' AND d.sink = ? AND d.last_error IS ?"
            " ORDER BY d.event_id DESC LIMIT 5",
            (sink, error),
        ).fetchall()
        found.append(DeadGroup(sink, error, count, to_dt(latest), tuple(r[0] for r in ids)))
    return found


def dead_count(c: sqlite3.Connection) -> int:
    count: int = c.execute("SELECT count(*) FROM deliveries WHERE state = 'dead'").fetchone()[0]
    return count


SAMPLE = 20000  # latencies read for the percentiles, at most


def delivery_stats(c: sqlite3.Connection, since: float) -> DeliveryStats:
    by_state = dict(c.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())
    oldest = c.execute(
        "SELECT min(t) FROM (SELECT min(next_attempt_at) AS t FROM deliveries"
        " WHERE state = 'pending' UNION ALL SELECT min(next_attempt_at) FROM deliveries"
        " WHERE state = 'retrying')"
    ).fetchone()[0]
    outcomes: dict[str, dict[str, int]] = {}
    for sink, outcome, count in c.execute(
        "SELECT sink, outcome, count(*) FROM attempts WHERE at >= ? GROUP BY sink, outcome",
        (since,),
    ):
        outcomes.setdefault(sink, {})[outcome] = count
    rows = c.execute(
        "SELECT a.at - e.received_at, a.duration_ms FROM attempts a"
        " JOIN events e ON e.id = a.event_id WHERE a.at >= ? AND a.outcome = 'delivered'"
        " ORDER BY a.at DESC LIMIT ?",
        (since, SAMPLE),
    ).fetchall()
    return DeliveryStats(
        by_state=by_state,
        oldest_due_at=to_dt(oldest),
        outcomes=outcomes,
        latencies=[max(0.0, r[0]) for r in rows],
        durations_ms=[r[1] for r in rows if r[1] is not None],
    )


# --- trends (store/trend_queries.py: the statements both engines run) ---------------------


def delivery_trends(c: sqlite3.Connection, window: TrendWindow) -> DeliveryTrends:
    def rows(statement: tuple[str, list[Any]]) -> list[Any]:
        return c.execute(*statement).fetchall()

    return assemble(
        window,
        received=rows(trend_queries.received(SQLITE, window)),
        outcomes=rows(trend_queries.outcomes(SQLITE, window)),
        latencies=rows(trend_queries.latencies(SQLITE, window)),
        backlog_now=c.execute(trend_queries.backlog_now()).fetchone()[0],
        backlog_changes=rows(trend_queries.backlog_changes(SQLITE, window)),
    )
