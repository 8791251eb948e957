"""The SQLite store: the embedded default.

WAL with synchronous=FULL: a commit that returned survives kill -9 and power loss. How a
write travels, in the order the code runs it:

1. **The writer thread** (`_Writer`, one per open store) owns the only write connection. It
   opens and migrates the file itself; `open()` waits for its `ready` event (off the loop)
   and raises what it reports. It also notes the file's device and inode (`FileIdentity`): a
   file removed or replaced under it makes every later write a `StoreUnavailable` rather
   than a commit into a file no restart will find.
2. **A caller** (`_write`, from any event loop) makes a future on its own running loop, puts
   ``(op, future)`` on the writer's thread-safe queue and awaits the future. An `op` is a
   function of the connection; an accept is an `_Accept`, which the writer can batch.
3. **Batches** (`_next_batch`): the writer blocks for the first operation, then takes
   whatever else is queued, up to `_BATCH_MAX`. When the previous batch held more than one
   (callers are arriving concurrently), it first lets the queue grow while it keeps growing
   (`_gather`: a look every `COMMIT_POLL`, at most `COMMIT_WAIT_MAX`), so more callers share
   one commit. `close()` queues `None`: what is queued before it still runs, then the thread
   ends.
4. **One transaction per batch** (`_transact`): ``BEGIN IMMEDIATE`` (the lock that makes a
   batch atomic across processes sharing the file: `serve` beside `worker`), then the
   batch's accepts together in a few statements inside one savepoint (`_accept_all`; if that
   fails, each accept again in a savepoint of its own), then every other operation in its
   own savepoint, so a failing operation undoes only itself and its exception goes to its
   own caller; then one ``COMMIT``: one fsync for the whole batch (group commit). If the
   transaction itself fails (SQLite rolled it back: disk full, I/O error), every caller of
   the batch gets that error.
5. **Answers across loops** (`_answer`, `_settle_all`): a future may only be completed on
   its own loop, and callers of one store may sit on several (the server's, a worker's, a
   CLI command's). The writer groups the batch's outcomes by each future's loop and hands
   each loop one `call_soon_threadsafe` for all of its callers: one wake-up per loop per
   batch. A loop already closed is skipped; a future already done (its caller was
   cancelled) is left alone, the work having been done all the same. `_write` turns a
   `sqlite3.Error` into `StoreUnavailable`.
6. **Search indexing, after** (`_index`): the FTS5 index is filled in the writer's own
   transactions once the batch's callers are answered (when the queue is empty, or at least
   every `INDEX_EVERY` under constant load), so acknowledging fal never waits for the
   tokenizer; its mark moves in the same transaction, a search catches up before it reads,
   and opening the store catches up what a crash left.

Reads that change nothing (`_Readers`) run in a pool of `_READERS` threads, each with its own
read-only connection and each call in one snapshot (``BEGIN`` ... rollback): WAL lets them run
beside the writer, so a long `events list` never holds up intake. New work wakes the worker of
this process through `_wake`, an asyncio.Event set after an accept, a finish that stored alert
events, a release or a replay (`wait_for_work`); workers in other processes find it by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from falhook.store import sqlite_reads as reads
from falhook.store.dialect import (
    EVENT_COLUMNS,
    SQLITE,
    SUBMISSION_STATE_SQL,
    accept_row,
    accepted_sinks,
)
from falhook.store.models import (
    FINISHED_STATE,
    LEASE_EXPIRED,
    Change,
    ChangeMark,
    DeadGroup,
    DeliveryStats,
    DeliveryTrends,
    EventPage,
    EventQuery,
    EventView,
    Finish,
    Job,
    LeasedDelivery,
    NewEvent,
    NewSubmission,
    StoreUnavailable,
    SubmissionView,
    TrendWindow,
    logs_attempt,
)
from falhook.store.sqlite_schema import (
    connect,
    encode,
    index_for_search,
    list_events_sql,
    load_events,
    load_submissions,
    migrate,
    to_epoch,
)
from falhook.store.wakeups import WorkSignal

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
Outcome = tuple[Any, BaseException | None]

_BATCH_MAX = 512
# Group commit under concurrent load: a batch grows while callers keep arriving, and is
# committed once a poll interval brings no one new (everyone coming is already here) or at
# the cap. A fixed wait idles the CPU when every caller is already waiting on the commit
# (docs/performance.md: group commit).
COMMIT_WAIT_MAX = 0.008  # seconds a commit waits for company, at most
COMMIT_POLL = 0.0005  # seconds between looks at the queue
_READERS = 2
# Search indexing, after the commits that acknowledge fal: when the writer has nothing queued,
# and under constant load at least this often; at most this many events a transaction.
INDEX_EVERY = 0.25  # seconds
INDEX_BATCH = 5000

# Oldest due first: a retry's time, or an expired lease's expiry. Each state is read in index
# order and cut at the limit before the merge, so a backlog of 100k due deliveries costs a
# lease (which holds the writer, hence intake) a few rows, not a sort of all of them.
_DUE_SQL = """
    SELECT d.event_id, e.request_id, d.sink, d.attempts, d.state FROM (
        SELECT * FROM (SELECT event_id, sink, attempts, state, next_attempt_at AS t
            FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?1
            ORDER BY next_attempt_at LIMIT ?2)
        UNION ALL
        SELECT * FROM (SELECT event_id, sink, attempts, state, next_attempt_at AS t
            FROM deliveries WHERE state = 'retrying' AND next_attempt_at <= ?1
            ORDER BY next_attempt_at LIMIT ?2)
        UNION ALL
        SELECT * FROM (SELECT event_id, sink, attempts, state, lease_expires_at AS t
            FROM deliveries
            WHERE state = 'delivering' AND lease_expires_at <= ?1
            ORDER BY lease_expires_at LIMIT ?2)
    ) d JOIN events e ON e.id = d.event_id ORDER BY d.t LIMIT ?2
