"""SQLite schema, its migrations, and the queries that turn rows into views.

Kept apart from sqlite.py (threads and transactions) so the SQL reads on its own. Times are
unix epoch REAL seconds in the file and UTC-aware datetimes in views.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from falhook.store.dialect import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    SQLITE,
    SUBMISSION_COLUMNS,
    attempt_view,
    delivery_view,
    event_view,
    submission_view,
)
from falhook.store.models import AttemptView, DeliveryView, EventView, SubmissionView

encode = msgspec.json.encode
decode = msgspec.json.decode

# Ordered: a file at user_version N gets MIGRATIONS[N:], each in one transaction. Append only;
# never edit one that has shipped.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE events (
            request_id TEXT PRIMARY KEY,
            route TEXT NOT NULL,
            fal_status TEXT NOT NULL,
            error TEXT,
            payload_error TEXT,
            gateway_request_id TEXT,
            received_at REAL NOT NULL,
            headers BLOB NOT NULL,
            body BLOB NOT NULL,
            files BLOB NOT NULL,
            source TEXT NOT NULL DEFAULT 'webhook'
        )""",
        "CREATE INDEX events_by_time ON events (received_at DESC, request_id DESC)",
        """CREATE TABLE deliveries (
            request_id TEXT NOT NULL REFERENCES events (request_id),
            sink TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            last_error TEXT,
            lease_token TEXT,
            lease_owner TEXT,
            lease_expires_at REAL,
            output BLOB,
            updated_at REAL NOT NULL,
            PRIMARY KEY (request_id, sink)
        )""",
        "CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at)",
        """CREATE TABLE submissions (
            request_id TEXT PRIMARY KEY,
            endpoint TEXT NOT NULL,
            route TEXT NOT NULL,
            input BLOB NOT NULL,
            status_url TEXT,
            response_url TEXT,
            cancel_url TEXT,
            submitted_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            detail TEXT,
            checked_at REAL
        )""",
        "CREATE INDEX submissions_by_time ON submissions (submitted_at DESC)",
    ),
    (
        # `events list --route` without a scan of every event.
        "CREATE INDEX events_by_route ON events (route, received_at DESC, request_id DESC)",
        # extend() finds held deliveries by token; partial, so accept (NULL tokens) pays nothing.
        "CREATE INDEX deliveries_by_token ON deliveries (lease_token)"
        " WHERE lease_token IS NOT NULL",
    ),
    (
        # Deliveries keyed by their event's integer id, not its request_id: a random UUID
        # made every accept write one more random page of the deliveries key. The id (an
        # INTEGER PRIMARY KEY, which VACUUM cannot renumber) is also the listing order, newest
        # first, so the table needs no index on time, and the route index holds the route
        # alone (the id is in every index). docs/performance.md has the figures.
        """CREATE TABLE events_v3 (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL UNIQUE,
            route TEXT NOT NULL,
            fal_status TEXT NOT NULL,
            error TEXT,
            payload_error TEXT,
            gateway_request_id TEXT,
            received_at REAL NOT NULL,
            headers BLOB NOT NULL,
            body BLOB NOT NULL,
            files BLOB NOT NULL,
            source TEXT NOT NULL DEFAULT 'webhook'
        )""",
        "INSERT INTO events_v3 (id, request_id, route, fal_status, error, payload_error,"
        " gateway_request_id, received_at, headers, body, files, source)"
        " SELECT rowid, request_id, route, fal_status, error, payload_error,"
        " gateway_request_id, received_at, headers, body, files, source FROM events",
        """CREATE TABLE deliveries_v3 (
            event_id INTEGER NOT NULL REFERENCES events_v3 (id),
            sink TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            last_error TEXT,
            lease_token TEXT,
            lease_owner TEXT,
            lease_expires_at REAL,
            output BLOB,
            updated_at REAL NOT NULL,
            PRIMARY KEY (event_id, sink)
        )""",
        "INSERT INTO deliveries_v3 (event_id, sink, state, attempts, next_attempt_at,"
        " last_error, lease_token, lease_owner, lease_expires_at, output, updated_at)"
        " SELECT e.id, d.sink, d.state, d.attempts, d.next_attempt_at, d.last_error,"
        " d.lease_token, d.lease_owner, d.lease_expires_at, d.output, d.updated_at"
        " FROM deliveries d JOIN events_v3 e ON e.request_id = d.request_id ORDER BY d.rowid",
        "DROP TABLE deliveries",
        "DROP TABLE events",
        # Renaming also points deliveries_v3's foreign key at the new name.
        "ALTER TABLE events_v3 RENAME TO events",
        "ALTER TABLE deliveries_v3 RENAME TO deliveries",
        "CREATE INDEX events_by_route ON events (route)",
        "CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at)",
        "CREATE INDEX deliveries_by_token ON deliveries (lease_token)"
        " WHERE lease_token IS NOT NULL",
    ),
    (
        # Every attempt of every delivery (and the decisions made without one: skipped by a
        # filter, a lease that expired): the console's history. Pruned by age.
        """CREATE TABLE attempts (
            event_id INTEGER NOT NULL REFERENCES events (id),
            sink TEXT NOT NULL,
            at REAL NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT,
            duration_ms INTEGER
        )""",
        "CREATE INDEX attempts_by_delivery ON attempts (event_id, sink, at)",
        "CREATE INDEX attempts_by_time ON attempts (at)",
        # The W3C traceparent of the span that received the event (tracing, when on).
        "ALTER TABLE events ADD COLUMN trace_context TEXT",
    ),
    (
        # The console's search: each event's request id and body (payload, fal's error),
        # indexed once at insert. Contentless: the text stays in `events` only. The first
        # 64 KiB of a body are indexed (a data: URI holds nothing to search for).
        "CREATE VIRTUAL TABLE events_fts USING fts5(request_id, body, content='')",
        "INSERT INTO events_fts (rowid, request_id, body)"
        " SELECT id, request_id, substr(CAST(body AS TEXT), 1, 65536) FROM events",
        """CREATE TRIGGER events_fts_insert AFTER INSERT ON events BEGIN
            INSERT INTO events_fts (rowid, request_id, body)
            VALUES (new.id, new.request_id, substr(CAST(new.body AS TEXT), 1, 65536));
        END""",
        # The console's live view reads deliveries changed since a time.
        "CREATE INDEX deliveries_by_change ON deliveries (updated_at)",
        # Searching delivery errors reads only the deliveries that have one.
        "CREATE INDEX deliveries_with_error ON deliveries (event_id) WHERE last_error IS NOT NULL",
    ),
    (
        # Search is indexed after the commit that acknowledges fal, not inside it: the writer
        # catches up in transactions of its own (index_for_search), up to `indexed_to`, and a
        # search catches up before it reads (docs/performance.md: intake).
        "DROP TRIGGER events_fts_insert",
        "CREATE TABLE search_index (indexed_to INTEGER NOT NULL)",
        "INSERT INTO search_index (indexed_to) SELECT COALESCE(MAX(id), 0) FROM events",
    ),
    (
        # The user's own labels for a submitted job (`falhook submit --meta`), never sent to
        # fal: a JSON object of strings, as text (SQLite's JSON functions read text).
        "ALTER TABLE submissions ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'",
    ),
    (
        # The console's trends count the day's arrivals: a range of this index, never a scan
        # of every stored event (ids are in commit order, arrival times nearly so: appends).
        "CREATE INDEX events_by_arrival ON events (received_at)",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, *, busy_timeout: float, read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN ourselves), WAL, fsync on commit."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
            return conn
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: the WAL is fsynced at every commit, so an accepted event survives kill -9 and
        # power loss (NORMAL would only survive the former).
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Fewer, larger checkpoints: intake does not pay for one every 1000 pages.
        conn.execute("PRAGMA wal_autocheckpoint = 8192")
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations this file lacks; returns the version it is now at. BEGIN
    IMMEDIATE makes two processes opening a new file at once take turns."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {version} is newer than this falhook "
                f"({SCHEMA_VERSION}): upgrade falhook"
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    return SCHEMA_VERSION


