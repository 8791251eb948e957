"""The console's event list API with 100,000 stored events: server time of the first page
and of a filtered, searched page, p50 and p99, on SQLite and PostgreSQL.

    python bench/console_list.py [--events 100000] [--requests 300] [--stores sqlite,postgres]

Events are stored through the store's own accept (the search index is filled as in
production), with reframe-shaped payloads whose prompts draw words from a vocabulary; 1 in
100 deliveries is dead with an error. Each request goes through the console's ASGI app in
this process (httpx.ASGITransport), so the time is the server's: routing, access check,
queries, JSON. Targets: first page p99 < 200 ms, search p99 < 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
from common import ROOT, median

from falhook.app import create_console_app
from falhook.config import settings_from_dict
from falhook.store.models import EventQuery, NewEvent, utcnow

PG_URL = os.environ.get("FALHOOK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
WORDS = [
    "harbour",
    "dawn",
    "neon",
    "street",
    "rain",
    "forest",
    "pine",
    "glacier",
    "desert",
    "dune",
    "canyon",
    "city",
    "skyline",
    "night",
    "lighthouse",
    "storm",
    "ocean",
    "wave",
    "sunset",
    "mountain",
    "river",
    "bridge",
    "train",
    "station",
    "market",
    "lantern",
    "festival",
    "snow",
    "winter",
    "spring",
    "garden",
    "orchard",
    "vineyard",
    "castle",
    "tower",
    "ruin",
    "temple",
    "jungle",
]
TOKEN = "bench-console-token-0123"


def payload(i: int, rng: random.Random) -> dict[str, Any]:
    prompt = " ".join(rng.choice(WORDS) for _ in range(12)) + f" shot {i}"
    return {
        "video": {
            "url": f"https://v3.fal.media/files/bench/{i}/output.mp4",
            "content_type": "video/mp4",
            "file_name": "output.mp4",
            "file_size": 4404019,
        },
        "prompt": prompt,
        "seed": i,
    }


def new_event(i: int, rng: random.Random, start: Any) -> NewEvent:
    rid = str(uuid.UUID(int=rng.getrandbits(128)))
    body = msgspec.json.encode(
        {"request_id": rid, "gateway_request_id": rid, "status": "OK", "payload": payload(i, rng)}
    )
    return NewEvent(
        request_id=rid,
        route="reframe" if i % 3 else "default",
        fal_status="OK",
        error=None,
        payload_error=None,
        gateway_request_id=rid,
        headers={"x-fal-webhook-request-id": rid},
        body=body,
        files=[{"path": "video", "url": f"https://v3.fal.media/files/bench/{i}/output.mp4"}],
        sinks=("local",),
        received_at=start + timedelta(milliseconds=i * 10),
    )


async def fill(store: Any, count: int) -> float:
    rng = random.Random(7)
    start = utcnow() - timedelta(days=2)
    began = time.perf_counter()
    batch = 500
    for first in range(0, count, batch):
        events = [new_event(i, rng, start) for i in range(first, min(count, first + batch))]
        await asyncio.gather(*(store.accept(e) for e in events))
    return time.perf_counter() - began


async def settle(store: Any, backend: str) -> None:
    """Most deliveries delivered, 1 in 100 dead with an error (the 'needs action' kind)."""
    dead_error = "images[0]: the file server answered 404"
    if backend == "sqlite":

        def op(c: Any) -> None:
            c.execute("UPDATE deliveries SET state = 'delivered', attempts = 1")
            c.execute(
                "UPDATE deliveries SET state = 'dead', last_error = ? WHERE event_id % 100 = 0",
                (dead_error,),
            )

        await store._write(op)
        return
    async with store._conn() as conn:
        await conn.execute("UPDATE deliveries SET state = 'delivered', attempts = 1")
        await conn.execute(
            "UPDATE deliveries SET state = 'dead', last_error = $1"
            " WHERE abs(hashtext(request_id)) % 100 = 0",
            dead_error,
        )
        await conn.execute("ANALYZE")


async def timed(client: httpx.AsyncClient, url: str) -> float:
    began = time.perf_counter()
    resp = await client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    took = (time.perf_counter() - began) * 1000
    if resp.status_code != 200:
        raise RuntimeError(f"{url}: {resp.status_code} {resp.text[:200]}")
    return took


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def measure(app: Any, requests: int) -> dict[str, list[float]]:
    rng = random.Random(11)
    transport = httpx.ASGITransport(app=app)
    kinds: dict[str, list[float]] = {"first page": [], "filtered search": [], "search": []}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        first = await client.get(
            "/console/api/events?limit=50", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        cursor = first.json()["next_cursor"]
        kinds["next page"] = []
        for _ in range(3):  # warm caches and connections
            await timed(client, "/console/api/events?limit=50")
        for i in range(requests):
            word = rng.choice(WORDS)
            kinds["first page"].append(await timed(client, "/console/api/events?limit=50"))
            kinds["next page"].append(
                await timed(client, f"/console/api/events?limit=50&cursor={cursor}")
            )
            kinds["search"].append(await timed(client, f"/console/api/events?limit=50&q={word}"))
            rare = f"shot {rng.randrange(100000)}" if i % 2 else "404"
            kinds["filtered search"].append(
                await timed(
                    client,
                    f"/console/api/events?limit=50&route=reframe&state=delivered&q={rare}",
                )
            )
    return kinds


async def run(backend: str, count: int, requests: int, work: Path, keep: str | None) -> None:
    schema = keep or f"falhook_bench_{os.getpid()}"
    store_section: dict[str, Any] = (
        {"url": f"sqlite:///{work}/console.db"}
        if backend == "sqlite"
        else {"url": PG_URL, "schema": schema}
    )
    config = {
        "store": store_section,
        "console": {"token": TOKEN},
        "sinks": {"local": {"type": "disk", "root": str(work / "files")}},
        "routes": {"default": {"sinks": ["local"]}, "reframe": {"sinks": ["local"]}},
    }
    app = create_console_app(settings_from_dict(config, base_dir=work))
    runtime = app.runtime
    await runtime.start()
    try:
        if not (keep and await runtime.store.count_events(EventQuery()) >= count):
            seconds = await fill(runtime.store, count)
            await settle(runtime.store, backend)
            print(f"{backend}: stored {count} events in {seconds:.1f} s ({count / seconds:.0f}/s)")
        results = await measure(app, requests)
        for kind, values in results.items():
            print(
                f"{backend:8} {kind:16} p50 {median(values):7.1f} ms   p99 {p99(values):7.1f} ms"
                f"   ({len(values)} requests)",
                flush=True,
            )
    finally:
        if backend == "postgres" and not keep:
            async with runtime.store._conn() as conn:  # type: ignore[attr-defined]
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await runtime.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--stores", default="sqlite,postgres")
    ap.add_argument("--workdir", default="/tmp/falhook-bench-console")
    ap.add_argument("--keep", metavar="SCHEMA", help="PostgreSQL: keep (and reuse) this schema")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if not args.keep:
        for old in work.glob("console.db*"):
            old.unlink()
    for backend in args.stores.split(","):
        asyncio.run(run(backend, args.events, args.requests, work, args.keep))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
