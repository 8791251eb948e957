"""Promises only the PostgreSQL store makes (the shared ones run in tests/inprocess/test_store.py):
safe concurrent migrations, leases split between processes, wake-ups across processes,
a LISTEN connection that comes back, and StoreUnavailable when the server is away.

Runs against the machine's PostgreSQL (FALHOOK_TEST_PG), each test in its own schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from falhook.store.models import NewEvent, StoreUnavailable
from falhook.store.postgres import PostgresStore, redact
from falhook.store.postgres_schema import SCHEMA_VERSION
from tests.support.stores import PG_URL, pg_schema


def event(sinks: tuple[str, ...] = ("a",)) -> NewEvent:
    rid = str(uuid.uuid4())
    return NewEvent(
        request_id=rid,
        route="r",
        fal_status="OK",
        error=None,
        payload_error=None,
        gateway_request_id=None,
        headers={},
        body=b"{}",
        files=[],
        sinks=sinks,
    )


async def eventually(check: Callable[[], Awaitable[object]], *, timeout: float = 30) -> object:
    """Await check() until it returns something truthy, or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.fixture
def schema(tmp_path: Path) -> str:
    return pg_schema(tmp_path)


@pytest.fixture
async def admin() -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(PG_URL)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def opened(url: str, schema: str, **kw: int) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, schema=schema, **kw)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# --- intake's group commit ---------------------------------------------------------------------


async def test_concurrent_accepts_share_a_statement_each_with_its_own_answer(
    schema: str, admin: asyncpg.Connection
) -> None:
    notified: list[str] = []
    channel = f"falhook_work:{schema}"
    await admin.add_listener(channel, lambda *args: notified.append(args[-1]))
    async with opened(PG_URL, schema) as store:
        stored = event()
        assert await store.accept(stored)
        assert store._intake is not None
        before = store._intake.batches
        fresh = [event(("a", "b")) for _ in range(40)]
        twice = event()
        bad = dataclasses.replace(event(), error="a NUL byte \x00 PostgreSQL text refuses")
        answers = await asyncio.gather(
            *(store.accept(e) for e in [*fresh, stored, twice, twice, bad]),
            return_exceptions=True,
        )
        batches = store._intake.batches - before
        assert answers[:40] == [True] * 40
        assert answers[40:43] == [False, True, False]  # stored before; the first of two wins
        assert isinstance(answers[43], StoreUnavailable)  # one bad event fails alone
        assert batches == 1  # one statement for all of them (then the fallback, one by one)
        for e in fresh:
            view = await store.get_event(e.request_id)
            assert view is not None and sorted(view.deliveries) == ["a", "b"]
        assert await store.get_event(bad.request_id) is None
        await eventually(lambda: asyncio.sleep(0, result=len(notified) >= 1))
    # NOTIFY once per batch (at most one more queued behind the first accept's own).
    assert len(notified) <= 3


# --- migrations --------------------------------------------------------------------------------


async def test_concurrent_opens_on_a_fresh_schema_migrate_once(
    schema: str, admin: asyncpg.Connection
) -> None:
    stores = [PostgresStore(PG_URL, schema=schema) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))  # none fails on a half-made schema
        rows = await admin.fetch(f'SELECT version FROM "{schema}".schema_migrations')
        assert sorted(r["version"] for r in rows) == list(range(1, SCHEMA_VERSION + 1))
        assert await stores[0].accept(event()) and len(await stores[3].list_events()) == 1
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_schema_newer_than_this_falhook_is_refused(
    schema: str, admin: asyncpg.Connection
) -> None:
    async with opened(PG_URL, schema):
        pass
    await admin.execute(f'INSERT INTO "{schema}".schema_migrations (version) VALUES (999)')
    with pytest.raises(RuntimeError, match="newer than this falhook"):
        await PostgresStore(PG_URL, schema=schema).open()