"""
_LOG_ATTEMPT = (
    "INSERT INTO attempts (event_id, sink, at, outcome, error, duration_ms)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
# The deliveries of the event with a request_id; _ONE: that event's delivery to a sink.
_OF_EVENT = "event_id = (SELECT id FROM events WHERE request_id = ?)"
_ONE = f"{_OF_EVENT} AND sink = ?"
# An attempt's outcome, only while its token holds the lease (_finish_params: the values).
_FINISH = (
    "UPDATE deliveries SET state = ?, attempts = attempts + ?, last_error = ?,"
    " next_attempt_at = ?, output = COALESCE(?, output), lease_token = NULL,"
    " lease_owner = NULL, lease_expires_at = NULL, updated_at = ?"
    f" WHERE {_ONE} AND lease_token = ? AND state = 'delivering' RETURNING event_id"
)


@dataclass(frozen=True)
class FileIdentity:
    """Which file the store opened: a file deleted or replaced under a running store is seen
    by its device and inode, and the store stops acknowledging into the one it holds open."""

    path: Path
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        st = os.stat(path)
        return cls(path, st.st_dev, st.st_ino)

    def lost(self) -> str | None:
        """Why the file is no longer the one opened, or None while it is."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the database file {self.path} was removed while open"
        except OSError as exc:
            return f"the database file {self.path} cannot be checked: {exc.strerror or exc}"
        if (st.st_dev, st.st_ino) != (self.device, self.inode):
            return f"the database file {self.path} was replaced while open"
        return None


class _Accept:
    """An accept, run with the other accepts of its batch in a few statements."""

    __slots__ = ("row", "sinks")

    def __init__(self, row: tuple[Any, ...], sinks: tuple[str, ...]) -> None:
        self.row = row
        self.sinks = sinks

    def __call__(self, c: sqlite3.Connection) -> bool:
        """This accept alone (when its batch failed and each is redone by itself)."""
        return _accept_all(c, [self])[0]


