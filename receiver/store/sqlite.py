"""The SQLite store: the embedded default.

One writer thread owns the connection. Callers queue operations; the thread takes everything
queued, runs it in ONE transaction (a savepoint per operation, so one failure sinks only its
own), commits once and answers every caller: many concurrent webhooks share one fsync
(group commit). WAL with synchronous=FULL: a commit that returned survives kill -9 and power
loss. Several processes may share the file (`falhook serve` and `falhook worker`): BEGIN
IMMEDIATE makes each batch atomic across them, and workers in other processes find new work
by polling.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from receiver.store.base import (
    EVENT_STATES,
    DeliveryView,
    EventView,
    Finish,
    Job,
    LeasedDelivery,
    NewEvent,
    NewSubmission,
    StoreUnavailable,
    SubmissionView,
)

_enc = msgspec.json.encode
_dec = msgspec.json.decode
_BATCH_MAX = 512
COMMIT_DELAY = 0.002  # seconds; only when the previous batch showed concurrency

MIGRATIONS: list[str] = [
    """
    CREATE TABLE events (
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
    );
    CREATE INDEX events_by_time ON events (received_at DESC, request_id DESC);
    CREATE TABLE deliveries (
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
    );
    CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
    CREATE TABLE submissions (
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
    );
    CREATE INDEX submissions_by_time ON submissions (submitted_at DESC);
    """,
]

_EVENT_STATE_SQL = """
    CASE
        WHEN SUM(d.state = 'dead') > 0 THEN 'dead'
        WHEN SUM(d.state = 'retrying') > 0 THEN 'retrying'
        WHEN COUNT(d.sink) > 0 AND SUM(d.state = 'delivered') = COUNT(d.sink) THEN 'delivered'
        ELSE 'pending'
    END
"""
_SUBMISSION_STATE_SQL = """
    CASE
        WHEN e.source = 'poll' THEN 'recovered'
        WHEN e.request_id IS NOT NULL THEN 'completed'
        ELSE s.state
    END
"""


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _epoch(value: datetime) -> float:
    return value.timestamp()


Op = Callable[[sqlite3.Connection], Any]  # or an _Accept


class _Writer(threading.Thread):
    """Owns the connection; runs queued operations in shared transactions."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="falhook-sqlite", daemon=True)
        self.path = path
        self.ops: queue.SimpleQueue[tuple[Op, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self.commits = 0
        self.last_batch = 0
        self.ready = threading.Event()
        self.open_error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = connect(self.path)
            migrate(conn)
        except BaseException as exc:  # reported to open()
            self.open_error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            while True:
                first = self.ops.get()
                if first is None:
                    return
                if self.last_batch > 1:
                    # Under concurrent load, wait a moment so more callers share this commit:
                    # its fixed cost (fsync, WAL frames) is paid once for all of them.
                    time.sleep(COMMIT_DELAY)
                batch = [first]
                while len(batch) < _BATCH_MAX:
                    try:
                        nxt = self.ops.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self.ops.put(None)  # stop after this batch
                        break
                    batch.append(nxt)
                self.last_batch = len(batch)
                self._run_batch(conn, batch)
        finally:
            conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[Op, asyncio.Future[Any]]]
    ) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = [(None, None)] * len(batch)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._answer(batch, [(None, exc)] * len(batch))
            return
        accepts = [i for i, (op, _) in enumerate(batch) if isinstance(op, _Accept)]
        if accepts:
            try:
                fresh = _accept_all(conn, [batch[i][0] for i in accepts])  # type: ignore[misc]
                for i, f in zip(accepts, fresh, strict=True):
                    outcomes[i] = (f, None)
            except sqlite3.Error as exc:
                conn.rollback()
                self._answer(batch, [(None, exc)] * len(batch))
                return
        for index, (op, _) in enumerate(batch):
            if isinstance(op, _Accept):
                continue
            conn.execute("SAVEPOINT op")
            try:
                result = op(conn)
                conn.execute("RELEASE op")
                outcomes[index] = (result, None)
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes[index] = (None, exc)
        try:
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            conn.rollback()
            outcomes = [(None, exc)] * len(batch)
        self._answer(batch, outcomes)

    @staticmethod
    def _answer(
        batch: list[tuple[Op, asyncio.Future[Any]]],
        outcomes: list[tuple[Any, BaseException | None]],
    ) -> None:
        # One wake-up of each event loop per batch, not one per caller.
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for (_, fut), (result, exc) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(fut.get_loop(), []).append((fut, result, exc))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_settle_all, items)