# --- search ------------------------------------------------------------------------------------


def index_for_search(conn: sqlite3.Connection, limit: int | None = None) -> int:
    """Index the events stored since the last time (up to `limit` of them) for search, in
    the caller's transaction; how many were indexed. The mark moves in the same
    transaction, so a crash loses nothing and indexes nothing twice."""
    (done,) = conn.execute("SELECT indexed_to FROM search_index").fetchone()
    (last, count) = conn.execute(
        "SELECT MAX(id), COUNT(*) FROM (SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?)",
        (done, -1 if limit is None else limit),
    ).fetchone()
    if not count:
        return 0
    conn.execute(
        "INSERT INTO events_fts (rowid, request_id, body)"
        " SELECT id, request_id, substr(CAST(body AS TEXT), 1, 65536) FROM events"
        " WHERE id > ? AND id <= ? ORDER BY id",
        (done, last),
    )
    conn.execute("UPDATE search_index SET indexed_to = ?", (last,))
    return int(count)


# --- time --------------------------------------------------------------------------------------


def to_dt(value: float | None) -> datetime | None:
    return SQLITE.time_out(value)


def to_epoch(value: datetime) -> float:
    epoch: float = SQLITE.time_in(value)
    return epoch


# --- event state (the contract's rule, from falhook.store.states) ------------------------