def _accept_all(c: sqlite3.Connection, accepts: list[_Accept]) -> list[bool]:
    """Insert the batch's new events and their deliveries; False for duplicates (of stored
    events, or of an earlier accept in the same batch). A few statements for the whole batch
    instead of a statement round per event. The batch numbers its events itself, after the
    highest id stored: BEGIN IMMEDIATE makes this writer the only one until it commits."""
    ids = [a.row[0] for a in accepts]
    existing: set[str] = set()
    for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        existing.update(
            r[0]
            for r in c.execute(
                f"SELECT request_id FROM events WHERE request_id IN ({marks})", chunk
            )
        )
    fresh: list[bool] = []
    rows: list[tuple[Any, ...]] = []
    deliveries: list[tuple[Any, ...]] = []
    next_id = c.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0] + 1
    for a in accepts:
        rid = a.row[0]
        if rid in existing:
            fresh.append(False)
            continue
        existing.add(rid)
        fresh.append(True)
        rows.append((next_id, *a.row))
        received = a.row[6]
        deliveries.extend((next_id, sink, received, received) for sink in a.sinks)
        next_id += 1
    if rows:
        c.executemany(
            f"INSERT INTO events (id, {EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        c.executemany(
            "INSERT INTO deliveries (event_id, sink, state, next_attempt_at, updated_at)"
            " VALUES (?, ?, 'pending', ?, ?)",
            deliveries,
        )
    return fresh


def _accept_of(event: NewEvent) -> _Accept:
    return _Accept(accept_row(SQLITE, event), accepted_sinks(event))


def _finish_params(result: Finish, now: float) -> tuple[Any, ...]:
    """_FINISH's parameters for this result, written at `now`."""
    outcome = result.outcome
    output = result.output if outcome == "delivered" else None
    next_at = to_epoch(result.next_attempt_at) if result.next_attempt_at else None
    return (
        FINISHED_STATE[outcome],
        1 if result.counted else 0,
        None if outcome == "delivered" else result.error,
        # A retry without a time is due now, never stuck with a NULL time.
        (next_at if next_at is not None else now) if outcome == "retry" else None,
        encode(output) if output is not None else None,
        now,
        result.request_id,
        result.sink,
        result.token,
    )


def _in_savepoint(conn: sqlite3.Connection, op: Op) -> Outcome:
    """Run op so that its failure undoes only its own changes. When SQLite itself rolled the
    whole transaction back (disk full, I/O error), there is nothing left to save: raise, and
    the batch fails as a whole."""
    conn.execute("SAVEPOINT op")
    try:
        result = op(conn)
    except Exception as exc:
        if not conn.in_transaction:
            raise
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return None, exc
    conn.execute("RELEASE op")
    return result, None


