"""asyncpg vs psycopg 3 for falhook's PostgreSQL store, measured in one run.

The workload is what `accept` does: one transaction inserting an event (ON CONFLICT DO
NOTHING, RETURNING) and, when new, its deliveries. N concurrent tasks share a pool of N
connections. Both drivers run against the same server in the same run, interleaved, so the
ratio holds on a noisy shared machine even when the absolute figures do not. Cold import time
(a fresh interpreter importing the driver) is measured too: it is paid by every CLI command
and every Lambda cold start.

    .venv/bin/python bench/pg_driver.py [--url postgresql://postgres@127.0.0.1:5432/test]
        [--tasks 16] [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

DEFAULT_URL = os.environ.get("FALHOOK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BODY = b'{"request_id": "x", "status": "OK", "payload": {"video": {"url": "https://x"}}}' * 8

DDL = [
    """CREATE TABLE {s}.events (request_id text PRIMARY KEY, route text NOT NULL,
       received_at timestamptz NOT NULL DEFAULT now(), body bytea NOT NULL)""",
    """CREATE TABLE {s}.deliveries (request_id text NOT NULL REFERENCES {s}.events,
       sink text NOT NULL, state text NOT NULL DEFAULT 'pending',
       next_attempt_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (request_id, sink))""",
]
INSERT_EVENT = (
    "INSERT INTO {s}.events (request_id, route, body) VALUES ($1, $2, $3)"
    " ON CONFLICT DO NOTHING RETURNING 1"
)
INSERT_DELIVERIES = "INSERT INTO {s}.deliveries (request_id, sink) SELECT $1, unnest($2::text[])"


def _psycopg_sql(sql: str) -> str:
    # psycopg uses %s placeholders where asyncpg uses $n.
    for n in range(9, 0, -1):
        sql = sql.replace(f"${n}", "%s")
    return sql


async def _drive(one: Callable[[], Awaitable[None]], tasks: int, seconds: float) -> float:
    """Transactions per second with `tasks` concurrent loops, each bounded by the deadline."""
    done = 0
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await one()
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(tasks)))
    return done / (time.monotonic() - start)


async def bench_asyncpg(url: str, schema: str, tasks: int, seconds: float, sync: str) -> float:
    import asyncpg

    pool = await asyncpg.create_pool(
        url, min_size=tasks, max_size=tasks, server_settings={"synchronous_commit": sync}
    )
    ins_e, ins_d = INSERT_EVENT.format(s=schema), INSERT_DELIVERIES.format(s=schema)

    async def one() -> None:
        rid = uuid.uuid4().hex
        async with pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(ins_e, rid, "r", BODY) is not None:
                await conn.execute(ins_d, rid, ["a", "b"])

    try:
        return await _drive(one, tasks, seconds)
    finally:
        await pool.close()


async def bench_psycopg(url: str, schema: str, tasks: int, seconds: float, sync: str) -> float:
    from psycopg_pool import AsyncConnectionPool  # type: ignore[import-not-found]

    kwargs = {"options": f"-c synchronous_commit={sync}"}
    pool = AsyncConnectionPool(url, min_size=tasks, max_size=tasks, open=False, kwargs=kwargs)
    await pool.open(wait=True)
    ins_e = _psycopg_sql(INSERT_EVENT.format(s=schema))
    ins_d = _psycopg_sql(INSERT_DELIVERIES.format(s=schema))

    async def one() -> None:
        rid = uuid.uuid4().hex
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(ins_e, (rid, "r", BODY))
            if await cur.fetchone() is not None:
                await conn.execute(ins_d, (rid, ["a", "b"]))

    try:
        return await _drive(one, tasks, seconds)
    finally:
        await pool.close()


async def bench_psycopg_plain(
    url: str, schema: str, tasks: int, seconds: float, sync: str
) -> float:
    """psycopg without psycopg_pool (not installed here): one connection per task."""
    import psycopg

    options = f"-c synchronous_commit={sync}"
    conns = [await psycopg.AsyncConnection.connect(url, options=options) for _ in range(tasks)]
    free: asyncio.Queue[psycopg.AsyncConnection] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    ins_e = _psycopg_sql(INSERT_EVENT.format(s=schema))
    ins_d = _psycopg_sql(INSERT_DELIVERIES.format(s=schema))

    async def one() -> None:
        rid = uuid.uuid4().hex
        conn = await free.get()
        try:
            async with conn.transaction():
                cur = await conn.execute(ins_e, (rid, "r", BODY))
                if await cur.fetchone() is not None:
                    await conn.execute(ins_d, (rid, ["a", "b"]))
        finally:
            free.put_nowait(conn)

    try:
        return await _drive(one, tasks, seconds)
    finally:
        for c in conns:
            await c.close()


def cold_import(module: str, runs: int = 5) -> float:
    """Median wall time of `python -c "import module"` minus a bare interpreter's."""

    def timed(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        return time.perf_counter() - start

    bare = statistics.median(timed("pass") for _ in range(runs))
    return statistics.median(timed(f"import {module}") for _ in range(runs)) - bare


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import asyncpg

    schema = f"falhook_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        for ddl in DDL:
            await admin.execute(ddl.format(s=schema))
        try:
            import psycopg_pool  # type: ignore[import-not-found]  # noqa: F401

            psycopg_bench = bench_psycopg
            psycopg_name = "psycopg 3 + psycopg_pool"
        except ImportError:
            psycopg_bench = bench_psycopg_plain
            psycopg_name = "psycopg 3 (a connection per task)"
        # "on": durable commits, as accept needs them (the server's fsync dominates).
        # "off": the same work without waiting for the WAL flush: the drivers' own cost.
        for sync in ("on", "off"):
            results: dict[str, list[float]] = {"asyncpg": [], "psycopg": []}
            for _ in range(args.rounds):  # interleaved, so drift hits both alike
                results["asyncpg"].append(
                    await bench_asyncpg(args.url, schema, args.tasks, args.seconds, sync)
                )
                results["psycopg"].append(
                    await psycopg_bench(args.url, schema, args.tasks, args.seconds, sync)
                )
            a = statistics.median(results["asyncpg"])
            p = statistics.median(results["psycopg"])
            print(
                f"accept-like transactions/s, synchronous_commit={sync}, {args.tasks} tasks,"
                f" {args.rounds} rounds (median, then each round):"
            )
            print(f"  asyncpg   {a:8.0f}  {[round(x) for x in results['asyncpg']]}")
            print(
                f"  psycopg   {p:8.0f}  {[round(x) for x in results['psycopg']]}  ({psycopg_name})"
            )
            print(f"  ratio asyncpg/psycopg: {a / p:.2f}")
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    ia, ip = cold_import("asyncpg"), cold_import("psycopg")
    print("cold import (median of 5, minus a bare interpreter):")
    print(f"  asyncpg  {ia * 1000:6.0f} ms")
    print(f"  psycopg  {ip * 1000:6.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