def state_where(state: str) -> tuple[str, list[Any]]:
    """A WHERE clause on events `e` for an event state, or for events holding a delivery in a
    delivery state ("delivering"); an unknown state matches nothing."""
    p = SQLITE.params()
    return SQLITE.state_where(state, p), p.values


def list_events_sql(state: str | None, route: str | None) -> tuple[str, list[Any]]:
    """The request_ids of events in a state and/or on a route, newest stored first (ids grow
    in commit order: a clock stepping back cannot reorder them); the limit is the last
    parameter, left to the caller."""
    where, params = ["1"], []
    if route is not None:
        where.append("e.route = ?")
        params.append(route)
    if state is not None:
        clause, extra = state_where(state)
        where.append(clause)
        params.extend(extra)
    sql = (
        f"SELECT e.request_id FROM events e WHERE {' AND '.join(where)} ORDER BY e.id DESC LIMIT ?"
    )
    return sql, params


# --- rows to views -----------------------------------------------------------------------------


def load_submissions(
    c: sqlite3.Connection,
    where: str,
    params: list[Any],
    limit: int,
    *,
    oldest_first: bool = False,
) -> list[SubmissionView]:
    order = "ASC" if oldest_first else "DESC"
    rows = c.execute(
        f"SELECT {SUBMISSION_COLUMNS} FROM submissions s"
        " LEFT JOIN events e ON e.request_id = s.request_id"
        f" WHERE {where} ORDER BY s.submitted_at {order}, s.request_id {order} LIMIT ?",
        [*params, limit],
    ).fetchall()
    return [submission_view(SQLITE, r) for r in rows]


_CHUNK = 500  # well under SQLite's limit on bound parameters


def load_events(c: sqlite3.Connection, ids: list[str], *, history: bool = True) -> list[EventView]:
    """Events (in the order of ids) with their deliveries and submission; each delivery's
    history of attempts too unless `history` is false (the worker never reads it)."""
    views: list[EventView] = []
    for start in range(0, len(ids), _CHUNK):
        views.extend(_load_chunk(c, ids[start : start + _CHUNK], history))
    return views


def _load_chunk(c: sqlite3.Connection, ids: list[str], with_history: bool) -> list[EventView]:
    marks = ",".join("?" * len(ids))
    history: dict[tuple[str, str], list[AttemptView]] = {}
    attempts_sql = (
        f"SELECT e.request_id, a.sink, a.{ATTEMPT_COLUMNS.replace(', ', ', a.')}"
        f" FROM attempts a JOIN events e ON e.id = a.event_id WHERE e.request_id IN ({marks})"
        " ORDER BY a.event_id, a.sink, a.at, a.rowid"
    )
    for row in c.execute(attempts_sql, ids) if with_history else ():
        history.setdefault((row[0], row[1]), []).append(attempt_view(SQLITE, row[2:]))
    deliveries: dict[str, dict[str, DeliveryView]] = {rid: {} for rid in ids}
    for row in c.execute(
        f"SELECT e.request_id, d.{DELIVERY_COLUMNS.replace(', ', ', d.')} FROM deliveries d"
        f" JOIN events e ON e.id = d.event_id WHERE e.request_id IN ({marks})"
        " ORDER BY d.event_id, d.rowid",
        ids,
    ):
        rid, sink = row[0], row[1]
        deliveries[rid][sink] = delivery_view(SQLITE, row[1:], history.get((rid, sink), ()))
    subs = {
        s.request_id: s
        for s in load_submissions(c, f"s.request_id IN ({marks})", list(ids), len(ids))
    }
    events = {
        row[0]: event_view(SQLITE, row, deliveries[row[0]], subs.get(row[0]))
        for row in c.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE request_id IN ({marks})", ids
        )
    }
    return [events[rid] for rid in ids if rid in events]