class _Writer(threading.Thread):
    """Owns the write connection; runs queued operations in shared transactions."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        super().__init__(name="falhook-sqlite", daemon=True)
        self.path = path
        self.busy_timeout = busy_timeout
        self.ops: queue.SimpleQueue[tuple[Op, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self.commits = 0
        self.last_batch = 0
        self.ready = threading.Event()
        self.open_error: BaseException | None = None
        self.identity: FileIdentity | None = None
        self.unindexed = True  # events may wait for the search index
        self.indexed_at = 0.0

    def run(self) -> None:
        try:
            conn = connect(self.path, busy_timeout=self.busy_timeout)
            migrate(conn)
            self.identity = FileIdentity.of(self.path)
        except BaseException as exc:  # reported by open()
            self.open_error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            self._index(conn)  # what a crash left unindexed
            while (batch := self._next_batch()) is not None:
                self._answer(batch, self._run_batch(conn, batch))
                if self.ops.empty() or time.monotonic() - self.indexed_at > INDEX_EVERY:
                    self._index(conn)
        finally:
            conn.close()

    def _index(self, conn: sqlite3.Connection) -> None:
        """Index the new events for search, after their commit answered their callers: the
        tokenizer's work stays out of the transactions that acknowledge fal, and runs in
        batches of many events (fewer, larger index segments). Failing here loses nothing:
        the next pass (or a search) catches up."""
        self.indexed_at = time.monotonic()
        if not self.unindexed:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            index_for_search(conn, INDEX_BATCH)
            conn.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            return
        self.unindexed = False

    def _next_batch(self) -> list[tuple[Op, asyncio.Future[Any]]] | None:
        first = self.ops.get()
        if first is None:
            return None
        if self.last_batch > 1:
            # Concurrent load: let more callers share this commit's fixed cost (fsync, WAL
            # pages) while they keep coming.
            self._gather()
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
        return batch

    def _gather(self) -> None:
        deadline = time.monotonic() + COMMIT_WAIT_MAX
        waiting = self.ops.qsize()
        while time.monotonic() < deadline:
            time.sleep(COMMIT_POLL)
            now = self.ops.qsize()
            if now == waiting:
                return
            waiting = now

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[Op, asyncio.Future[Any]]]
    ) -> list[Outcome]:
        lost = self.identity.lost() if self.identity is not None else None
        if lost is not None:
            # Committing into a file no one will open again would acknowledge events that a
            # restart cannot find: refuse instead (503, and not ready).
            return [(None, StoreUnavailable(lost))] * len(batch)
        try:
            outcomes = self._transact(conn, [op for op, _ in batch])
            self.unindexed = self.unindexed or any(isinstance(op, _Accept) for op, _ in batch)
        except BaseException as exc:  # whatever happens, every caller gets an answer
            if conn.in_transaction:
                # A broken connection cannot roll back; the next BEGIN will say so.
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()
            return [(None, exc)] * len(batch)
        self.commits += 1
        return outcomes

    @staticmethod
    def _transact(conn: sqlite3.Connection, ops: list[Op]) -> list[Outcome]:
        outcomes: list[Outcome] = [(None, None)] * len(ops)
        conn.execute("BEGIN IMMEDIATE")
        accepts = [i for i, op in enumerate(ops) if isinstance(op, _Accept)]
        if accepts:
            batch = [op for op in ops if isinstance(op, _Accept)]
            batched = _in_savepoint(conn, lambda c: _accept_all(c, batch))
            if batched[1] is None:
                for i, fresh in zip(accepts, batched[0], strict=True):
                    outcomes[i] = (fresh, None)
            else:
                # One bad accept must not sink the others: redo them one by one.
                for i in accepts:
                    outcomes[i] = _in_savepoint(conn, ops[i])
        for i, op in enumerate(ops):
            if not isinstance(op, _Accept):
                outcomes[i] = _in_savepoint(conn, op)
        conn.execute("COMMIT")
        return outcomes

    @staticmethod
    def _answer(batch: list[tuple[Op, asyncio.Future[Any]]], outcomes: list[Outcome]) -> None:
        # One wake-up of each event loop per batch, not one per caller.
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for (_, fut), (result, exc) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(fut.get_loop(), []).append((fut, result, exc))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle_all, items)


def _settle_all(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in items:
        if fut.done():  # the caller gave up (cancelled); the work was still done
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class _Readers:
    """Read-only connections, one per pool thread, each read in one snapshot."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.pool = ThreadPoolExecutor(_READERS, thread_name_prefix="falhook-sqlite-read")
        self.local = threading.local()
        self.conns: list[sqlite3.Connection] = []
        self.lock = threading.Lock()

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = connect(self.path, busy_timeout=self.busy_timeout, read_only=True)
            self.local.conn = conn
            with self.lock:
                self.conns.append(conn)
        conn.execute("BEGIN")  # one snapshot for the several SELECTs of a view
        try:
            return fn(conn)
        finally:
            conn.rollback()  # nothing was written; ends the snapshot (a no-op if SQLite did)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._call, fn)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self.lock:
            for conn in self.conns:
                conn.close()
            self.conns.clear()