def _settle_all(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in items:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class _Accept:
    """An accept, run with the others of its batch in three statements (see _accept_all)."""

    __slots__ = ("row", "sinks")

    def __init__(self, row: tuple[Any, ...], sinks: Sequence[str]) -> None:
        self.row = row
        self.sinks = sinks


def _accept_all(c: sqlite3.Connection, accepts: list[_Accept]) -> list[bool]:
    """Insert the new events of a batch and their deliveries; False for duplicates (of
    stored events, or of an earlier accept in the same batch)."""
    ids = [a.row[0] for a in accepts]
    existing: set[str] = set()
    for start in range(0, len(ids), 500):  # SQLite's parameter limit
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        existing.update(
            r[0]
            for r in c.execute(
                f"SELECT request_id FROM events WHERE request_id IN ({marks})", chunk
            )
        )
    fresh: list[bool] = []
    rows, deliveries = [], []
    for a in accepts:
        rid = a.row[0]
        if rid in existing:
            fresh.append(False)
            continue
        existing.add(rid)
        fresh.append(True)
        rows.append(a.row)
        received = a.row[6]
        deliveries.extend((rid, sink, received, received) for sink in a.sinks)
    if rows:
        c.executemany(
            "INSERT INTO events (request_id, route, fal_status, error, payload_error,"
            " gateway_request_id, received_at, headers, body, files, source)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        c.executemany(
            "INSERT INTO deliveries (request_id, sink, state, next_attempt_at, updated_at)"
            " VALUES (?, ?, 'pending', ?, ?)",
            deliveries,
        )
    return fresh


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA wal_autocheckpoint=8192")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this file lacks, in order, each in its own transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in (s.strip() for s in script.split(";")):
                if statement:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: _Writer | None = None
        self._wake: asyncio.Event | None = None

    @property
    def commits(self) -> int:
        return self._writer.commits if self._writer else 0

    # --- plumbing ----------------------------------------------------------------------------

    async def open(self) -> None:
        self._wake = asyncio.Event()
        writer = _Writer(self.path)
        writer.start()
        await asyncio.to_thread(writer.ready.wait)
        if writer.open_error is not None:
            raise StoreUnavailable(f"cannot open {self.path}: {writer.open_error}")
        self._writer = writer

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.ops.put(None)
            await asyncio.to_thread(writer.join, 10)

    async def _run(self, op: Op) -> Any:
        writer = self._writer
        if writer is None or not writer.is_alive():
            raise StoreUnavailable("the store is not open")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        writer.ops.put((op, fut))
        try:
            return await fut
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def ping(self) -> bool:
        try:
            return await self._run(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except Exception:
            return False

    async def wait_for_work(self, max_wait: float) -> None:
        wake = self._wake
        if wake is None:
            await asyncio.sleep(max_wait)
            return
        try:
            await asyncio.wait_for(wake.wait(), max_wait)
        except TimeoutError:
            pass
        finally:
            wake.clear()

    # --- events ------------------------------------------------------------------------------

    async def accept(self, event: NewEvent) -> bool:
        row = (
            event.request_id,
            event.route,
            event.fal_status,
            event.error,
            event.payload_error,
            event.gateway_request_id,
            _epoch(event.received_at),
            _enc(event.headers),
            event.body,
            _enc(event.files),
            event.source,
        )
        fresh = await self._run(_Accept(row, event.sinks))  # type: ignore[arg-type]
        if fresh:
            self._notify()
        return bool(fresh)

    async def get_event(self, request_id: str) -> EventView | None:
        views = await self._run(lambda c: _load_events(c, [request_id]))
        return views[0] if views else None

    async def list_events(
        self, *, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[EventView]:
        def op(c: sqlite3.Connection) -> list[EventView]:
            where, params = [], []
            if route is not None:
                where.append("e.route = ?")
                params.append(route)
            if state is not None and state not in EVENT_STATES:
                where.append(
                    "EXISTS (SELECT 1 FROM deliveries x WHERE x.request_id = e.request_id "
                    "AND x.state = ?)"
                )
                params.append(state)
            sql = "SELECT e.request_id FROM events e"
            if state in EVENT_STATES:
                sql += " LEFT JOIN deliveries d ON d.request_id = e.request_id"
            if where:
                sql += " WHERE " + " AND ".join(where)
            if state in EVENT_STATES:
                sql += f" GROUP BY e.request_id HAVING {_EVENT_STATE_SQL} = ?"
                params.append(state)
            sql += " ORDER BY e.received_at DESC, e.request_id DESC LIMIT ?"
            params.append(limit)
            ids = [r[0] for r in c.execute(sql, params)]
            return _load_events(c, ids)

        return await self._run(op)

    async def record_files(self, request_id: str, files: list[dict[str, Any]]) -> None:
        data = _enc(files)
        await self._run(
            lambda c: c.execute(
                "UPDATE events SET files = ? WHERE request_id = ?", (data, request_id)
            )
        )

    async def counts(self) -> dict[str, int]:
        rows = await self._run(
            lambda c: c.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
        )
        return {state: n for state, n in rows}

    # --- deliveries --------------------------------------------------------------------------

    async def lease(
        self, *, owner: str, limit: int, lease_seconds: float, request_id: str | None = None
    ) -> list[Job]:
        def op(c: sqlite3.Connection) -> list[Job]:
            now = time.time()
            if request_id is None:
                rows = c.execute(
                    "SELECT request_id, sink, attempts FROM ("
                    " SELECT request_id, sink, attempts, next_attempt_at AS t FROM deliveries"
                    "  WHERE state IN ('pending', 'retrying') AND next_attempt_at <= ?"
                    " UNION ALL"
                    " SELECT request_id, sink, attempts, lease_expires_at AS t FROM deliveries"
                    "  WHERE state = 'delivering' AND lease_expires_at <= ?"
                    ") ORDER BY t LIMIT ?",
                    (now, now, limit),
                ).fetchall()
            else:
                rows = c.execute(
                    "SELECT request_id, sink, attempts FROM deliveries WHERE request_id = ?"
                    " AND (state IN ('pending', 'retrying')"
                    "      OR (state = 'delivering' AND lease_expires_at <= ?)) LIMIT ?",
                    (request_id, now, limit),
                ).fetchall()
            if not rows:
                return []
            leased: dict[str, list[LeasedDelivery]] = {}
            for rid, sink, attempts in rows:
                token = secrets.token_hex(16)
                c.execute(
                    "UPDATE deliveries SET state = 'delivering', lease_token = ?, lease_owner = ?,"
                    " lease_expires_at = ?, updated_at = ? WHERE request_id = ? AND sink = ?",
                    (token, owner, now + lease_seconds, now, rid, sink),
                )
                leased.setdefault(rid, []).append(LeasedDelivery(sink, token, attempts))
            events = {v.request_id: v for v in _load_events(c, list(leased))}
            return [Job(events[rid], ds) for rid, ds in leased.items() if rid in events]

        return await self._run(op)

    async def extend(self, tokens: Sequence[str], lease_seconds: float) -> None:
        tokens = list(tokens)
        if not tokens:
            return

        def op(c: sqlite3.Connection) -> None:
            until = time.time() + lease_seconds
            c.executemany(
                "UPDATE deliveries SET lease_expires_at = ? WHERE lease_token = ?"
                " AND state = 'delivering'",
                [(until, t) for t in tokens],
            )

        await self._run(op)

    async def finish(self, result: Finish) -> bool:
        output = _enc(result.output) if result.output is not None else None
        next_at = _epoch(result.next_attempt_at) if result.next_attempt_at else None

        def op(c: sqlite3.Connection) -> bool:
            now = time.time()
            state = {"delivered": "delivered", "retry": "retrying", "dead": "dead"}[result.outcome]
            cur = c.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = ?, output = COALESCE(?, output), lease_token = NULL,"
                " lease_owner = NULL, lease_expires_at = NULL, updated_at = ?"
                " WHERE request_id = ? AND sink = ? AND lease_token = ? AND state = 'delivering'",
                (
                    state,
                    None if result.outcome == "delivered" else result.error,
                    next_at if result.outcome == "retry" else None,
                    output if result.outcome == "delivered" else None,
                    now,
                    result.request_id,
                    result.sink,
                    result.token,
                ),
            )
            return cur.rowcount == 1

        return await self._run(op)

    async def release(self, request_id: str, sink: str, token: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            now = time.time()
            c.execute(
                "UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying'"
                " ELSE 'pending' END, next_attempt_at = ?, lease_token = NULL,"
                " lease_owner = NULL, lease_expires_at = NULL, updated_at = ?"
                " WHERE request_id = ? AND sink = ? AND lease_token = ?",
                (now, now, request_id, sink, token),
            )

        await self._run(op)
        self._notify()

    async def replay(self, request_id: str, sink: str | None = None, *, force: bool = False) -> int:
        def op(c: sqlite3.Connection) -> int:
            now = time.time()
            sql = (
                "UPDATE deliveries SET state = 'pending', attempts = 0, last_error = NULL,"
                " next_attempt_at = ?, lease_token = NULL, lease_owner = NULL,"
                " lease_expires_at = NULL, updated_at = ?"
                + (", output = NULL" if force else "")
                + " WHERE request_id = ?"
            )
            params: list[Any] = [now, now, request_id]
            if sink is not None:
                sql += " AND sink = ?"
                params.append(sink)
            return c.execute(sql, params).rowcount

        count = await self._run(op)
        if count:
            self._notify()
        return count

    # --- submissions -------------------------------------------------------------------------

    async def record_submission(self, submission: NewSubmission) -> None:
        s = submission
        await self._run(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO submissions (request_id, endpoint, route, input,"
                " status_url, response_url, cancel_url, submitted_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    s.request_id,
                    s.endpoint,
                    s.route,
                    _enc(s.input),
                    s.status_url,
                    s.response_url,
                    s.cancel_url,
                    _epoch(s.submitted_at),
                ),
            )
        )

    async def get_submission(self, request_id: str) -> SubmissionView | None:
        rows = await self._run(lambda c: _load_submissions(c, "s.request_id = ?", [request_id], 1))
        return rows[0] if rows else None

    async def list_submissions(
        self, *, state: str | None = None, limit: int = 100
    ) -> list[SubmissionView]:
        where, params = "1 = 1", []
        if state is not None:
            where, params = f"({_SUBMISSION_STATE_SQL}) = ?", [state]
        return await self._run(lambda c: _load_submissions(c, where, params, limit))

    async def update_submission(
        self, request_id: str, *, state: str, detail: str | None = None
    ) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE submissions SET state = ?, detail = ?, checked_at = ? WHERE request_id = ?",
                (state, detail, time.time(), request_id),
            )
        )

    async def overdue_submissions(
        self, *, older_than: datetime, limit: int
    ) -> list[SubmissionView]:
        where = "s.state = 'pending' AND e.request_id IS NULL AND s.submitted_at < ?"
        rows = await self._run(
            lambda c: _load_submissions(c, where, [_epoch(older_than)], limit, oldest_first=True)
        )
        return rows


