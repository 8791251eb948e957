"""The PostgreSQL store: many `falhook serve` and `falhook worker` processes on one database.

- Intake: group commit. The accepts that arrive while a batch is being written share the
  next one: one multi-row statement (events + deliveries, ON CONFLICT DO NOTHING), one
  transaction, one NOTIFY; each caller gets its own answer, and a batch that fails is
  retried event by event so one bad event fails alone.
- Leases: `FOR UPDATE SKIP LOCKED` in due order, with server time (now()), so workers on
  several hosts never take the same delivery and agree on what is due.
- Wake-ups: accept and replay NOTIFY a channel named after the schema; each store keeps one
  dedicated LISTEN connection (reconnected when it drops) and wakes its workers on any
  notification, from any process. Workers still poll, so a lost notification only delays.
- Schema: created and migrated by falhook itself under an advisory lock (pg_schema.py).

The driver is asyncpg: see bench/pg_driver.py and docs/deploy.md for the measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec

from falhook.logs import get_logger
from falhook.store import postgres_reads as reads
from falhook.store import postgres_schema as q
from falhook.store.dialect import POSTGRES, SUBMISSION_STATE_SQL, accept_row, accepted_sinks
from falhook.store.models import (
    FINISHED_STATE,
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
    utcnow,
)
from falhook.store.wakeups import WorkSignal

log = get_logger("falhook.store.postgres")

# What "the database is not there right now" looks like from asyncpg: connection refused or
# reset (OSError), a dropped session (InterfaceError and friends), a server shutting down or
# out of resources (PostgresError subclasses), or a stalled server (TimeoutError).
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError)

CONNECT_TIMEOUT = 10.0  # seconds to open one connection
ACQUIRE_TIMEOUT = 15.0  # seconds to wait for a pooled connection
COMMAND_TIMEOUT = 60.0  # seconds for one statement
LISTEN_CHECK = 10.0  # seconds between liveness checks of an idle LISTEN connection
RECONNECT_MAX = 10.0  # seconds: the cap of the LISTEN reconnect backoff
_NEVER = datetime.max.replace(tzinfo=UTC)  # sorts a (never expected) NULL due time last
ACCEPT_BATCH = 500  # events of one intake statement, at most


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username or ''}:***@{host}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "postgresql://<unparsable URL>"


def _json_encode(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # json columns in and out as Python objects, through msgspec (fast, and keeps key order).
    await conn.set_type_codec(
        "json", encoder=_json_encode, decoder=msgspec.json.decode, schema="pg_catalog"
    )


class PostgresStore:
    """The Store protocol on a PostgreSQL database, in schema `schema` (created if missing)."""

    def __init__(
        self, url: str, *, schema: str = "falhook", min_pool: int = 1, max_pool: int = 10
    ) -> None:
        if not q.SCHEMA_NAME.match(schema):
            raise ValueError(
                f"schema {schema!r}: use lower-case letters, digits and '_' (at most 48)"
            )
        if not 1 <= min_pool <= max_pool:
            raise ValueError("need 1 <= min_pool <= max_pool")
        self.url = url
        self.schema = schema
        self.channel = f"falhook_work:{schema}"
        self.min_pool = min_pool
        self.max_pool = max_pool
        self._pool: asyncpg.Pool | None = None
        self._wake = WorkSignal()
        self._closing: asyncio.Event | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._listen_conn: asyncpg.Connection | None = None
        self._notify_task: asyncio.Task[None] | None = None
        self._notify_again = False
        self._intake: _Intake | None = None
        self.version: int | None = None  # the schema version, once open

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r}, schema={self.schema!r})"

    # --- plumbing ----------------------------------------------------------------------------

    def _settings(self) -> dict[str, str]:
        return {"search_path": self.schema, "application_name": "falhook"}

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.url,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            server_settings=self._settings(),
        )

    async def open(self) -> None:
        self._wake.open()
        self._closing = asyncio.Event()
        try:
            conn = await self._connect()
            try:
                version = await q.migrate(conn, self.schema)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self.min_pool,
                max_size=self.max_pool,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                server_settings=self._settings(),
                init=_init_connection,
            )
            # The first LISTEN connection before open() returns: from here on, no
            # notification is missed.
            self._listen_conn = await self._listen()
        except _UNAVAILABLE as exc:
            await self.close()
            raise StoreUnavailable(f"postgresql {redact(self.url)}: {_describe(exc)}") from exc
        except BaseException:
            await self.close()
            raise
        self._listener_task = asyncio.create_task(
            self._supervise_listener(), name=f"falhook-listen-{self.schema}"
        )
        self._intake = _Intake(self._accept_batch)
        # No log line here: CLI commands open stores too, and their stdout is for --json.
        self.version = version

    async def close(self) -> None:
        intake, self._intake = self._intake, None
        if intake is not None:
            await intake.flush()  # the accepts already queued are answered first
        if self._closing is not None:
            self._closing.set()
        task, self._listener_task = self._listener_task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None:
            await _close_quietly(conn)
        notify, self._notify_task = self._notify_task, None
        if notify is not None:
            await asyncio.gather(notify, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
            except (TimeoutError, *_UNAVAILABLE):
                pool.terminate()  # a server gone away cannot say goodbye

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; any sign of an unreachable database is StoreUnavailable."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("the store is not open")
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"postgresql: {_describe(exc)}") from exc

    async def ping(self) -> bool:
        """The database answers and falhook's tables are there (a schema dropped under a
        running store is not ready)."""
        try:
            async with self._conn() as conn:
                await conn.fetchval("SELECT max(version) FROM schema_migrations", timeout=5)
        except Exception:
            return False
        return True

    # --- wake-ups ----------------------------------------------------------------------------

    async def _listen(self) -> asyncpg.Connection:
        conn = await self._connect()
        try:
            await conn.add_listener(self.channel, self._on_notification)
        except BaseException:
            await _close_quietly(conn)
            raise
        return conn

    def _on_notification(self, *_: Any) -> None:
        self._wake.set()

    def listener_pid(self) -> int | None:
        """The server process id of the LISTEN connection (None while reconnecting)."""
        conn = self._listen_conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    async def _supervise_listener(self) -> None:
        """Keep one LISTEN connection up for the store's lifetime (ends at close())."""
        closing = self._closing
        assert closing is not None
        delay = 0.2
        while not closing.is_set():
            conn = self._listen_conn
            if conn is None:
                try:
                    conn = await self._listen()
                except _UNAVAILABLE as exc:
                    log.warning("LISTEN reconnect failed", error=_describe(exc), retry_in=delay)
                    await _wait(closing, delay)
                    delay = min(delay * 2, RECONNECT_MAX)
                    continue
                self._listen_conn = conn
                delay = 0.2
                log.info("LISTEN connection re-established", schema=self.schema)
                # Notifications sent while we were deaf are lost: look for work now.
                self._on_notification()
            await self._watch(conn, closing)
            self._listen_conn = None
            await _close_quietly(conn)

    async def _watch(self, conn: asyncpg.Connection, closing: asyncio.Event) -> None:
        """Return when the LISTEN connection is lost (or the store closes)."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        while not (closing.is_set() or lost.is_set() or conn.is_closed()):
            await _wait_any(closing, lost, LISTEN_CHECK)
            if closing.is_set() or lost.is_set():
                return
            try:  # idle for a while: make sure the session is still there
                await conn.execute("SELECT 1", timeout=5)
            except _UNAVAILABLE:
                return

    def _notify(self) -> None:
        """Wake this process's workers now and other processes' through NOTIFY. Sent outside
        the accept, coalesced (one in flight, one more queued), so intake never waits on
        PostgreSQL's commit-time NOTIFY lock."""
        self._on_notification()
        if self._notify_task is not None and not self._notify_task.done():
            self._notify_again = True
            return
        self._notify_again = False
        self._notify_task = asyncio.create_task(self._send_notify())

    async def _send_notify(self) -> None:
        for _ in range(2):  # the first send, then once more if accepts came meanwhile
            try:
                async with self._conn() as conn:
                    await conn.execute("SELECT pg_notify($1, '')", self.channel)
            except Exception as exc:  # workers poll anyway; a lost wake-up only delays
                log.warning("NOTIFY failed", error=_describe(exc))
            if not self._notify_again:
                return
            self._notify_again = False

    async def wait_for_work(self, max_wait: float) -> None:
        await self._wake.wait(max_wait)

    # --- events ------------------------------------------------------------------------------

    async def accept(self, event: NewEvent) -> bool:
        """Stored with the other events accepted meanwhile (group commit: _Intake)."""
        if self._intake is None:
            raise StoreUnavailable("the store is not open")
        return await self._intake.accept(event)

    async def _accept_batch(self, events: list[NewEvent]) -> list[bool | Exception]:
        """Several events in one statement, one transaction, and one NOTIFY for them all."""
        answers = await self._insert(events)
        if any(a is True for a in answers):
            self._notify()
        return answers

    async def _insert(self, events: list[NewEvent]) -> list[bool | Exception]:
        """Whether each event was stored (False: it was there already). A batch that an
        event's data fails is inserted event by event, so that event fails alone."""
        try:
            async with self._conn() as conn:
                rows = await conn.fetch(q.ACCEPT_MANY, *_accept_many_args(events))
        except Exception as exc:
            if len(events) == 1 or not _about_the_data(exc):
                raise
            answers: list[bool | Exception] = []
            for event in events:
                try:
                    answers.extend(await self._insert([event]))
                except Exception as failed:
                    answers.append(failed)
            return answers
        stored = {r[0] for r in rows}
        return [e.request_id in stored for e in events]

    async def _read_events(self, sql: str, *params: Any) -> list[EventView]:
        async with self._conn() as conn, conn.transaction(isolation="repeatable_read"):
            ids = [r[0] for r in await conn.fetch(sql, *params)]
            return await q.load_events(conn, ids)

    async def get_event(self, request_id: str) -> EventView | None:
        views = await self._read_events("SELECT $1::text", request_id)
        return views[0] if views else None

    async def list_events(
        self, *, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[EventView]:
        where: list[str] = ["true"]
        params: list[Any] = []
        if route is not None:
            params.append(route)
            where.append(f"e.route = ${len(params)}")
        if state is not None:
            clause, extra = q.state_where(state, len(params) + 1)
            where.append(clause)
            params.extend(extra)
        params.append(limit)
        sql = (
            f"SELECT e.request_id FROM events e WHERE {' AND '.join(where)}"
            f" ORDER BY e.received_at DESC, e.request_id DESC LIMIT ${len(params)}"
        )
        return await self._read_events(sql, *params)

    async def record_files(self, request_id: str, files: list[dict[str, Any]]) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE events SET files = $1 WHERE request_id = $2", files, request_id
            )

    async def counts(self) -> dict[str, int]:
        async with self._conn() as conn:
            rows = await conn.fetch("SELECT state, count(*) FROM deliveries GROUP BY state")
        return {r[0]: r[1] for r in rows}

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
        args: list[Any] = [limit, owner, float(lease_seconds)]
        sql = q.LEASE_DUE
        if request_id is not None:
            sql = q.LEASE_ONE
            args += [request_id, None if sinks is None else list(sinks)]
        async with self._conn() as conn:
            # The UPDATE commits at once (the rows are ours by their token); the views are
            # read afterwards without holding any lock.
            rows = await conn.fetch(sql, *args)
            if not rows:
                return []
            # RETURNING comes in no particular order: jobs go oldest due first, each
            # event's deliveries in the route's sink order.
            rows = sorted(rows, key=lambda r: (r["due"] or _NEVER, r["request_id"], r["position"]))
            leased: dict[str, list[LeasedDelivery]] = {}
            for r in rows:
                held = LeasedDelivery(r["sink"], r["lease_token"], r["attempts"])
                leased.setdefault(r["request_id"], []).append(held)
            async with conn.transaction(isolation="repeatable_read"):
                leased_ids = list(leased)
                events = {
                    v.request_id: v for v in await q.load_events(conn, leased_ids, history=False)
                }
        return [Job(events[rid], held) for rid, held in leased.items() if rid in events]

    async def extend(self, tokens: Sequence[str], lease_seconds: float) -> None:
        held = list(tokens)
        if not held:
            return
        async with self._conn() as conn:
            await conn.execute(q.EXTEND, held, float(lease_seconds))

    async def finish(self, result: Finish) -> bool:
        return (await self.finish_many([result]))[0]

    async def finish_many(
        self, results: Sequence[Finish], files: Mapping[str, list[dict[str, Any]]] | None = None
    ) -> list[bool]:
        args = _finish_many_args(results, files or {})
        alerts = [r for r in results if r.alerts]
        async with self._conn() as conn:
            if not alerts:  # one statement, its own transaction
                rows = await conn.fetch(q.FINISH_MANY, *args)
            else:
                async with conn.transaction():  # the alerts of what held: both, or neither
                    rows = await conn.fetch(q.FINISH_MANY, *args)
                    done = {(r["request_id"], r["sink"]) for r in rows}
                    raised = [
                        alert
                        for result in alerts
                        if (result.request_id, result.sink) in done
                        for alert in result.alerts
                    ]
                    if raised:
                        await conn.fetch(q.ACCEPT_MANY, *_accept_many_args(raised))
        done = {(r["request_id"], r["sink"]) for r in rows}
        held = [(r.request_id, r.sink) in done for r in results]
        if any(ok and r.alerts for ok, r in zip(held, results, strict=True)):
            self._notify()
        return held

    async def prune_history(self, older_than: datetime) -> int:
        async with self._conn() as conn:
            status = await conn.execute("DELETE FROM attempts WHERE at < $1", older_than)
        return _rowcount(status)

    async def release(self, request_id: str, sink: str, token: str) -> None:
        async with self._conn() as conn:
            status = await conn.execute(q.RELEASE, request_id, sink, token)
        if _rowcount(status):
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
        async with self._conn() as conn, conn.transaction(isolation="repeatable_read"):
            ids, next_cursor = await reads.find_ids(conn, query, limit, cursor)
            return EventPage(await q.load_events(conn, ids), next_cursor)

    async def find_ids(
        self, query: EventQuery, *, limit: int = 500, cursor: str | None = None
    ) -> tuple[list[str], str | None]:
        async with self._conn() as conn:
            return await reads.find_ids(conn, query, limit, cursor)

    async def count_events(self, query: EventQuery) -> int:
        async with self._conn() as conn:
            return await reads.count_events(conn, query)

    async def replay_many(
        self,
        request_ids: Sequence[str],
        sink: str | None = None,
        *,
        force: bool = False,
        add_to_routes: Collection[str] = (),
    ) -> tuple[int, int]:
        ids = list(dict.fromkeys(request_ids))
        if not ids:
            return 0, 0
        add = sink is not None and bool(add_to_routes)
        sql = q.replay_sql(one_sink=sink is not None, force=force, add=add)
        params: list[Any] = [ids] if sink is None else [ids, sink]
        if add:
            params.append(sorted(add_to_routes))
        async with self._conn() as conn:
            rows = await conn.fetch(sql, *params)
        if rows:
            self._notify()
        return len(rows), len({r[0] for r in rows})

    async def changes(self, mark: ChangeMark | None) -> tuple[list[Change], ChangeMark]:
        # One snapshot: an accept committing between the look at events and the look at
        # deliveries would otherwise show as a pending delivery of an event never announced.
        async with self._conn() as conn, conn.transaction(isolation="repeatable_read"):
            return await reads.changes(conn, mark)

    async def dead_groups(self, limit: int = 100) -> list[DeadGroup]:
        async with self._conn() as conn:
            return await reads.dead_groups(conn, limit)

    async def dead_count(self) -> int:
        async with self._conn() as conn:
            count: int = await conn.fetchval("SELECT count(*) FROM deliveries WHERE state = 'dead'")
        return count

    async def delivery_stats(self, since: datetime) -> DeliveryStats:
        async with self._conn() as conn, conn.transaction(isolation="repeatable_read"):
            return await reads.delivery_stats(conn, since)

    async def delivery_trends(self, window: TrendWindow) -> DeliveryTrends:
        async with self._conn() as conn, conn.transaction(isolation="repeatable_read"):
            return await reads.delivery_trends(conn, window)

    # --- submissions -------------------------------------------------------------------------

    async def record_submission(self, submission: NewSubmission) -> None:
        s = submission
        async with self._conn() as conn:
            await conn.execute(
                q.RECORD_SUBMISSION,
                s.request_id,
                s.endpoint,
                s.route,
                s.input,
                s.status_url,
                s.response_url,
                s.cancel_url,
                q.as_utc(s.submitted_at),
                s.metadata,
            )

    async def get_submission(self, request_id: str) -> SubmissionView | None:
        async with self._conn() as conn:
            rows = await q.load_submissions(conn, "s.request_id = $1", [request_id], 1)
        return rows[0] if rows else None

    async def list_submissions(
        self, *, state: str | None = None, limit: int = 100
    ) -> list[SubmissionView]:
        where, params = "true", []
        if state is not None:
            where, params = f"({SUBMISSION_STATE_SQL}) = $1", [state]
        async with self._conn() as conn:
            return await q.load_submissions(conn, where, params, limit)

    async def update_submission(
        self, request_id: str, *, state: str, detail: str | None = None
    ) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE submissions SET state = $1, detail = $2, checked_at = now()"
                " WHERE request_id = $3",
                state,
                detail,
                request_id,
            )

    async def overdue_submissions(
        self, *, older_than: datetime, limit: int
    ) -> list[SubmissionView]:
        where = "s.state = 'pending' AND e.request_id IS NULL AND s.submitted_at < $1"
        async with self._conn() as conn:
            return await q.load_submissions(
                conn, where, [q.as_utc(older_than)], limit, oldest_first=True
            )