class SQLiteStore:
    """The Store protocol on one SQLite file. `commits` counts write transactions committed
    by this instance (tests use it to show that concurrent accepts share commits)."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._writer: _Writer | None = None
        self._readers: _Readers | None = None
        self._wake = WorkSignal()
        self._commits_before = 0  # of writers closed earlier, so the count never goes back

    @property
    def commits(self) -> int:
        writer = self._writer
        return self._commits_before + (writer.commits if writer else 0)

    # --- plumbing ----------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self.path.parent}: {exc}") from exc
        self._wake.open()
        writer = _Writer(self.path, self.busy_timeout)
        writer.start()
        await asyncio.to_thread(writer.ready.wait)
        if writer.open_error is not None:
            raise StoreUnavailable(f"cannot open {self.path}: {writer.open_error}")
        self._writer = writer
        self._readers = _Readers(self.path, self.busy_timeout)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        readers, self._readers = self._readers, None
        if writer is not None:
            writer.ops.put(None)  # queued operations run first
            await asyncio.to_thread(writer.join)
            self._commits_before += writer.commits
        if readers is not None:
            await asyncio.to_thread(readers.close)

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        writer = self._writer
        if writer is None or not writer.is_alive():
            raise StoreUnavailable("the store is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        writer.ops.put((op, fut))
        try:
            return await fut
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        readers = self._readers
        if readers is None:
            raise StoreUnavailable("the store is not open")
        try:
            return await readers.run(fn)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    def _notify(self) -> None:
        self._wake.set()

    async def ping(self) -> bool:
        writer = self._writer
        if writer is None or not writer.is_alive():
            return False
        if writer.identity is not None and writer.identity.lost() is not None:
            return False
        try:
            # Reads the file's header page: the file is there and readable.
            await self._read(lambda c: c.execute("PRAGMA user_version").fetchone())
        except Exception:
            return False
        return True

    async def wait_for_work(self, max_wait: float) -> None:
        await self._wake.wait(max_wait)

    # --- events ------------------------------------------------------------------------------

    async def accept(self, event: NewEvent) -> bool:
        fresh = await self._write(_accept_of(event))
        if fresh:
            self._notify()
        return bool(fresh)

    async def get_event(self, request_id: str) -> EventView | None:
        views = await self._read(lambda c: load_events(c, [request_id]))
        return views[0] if views else None

    async def list_events(
        self, *, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[EventView]:
        sql, params = list_events_sql(state, route)

        def op(c: sqlite3.Connection) -> list[EventView]:
            ids = [r[0] for r in c.execute(sql, [*params, limit])]
            return load_events(c, ids)

        return await self._read(op)

    async def record_files(self, request_id: str, files: list[dict[str, Any]]) -> None:
        data = encode(files)
        await self._write(
            lambda c: c.execute(
                "UPDATE events SET files = ? WHERE request_id = ?", (data, request_id)
            )
        )

    async def counts(self) -> dict[str, int]:
        rows = await self._read(
            lambda c: c.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
        )
        return dict(rows)

    # --- deliveries --------------------------------------------------------------------------

    async def lease(
        self,
        *,
        owner: str,
        limit: int,
        lease_seconds: float,
        request_id: str | None = None,
        sinks: Sequence[str] | None = None,
    ) -> list[Job]:
        only = "" if sinks is None else f" AND d.sink IN ({','.join('?' * len(sinks))})"

        def op(c: sqlite3.Connection) -> list[Job]:
            now = time.time()
            if request_id is None:
                rows = c.execute(_DUE_SQL, (now, limit)).fetchall()
            else:
                rows = c.execute(
                    "SELECT d.event_id, e.request_id, d.sink, d.attempts, d.state"
                    " FROM deliveries d JOIN events e ON e.id = d.event_id"
                    " WHERE e.request_id = ? AND (d.state IN ('pending', 'retrying')"
                    f"      OR (d.state = 'delivering' AND d.lease_expires_at <= ?)){only}"
                    " LIMIT ?",
                    (request_id, now, *(sinks or ()), limit),
                ).fetchall()
            if not rows:
                return []
            leased: dict[str, list[LeasedDelivery]] = {}
            updates, expired = [], []
            for event_id, rid, sink, attempts, state in rows:
                token = secrets.token_hex(16)
                # An expired lease is an attempt whose worker died: it counts, so an event
                # that kills its worker every time still ends dead after max_attempts.
                crashed = state == "delivering"
                attempts += crashed
                error = LEASE_EXPIRED if crashed else None
                if crashed:
                    expired.append((event_id, sink, now, "expired", LEASE_EXPIRED, None))
                updates.append(
                    (token, owner, now + lease_seconds, now, attempts, error, event_id, sink)
                )
                leased.setdefault(rid, []).append(LeasedDelivery(sink, token, attempts))
            c.executemany(
                "UPDATE deliveries SET state = 'delivering', lease_token = ?, lease_owner = ?,"
                " lease_expires_at = ?, updated_at = ?, attempts = ?,"
                " last_error = COALESCE(?, last_error) WHERE event_id = ? AND sink = ?",
                updates,
            )
            c.executemany(_LOG_ATTEMPT, expired)
            events = {v.request_id: v for v in load_events(c, list(leased), history=False)}
            return [Job(events[rid], ds) for rid, ds in leased.items() if rid in events]

        return await self._write(op)

    async def extend(self, tokens: Sequence[str], lease_seconds: float) -> None:
        held = list(tokens)
        if not held:
            return

        def op(c: sqlite3.Connection) -> None:
            until = time.time() + lease_seconds
            c.executemany(
                "UPDATE deliveries SET lease_expires_at = ? WHERE lease_token = ?"
                " AND state = 'delivering'",
                [(until, t) for t in held],
            )

        await self._write(op)

    async def finish(self, result: Finish) -> bool:
        return (await self.finish_many([result]))[0]

    async def finish_many(
        self, results: Sequence[Finish], files: Mapping[str, list[dict[str, Any]]] | None = None
    ) -> list[bool]:
        alerts = [[_accept_of(alert) for alert in r.alerts] for r in results]
        file_rows = [(encode(f), rid) for rid, f in (files or {}).items()]

        def op(c: sqlite3.Connection) -> list[bool]:
            now = time.time()
            held = []
            for result, raised in zip(results, alerts, strict=True):
                done = c.execute(_FINISH, _finish_params(result, now)).fetchall()
                held.append(len(done) == 1)
                if done and logs_attempt(result):
                    attempt = (done[0][0], result.sink, now, result.outcome, result.error,
                               result.duration_ms)  # fmt: skip
                    c.execute(_LOG_ATTEMPT, attempt)
                if done and raised:  # in this transaction: both stored, or neither
                    _accept_all(c, raised)
            if file_rows:
                c.executemany("UPDATE events SET files = ? WHERE request_id = ?", file_rows)
            return held

        held: list[bool] = await self._write(op)
        if any(ok and r.alerts for ok, r in zip(held, results, strict=True)):
            self._notify()
        return held

    async def prune_history(self, older_than: datetime) -> int:
        cutoff = to_epoch(older_than)
        count: int = await self._write(
            lambda c: c.execute("DELETE FROM attempts WHERE at < ?", (cutoff,)).rowcount
        )
        return count

    async def release(self, request_id: str, sink: str, token: str) -> None:
        def op(c: sqlite3.Connection) -> int:
            now = time.time()
            return c.execute(
                "UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying'"
                " ELSE 'pending' END, next_attempt_at = ?, lease_token = NULL,"
                " lease_owner = NULL, lease_expires_at = NULL, updated_at = ?"
                f" WHERE {_ONE} AND lease_token = ? AND state = 'delivering'",
                (now, now, request_id, sink, token),
            ).rowcount

        if await self._write(op):
            self._notify()

    async def replay(
        self,
        request_id: str,
        sink: str | None = None,
        *,
        force: bool = False,
        add_to_routes: Collection[str] = (),
    ) -> int:
        done = await self.replay_many([request_id], sink, force=force, add_to_routes=add_to_routes)
        return done[0]

    # --- the console's reads -------------------------------------------------------------------

    async def find_events(
        self, query: EventQuery, *, limit: int = 50, cursor: str | None = None
    ) -> EventPage:
        def op(c: sqlite3.Connection) -> EventPage:
            ids, next_cursor = reads.find_ids(c, query, limit, cursor)
            return EventPage(load_events(c, ids), next_cursor)

        await self._searchable(query)
        return await self._read(op)

    async def find_ids(
        self, query: EventQuery, *, limit: int = 500, cursor: str | None = None
    ) -> tuple[list[str], str | None]:
        await self._searchable(query)
        return await self._read(lambda c: reads.find_ids(c, query, limit, cursor))

    async def count_events(self, query: EventQuery) -> int:
        await self._searchable(query)
        return await self._read(lambda c: reads.count_events(c, query))

    async def _searchable(self, query: EventQuery) -> None:
        """Before a search: every event accepted so far in the index (the writer indexes
        after acknowledging, so the newest may not be yet)."""
        if query.q:
            await self._write(index_for_search)

    async def replay_many(
        self,
        request_ids: Sequence[str],
        sink: str | None = None,
        *,
        force: bool = False,
        add_to_routes: Collection[str] = (),
    ) -> tuple[int, int]:
        ids = list(dict.fromkeys(request_ids))
        routes = sorted(add_to_routes) if sink is not None else []
        deliveries = events = 0
        for start in range(0, len(ids), 400):  # under SQLite's bound-parameter limit
            chunk = ids[start : start + 400]
            replay = functools.partial(_replay, ids=chunk, sink=sink, force=force, routes=routes)
            d, e = await self._write(replay)
            deliveries, events = deliveries + d, events + e
        if deliveries:
            self._notify()
        return deliveries, events

    async def changes(self, mark: ChangeMark | None) -> tuple[list[Change], ChangeMark]:
        return await self._read(lambda c: reads.changes(c, mark))

    async def dead_groups(self, limit: int = 100) -> list[DeadGroup]:
        return await self._read(lambda c: reads.dead_groups(c, limit))

    async def dead_count(self) -> int:
        return await self._read(reads.dead_count)

    async def delivery_stats(self, since: datetime) -> DeliveryStats:
        return await self._read(lambda c: reads.delivery_stats(c, to_epoch(since)))

    async def delivery_trends(self, window: TrendWindow) -> DeliveryTrends:
        return await self._read(lambda c: reads.delivery_trends(c, window))

    # --- submissions -------------------------------------------------------------------------

    async def record_submission(self, submission: NewSubmission) -> None:
        s = submission
        row = (
            s.request_id,
            s.endpoint,
            s.route,
            encode(s.input),
            s.status_url,
            s.response_url,
            s.cancel_url,
            to_epoch(s.submitted_at),
            encode(s.metadata).decode(),
        )
        await self._write(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO submissions (request_id, endpoint, route, input,"
                " status_url, response_url, cancel_url, submitted_at, metadata)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                row,
            )
        )

    async def get_submission(self, request_id: str) -> SubmissionView | None:
        rows = await self._read(lambda c: load_submissions(c, "s.request_id = ?", [request_id], 1))
        return rows[0] if rows else None

    async def list_submissions(
        self, *, state: str | None = None, limit: int = 100
    ) -> list[SubmissionView]:
        where, params = "1", []
        if state is not None:
            where, params = f"({SUBMISSION_STATE_SQL}) = ?", [state]
        return await self._read(lambda c: load_submissions(c, where, params, limit))

    async def update_submission(
        self, request_id: str, *, state: str, detail: str | None = None
    ) -> None:
        await self._write(
            lambda c: c.execute(
                "UPDATE submissions SET state = ?, detail = ?, checked_at = ? WHERE request_id = ?",
                (state, detail, time.time(), request_id),
            )
        )

    async def overdue_submissions(
        self, *, older_than: datetime, limit: int
    ) -> list[SubmissionView]:
        where = "s.state = 'pending' AND e.request_id IS NULL AND s.submitted_at < ?"
        cutoff = to_epoch(older_than)
        return await self._read(
            lambda c: load_submissions(c, where, [cutoff], limit, oldest_first=True)
        )


def _replay(
    c: sqlite3.Connection, ids: list[str], sink: str | None, force: bool, routes: list[str]
) -> tuple[int, int]:
    """Deliveries of these events due again (and `sink`'s created for events of `routes`
    that lack it): (deliveries, events) changed."""
    now = time.time()
    marks = ",".join("?" * len(ids))
    if sink is not None and routes:
        c.execute(
            "INSERT OR IGNORE INTO deliveries (event_id, sink, state, next_attempt_at,"
            f" updated_at) SELECT id, ?, 'pending', ?, ? FROM events WHERE request_id IN ({marks})"
            f" AND route IN ({','.join('?' * len(routes))})",
            [sink, now, now, *ids, *routes],
        )
    sql = (
        "UPDATE deliveries SET state = 'pending', attempts = 0, last_error = NULL,"
        " next_attempt_at = ?, lease_token = NULL, lease_owner = NULL,"
        " lease_expires_at = NULL, updated_at = ?"
        + (", output = NULL" if force else "")
        + f" WHERE event_id IN (SELECT id FROM events WHERE request_id IN ({marks}))"
        + (" AND sink = ?" if sink is not None else "")
        + " RETURNING event_id"
    )
    params: list[Any] = [now, now, *ids] + ([sink] if sink is not None else [])
    events = [r[0] for r in c.execute(sql, params).fetchall()]
    return len(events), len(set(events))