# --- row loading -----------------------------------------------------------------------------


def _load_submissions(
    c: sqlite3.Connection,
    where: str,
    params: list[Any],
    limit: int,
    *,
    oldest_first: bool = False,
) -> list[SubmissionView]:
    order = "ASC" if oldest_first else "DESC"
    rows = c.execute(
        "SELECT s.request_id, s.endpoint, s.route, s.input, s.status_url, s.response_url,"
        f" s.cancel_url, s.submitted_at, {_SUBMISSION_STATE_SQL}, s.detail, s.checked_at,"
        " e.received_at FROM submissions s LEFT JOIN events e ON e.request_id = s.request_id"
        f" WHERE {where} ORDER BY s.submitted_at {order} LIMIT ?",
        [*params, limit],
    ).fetchall()
    return [
        SubmissionView(
            request_id=r[0],
            endpoint=r[1],
            route=r[2],
            input=_dec(r[3]),
            status_url=r[4],
            response_url=r[5],
            cancel_url=r[6],
            submitted_at=_ts(r[7]),  # type: ignore[arg-type]
            state=r[8],
            detail=r[9],
            checked_at=_ts(r[10]),
            received_at=_ts(r[11]),
        )
        for r in rows
    ]


def _load_events(c: sqlite3.Connection, ids: list[str]) -> list[EventView]:
    """Events (in the order of ids) with their deliveries and submission."""
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    deliveries: dict[str, dict[str, DeliveryView]] = {rid: {} for rid in ids}
    for rid, sink, state, attempts, last_error, next_at, updated, output in c.execute(
        "SELECT request_id, sink, state, attempts, last_error, next_attempt_at, updated_at,"
        f" output FROM deliveries WHERE request_id IN ({marks})",
        ids,
    ):
        deliveries[rid][sink] = DeliveryView(
            sink=sink,
            state=state,
            attempts=attempts,
            last_error=last_error,
            next_attempt_at=_ts(next_at),
            updated_at=_ts(updated),
            output=_dec(output) if output is not None else None,
        )
    subs = {
        s.request_id: s
        for s in _load_submissions(c, f"s.request_id IN ({marks})", list(ids), len(ids))
    }
    events: dict[str, EventView] = {}
    for row in c.execute(
        "SELECT request_id, route, fal_status, error, payload_error, gateway_request_id,"
        f" received_at, headers, body, files, source FROM events WHERE request_id IN ({marks})",
        ids,
    ):
        rid = row[0]
        events[rid] = EventView(
            request_id=rid,
            route=row[1],
            fal_status=row[2],
            error=row[3],
            payload_error=row[4],
            gateway_request_id=row[5],
            received_at=_ts(row[6]),  # type: ignore[arg-type]
            headers=_dec(row[7]),
            body=bytes(row[8]),
            files=_dec(row[9]),
            deliveries=deliveries[rid],
            source=row[10],
            submission=subs.get(rid),
        )
    return [events[rid] for rid in ids if rid in events]