# --- helpers -----------------------------------------------------------------------------------


def _finish_many_args(
    results: Sequence[Finish], files: Mapping[str, list[dict[str, Any]]]
) -> list[list[Any]]:
    """The arrays of q.FINISH_MANY, one element per result (then the file lists)."""
    columns: list[list[Any]] = [[] for _ in range(12)]
    now = utcnow()
    for r in results:
        outcome = r.outcome
        next_at = r.next_attempt_at
        output = r.output if outcome == "delivered" else None
        row = (
            r.request_id,
            r.sink,
            r.token,
            FINISHED_STATE[outcome],
            None if outcome == "delivered" else r.error,
            # As a delay from the database's clock, not the worker's: workers on hosts
            # whose clocks drift still agree on when a retry is due.
            (next_at - now).total_seconds() if next_at is not None and outcome == "retry" else None,
            _json_encode(output) if output is not None else None,
            1 if r.counted else 0,
            logs_attempt(r),
            outcome,
            r.error,
            r.duration_ms,
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return [*columns, list(files), [_json_encode(f) for f in files.values()]]


def _accept_many_args(events: list[NewEvent]) -> list[list[Any]]:
    """The arrays of q.ACCEPT_MANY: a row per event, then a row per delivery."""
    columns: list[list[Any]] = [[] for _ in range(12)]
    sinks: list[list[Any]] = [[], [], []]
    for e in events:
        for column, value in zip(columns, accept_row(POSTGRES, e), strict=True):
            column.append(value)
        for position, sink in enumerate(accepted_sinks(e), start=1):
            sinks[0].append(e.request_id)
            sinks[1].append(sink)
            sinks[2].append(position)
    return [*columns, *sinks]


class _Intake:
    """Group commit for one receiver: the accepts that arrive while a batch is being
    written share the next one (one statement, one transaction, one commit), each caller
    answered on its own: stored, already there, or its error."""

    def __init__(self, write: Callable[[list[NewEvent]], Awaitable[list[bool | Exception]]]):
        self._write = write
        self._waiting: list[tuple[NewEvent, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # batches written (tests show that concurrent accepts share one)

    async def accept(self, event: NewEvent) -> bool:
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, answer))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name="falhook-intake")
        return await answer

    async def flush(self) -> None:
        while self._writer is not None:
            await asyncio.wait({self._writer})

    async def _write_all(self) -> None:
        try:
            await asyncio.sleep(0)  # the accepts arriving on this turn of the loop join in
            while self._waiting:
                batch, self._waiting = self._waiting[:ACCEPT_BATCH], self._waiting[ACCEPT_BATCH:]
                await self._write_batch(batch)
        finally:
            self._writer = None

    async def _write_batch(self, batch: list[tuple[NewEvent, asyncio.Future[bool]]]) -> None:
        # A request id twice in one batch: the first is written, the others are duplicates.
        first: dict[str, int] = {}
        for i, (event, _) in enumerate(batch):
            first.setdefault(event.request_id, i)
        unique = [batch[i][0] for i in first.values()]
        self.batches += 1
        try:
            answers = await self._write(unique)
        except Exception as exc:
            answers = [exc] * len(unique)
        stored = dict(zip(first.values(), answers, strict=True))
        for i, (_, answer) in enumerate(batch):
            result = stored.get(i, False)
            if answer.done():  # the caller went away; its event was still written
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)


def _about_the_data(exc: Exception) -> bool:
    """An error that some event of a batch caused (SQLSTATE classes 22: data exception, 23:
    integrity), not one of the database itself."""
    cause = exc.__cause__ if isinstance(exc, StoreUnavailable) else exc
    state = getattr(cause, "sqlstate", None) or ""
    return isinstance(cause, asyncpg.PostgresError) and state[:2] in ("22", "23")


def _rowcount(status: str) -> int:
    """The row count of a command tag such as 'UPDATE 3'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _describe(exc: BaseException) -> str:
    # asyncpg's messages name hosts, users and databases, never the password.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5)
    except Exception:
        conn.terminate()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def _wait_any(a: asyncio.Event, b: asyncio.Event, seconds: float) -> None:
    tasks = [asyncio.create_task(a.wait()), asyncio.create_task(b.wait())]
    try:
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
