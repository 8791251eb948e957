"""Store backends the semantic suite (tests/inprocess/test_store.py) runs against.

Adding a backend: give it a name in STORE_BACKENDS and a branch in make_backend. The same
(name, tmp_path) must give a store on the same data, so that reopen_backend sees what an
earlier open_backend wrote (the durability test) and two stores can share it (the
multi-process leasing test); a different tmp_path must give an empty store.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

from falhook.store.postgres import PostgresStore
from falhook.store.roles import Store
from falhook.store.sqlite import SQLiteStore

STORE_BACKENDS: list[str] = ["sqlite", "postgres"]

# The machine's PostgreSQL (trust auth on loopback); each test gets its own schema.
PG_URL = os.environ.get("FALHOOK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_SESSION = secrets.token_hex(4)
_PG_SCHEMAS: set[str] = set()


def pg_schema(tmp_path: Path) -> str:
    """This test session's schema for tmp_path (same path, same schema); dropped at exit."""
    digest = hashlib.blake2b(str(tmp_path).encode(), digest_size=6).hexdigest()
    name = f"falhook_t_{_SESSION}_{digest}"
    if not _PG_SCHEMAS:
        atexit.register(_drop_pg_schemas)
    _PG_SCHEMAS.add(name)
    return name


def _drop_pg_schemas() -> None:
    drop_pg_schemas(sorted(_PG_SCHEMAS))


def drop_pg_schemas(names: list[str]) -> None:
    """Drop these schemas now (from synchronous code: no event loop may be running)."""

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_URL, timeout=10)
        try:
            # A backend of a just-killed process may still hold a lock for a moment; wait for
            # it, but never hang a test session on it.
            await conn.execute("SET lock_timeout = '10s'")
            for name in names:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
    _PG_SCHEMAS.difference_update(names)


async def pg_schema_text(schema: str) -> str:
    """Every row of every table in the schema, as text: to look for what must not be stored."""
    import asyncpg

    conn = await asyncpg.connect(PG_URL, timeout=10)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            schema,
        )
        parts = []
        for t in tables:
            rows = await conn.fetch(f'SELECT x::text AS row FROM "{schema}"."{t[0]}" x')
            parts += [r["row"] for r in rows]
        return "\n".join(parts)
    finally:
        await conn.close()


def store_section(name: str, tmp_path: Path) -> dict[str, str]:
    """The `[store]` table of a falhook config on this backend, for tmp_path's data: what
    `falhook serve`/`falhook worker` processes of one test share."""
    if name == "sqlite":
        return {"url": f"sqlite:///{tmp_path}/data/events.db"}
    if name == "postgres":
        return {"url": PG_URL, "schema": pg_schema(tmp_path)}
    raise ValueError(f"unknown store backend {name!r}")


def make_backend(name: str, tmp_path: Path) -> Store:
    """A store of this backend, not yet opened; same arguments, same data."""
    if name == "sqlite":
        return SQLiteStore(tmp_path / "store.db")
    if name == "postgres":
        return PostgresStore(PG_URL, schema=pg_schema(tmp_path), max_pool=4)
    raise ValueError(f"unknown store backend {name!r}")


@asynccontextmanager
async def open_backend(name: str, tmp_path: Path) -> AsyncIterator[Store]:
    """Open a store for this test, yield it, close it."""
    store = make_backend(name, tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def reopen_backend(name: str, tmp_path: Path) -> AsyncIterator[Store]:
    """Another store on the data open_backend(name, tmp_path) used: a restart, or a second
    process (`falhook serve` beside `falhook worker`)."""
    async with open_backend(name, tmp_path) as store:
        yield store


async def retime(
    store: Store,
    request_id: str,
    sink: str,
    attempts: list[datetime],
    *,
    updated_at: datetime | None = None,
    received_at: datetime | None = None,
) -> None:
    """Move a delivery's history into the past: its attempts (oldest first) to these
    times, its last change to `updated_at`, its event's arrival to `received_at` (a seeded
    history for the trends)."""
    if isinstance(store, SQLiteStore):

        def move(c: sqlite3.Connection) -> None:
            event_id = c.execute("SELECT id FROM events WHERE request_id = ?", (request_id,))
            [eid] = event_id.fetchone()
            rows = c.execute(
                "SELECT rowid FROM attempts WHERE event_id = ? AND sink = ? ORDER BY at, rowid",
                (eid, sink),
            ).fetchall()
            assert len(rows) == len(attempts), (request_id, sink, len(rows))
            for (rowid,), at in zip(rows, attempts, strict=True):
                c.execute("UPDATE attempts SET at = ? WHERE rowid = ?", (at.timestamp(), rowid))
            if updated_at is not None:
                c.execute(
                    "UPDATE deliveries SET updated_at = ? WHERE event_id = ? AND sink = ?",
                    (updated_at.timestamp(), eid, sink),
                )
            if received_at is not None:
                c.execute(
                    "UPDATE events SET received_at = ? WHERE id = ?", (received_at.timestamp(), eid)
                )

        await store._write(move)
        return
    assert isinstance(store, PostgresStore)
    async with store._conn() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT ctid FROM attempts WHERE request_id = $1 AND sink = $2 ORDER BY at",
            request_id,
            sink,
        )
        assert len(rows) == len(attempts), (request_id, sink, len(rows))
        for row, at in zip(rows, attempts, strict=True):
            await conn.execute("UPDATE attempts SET at = $1 WHERE ctid = $2", at, row["ctid"])
        if updated_at is not None:
            await conn.execute(
                "UPDATE deliveries SET updated_at = $1 WHERE request_id = $2 AND sink = $3",
                updated_at,
                request_id,
                sink,
            )
        if received_at is not None:
            await conn.execute(
                "UPDATE events SET received_at = $1 WHERE request_id = $2", received_at, request_id
            )