def test_a_schema_name_that_needs_quoting_is_refused() -> None:
    with pytest.raises(ValueError, match="schema"):
        PostgresStore(PG_URL, schema='x"; DROP TABLE events; --')


# --- leases across processes -------------------------------------------------------------------


async def test_two_stores_leasing_at_once_never_share_a_delivery(schema: str) -> None:
    async with opened(PG_URL, schema) as one, opened(PG_URL, schema) as two:
        events = [event(sinks=("a", "b")) for _ in range(150)]
        await asyncio.gather(*(one.accept(e) for e in events))
        taken: list[tuple[str, str]] = []

        async def drain(store: PostgresStore, owner: str) -> None:
            for _ in range(200):  # bounded: 300 deliveries, at least one each round
                jobs = await store.lease(owner=owner, limit=5, lease_seconds=60)
                if not jobs:
                    return
                taken.extend((j.event.request_id, d.sink) for j in jobs for d in j.deliveries)

        workers = [drain(s, f"w{i}") for i in range(4) for s in (one, two)]
        await asyncio.gather(*workers)
        assert len(taken) == 300 and len(set(taken)) == 300
        assert await one.counts() == {"delivering": 300}


# --- wake-ups ----------------------------------------------------------------------------------


async def test_an_accept_in_one_store_wakes_a_waiter_in_another(schema: str) -> None:
    async with opened(PG_URL, schema) as receiver, opened(PG_URL, schema) as worker:
        await worker.wait_for_work(0.01)  # start from a quiet state
        waiter = asyncio.create_task(worker.wait_for_work(120))
        await asyncio.sleep(0)
        await receiver.accept(event())
        await asyncio.wait_for(waiter, 10)  # the notification, long before 120 s

        e = event()
        await receiver.accept(e)
        await worker.wait_for_work(0.01)
        waiter = asyncio.create_task(worker.wait_for_work(120))
        await asyncio.sleep(0)
        assert await receiver.replay(e.request_id) == 1
        await asyncio.wait_for(waiter, 10)


async def test_a_dropped_listen_connection_comes_back(
    schema: str, admin: asyncpg.Connection
) -> None:
    async with opened(PG_URL, schema) as receiver, opened(PG_URL, schema) as worker:
        before = worker.listener_pid()
        assert before is not None
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", before)

        async def new_listener() -> bool:
            pid = worker.listener_pid()
            return pid is not None and pid != before

        await eventually(new_listener)
        await worker.wait_for_work(0.01)  # the reconnect's own "look for work" wake-up
        waiter = asyncio.create_task(worker.wait_for_work(120))
        await asyncio.sleep(0)
        await receiver.accept(event())
        await asyncio.wait_for(waiter, 10)


# --- an unreachable server ---------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_an_unreachable_server_is_store_unavailable_and_the_password_stays_out() -> None:
    url = f"postgresql://falhook:s3cret-pw@127.0.0.1:{closed_port()}/test"
    store = PostgresStore(url)
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert "s3cret-pw" not in str(info.value) and "s3cret-pw" not in repr(store)
    assert await store.ping() is False
    with pytest.raises(StoreUnavailable):
        await store.accept(event())


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


class Proxy:
    """A TCP relay on loopback in front of PostgreSQL that can be cut and restored: the
    database going away and coming back, as seen by falhook."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = closed_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_accept_while_the_server_is_away_is_store_unavailable_then_recovers(
    schema: str,
) -> None:
    proxy = Proxy(("127.0.0.1", 5432))
    await proxy.start()
    url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert url != PG_URL
    async with opened(url, schema) as store:
        assert await store.accept(event())
        await proxy.cut()
        with pytest.raises(StoreUnavailable):
            await store.accept(event())
        assert await store.ping() is False
        await proxy.start()  # the database is back: the pool reconnects by itself
        assert await eventually(store.ping)
        assert await store.accept(event())

        async def listening_again() -> bool:
            return store.listener_pid() is not None

        await eventually(listening_again)
        await proxy.cut()
