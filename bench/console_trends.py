"""The overview's trends over a day of history, on SQLite and PostgreSQL: a whole read
(`ConsoleReader.delivery_trends`, the last day in 96 buckets, what the first look costs) and
a look after that (`console.overview.DayTrends`: the newest buckets read again, the rest
moved on, what each live refresh costs), against the last hour's statistics
(`delivery_stats`, what the overview read before the charts) measured in the same run.

    python bench/console_trends.py [--events 100000] [--repeat 20] [--stores sqlite,postgres]

Events are stored through the store's own accept, spread evenly over the last 23 hours, each
with two deliveries; then every delivery gets an attempt some seconds after its event arrived
(1 in 20 a retry first, 1 in 100 dead in the end), written in bulk with SQL. The time is the
store call's, in this process; the ratio trends / stats is what to compare across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from common import ROOT

from falhook.console.overview import DayTrends
from falhook.store.models import NewEvent, utcnow
from falhook.store.postgres import PostgresStore
from falhook.store.sqlite import SQLiteStore
from falhook.store.trends import window_ending

PG_URL = os.environ.get("FALHOOK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SPREAD = 23 * 3600.0  # seconds: within the overview's day, whatever its alignment


def new_event(i: int, count: int, now: Any) -> NewEvent:
    rid = str(uuid.UUID(int=i + 1))
    body = b'{"request_id": "%s", "status": "OK", "payload": {"prompt": "bench"}}' % rid.encode()
    return NewEvent(
        request_id=rid,
        route="default",
        fal_status="OK",
        error=None,
        payload_error=None,
        gateway_request_id=rid,
        headers={},
        body=body,
        files=[],
        sinks=("disk", "slack"),
        received_at=now - timedelta(seconds=SPREAD * (count - i) / count),
    )


async def fill(store: Any, count: int) -> float:
    began = time.perf_counter()
    now = utcnow()
    for first in range(0, count, 500):
        batch = [new_event(i, count, now) for i in range(first, min(count, first + 500))]
        await asyncio.gather(*(store.accept(e) for e in batch))
    return time.perf_counter() - began


SQLITE_HISTORY = [
    "INSERT INTO attempts (event_id, sink, at, outcome, error, duration_ms)"
    " SELECT d.event_id, d.sink, e.received_at + 1, 'retry', 'busy', 80"
    " FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.event_id % 20 = 0",
    "INSERT INTO attempts (event_id, sink, at, outcome, error, duration_ms)"
    " SELECT d.event_id, d.sink, e.received_at + 2 + (abs(random()) % 30000) / 1000.0,"
    " CASE WHEN d.event_id % 100 = 0 THEN 'dead' ELSE 'delivered' END, NULL, 120"
    " FROM deliveries d JOIN events e ON e.id = d.event_id",
    "UPDATE deliveries SET attempts = 1,"
    " state = CASE WHEN event_id % 100 = 0 THEN 'dead' ELSE 'delivered' END",
    "ANALYZE",
]
PG_HISTORY = [
    "INSERT INTO attempts (request_id, sink, at, outcome, error, duration_ms)"
    " SELECT d.request_id, d.sink, e.received_at + interval '1 second', 'retry', 'busy', 80"
    " FROM deliveries d JOIN events e USING (request_id)"
    " WHERE abs(hashtext(d.request_id)) % 20 = 0",
    "INSERT INTO attempts (request_id, sink, at, outcome, error, duration_ms)"
    " SELECT d.request_id, d.sink, e.received_at + (2 + random() * 30) * interval '1 second',"
    " CASE WHEN abs(hashtext(d.request_id)) % 100 = 0 THEN 'dead' ELSE 'delivered' END,"
    " NULL, 120 FROM deliveries d JOIN events e USING (request_id)",
    "UPDATE deliveries SET attempts = 1, state = CASE WHEN abs(hashtext(request_id)) % 100 = 0"
    " THEN 'dead' ELSE 'delivered' END",
    "ANALYZE",
]


async def history(store: Any) -> None:
    if isinstance(store, SQLiteStore):

        def op(c: Any) -> None:
            for statement in SQLITE_HISTORY:
                c.execute(statement)

        await store._write(op)
        return
    async with store._conn() as conn:
        for statement in PG_HISTORY:
            await conn.execute(statement)


async def timed(call: Any, repeat: int) -> list[float]:
    await call()  # warm caches and connections
    took = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()
        took.append((time.perf_counter() - began) * 1000)
    return took


async def run(backend: str, count: int, repeat: int, work: Path) -> None:
    schema = f"falhook_bench_trends_{os.getpid()}"
    store: Any = (
        SQLiteStore(work / "trends.db")
        if backend == "sqlite"
        else PostgresStore(PG_URL, schema=schema)
    )
    await store.open()
    try:
        seconds = await fill(store, count)
        await history(store)
        print(f"{backend}: {count} events, {2 * count} deliveries stored in {seconds:.1f} s")
        trends = await store.delivery_trends(window_ending(utcnow()))
        assert sum(trends.received) == count, sum(trends.received)
        day = await timed(lambda: store.delivery_trends(window_ending(utcnow())), repeat)
        ticks = [0.0]
        looks = DayTrends(store, monotonic=lambda: ticks.__setitem__(0, ticks[0] + 2) or ticks[0])
        look = await timed(looks.get, repeat)
        hour = await timed(lambda: store.delivery_stats(utcnow() - timedelta(hours=1)), repeat)
        base = statistics.median(hour)
        for name, took in (("trends, whole day", day), ("trends, a look after", look),
                           ("stats, the last hour", hour)):  # fmt: skip
            p50 = statistics.median(took)
            print(f"{backend:8} {name:22} p50 {p50:8.1f} ms   max {max(took):8.1f} ms"
                  f"   {p50 / base:5.2f} x stats", flush=True)  # fmt: skip
    finally:
        if backend == "postgres":
            async with store._conn() as conn:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await store.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--stores", default="sqlite,postgres")
    ap.add_argument("--workdir", default="/tmp/falhook-bench-trends")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("trends.db*"):
        old.unlink()
    for backend in args.stores.split(","):
        asyncio.run(run(backend, args.events, args.repeat, work))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
