"""Worker CPU per delivered small event: this falhook against another checkout (the code
before a change: `git worktree add /tmp/base <commit>`), same run, rounds interleaved.

Each side, on each store (SQLite, PostgreSQL): its own `falhook serve --no-worker` accepts N
signed webhooks of one 4 KiB file each (a loopback file server), the batch is parked (due in
an hour), its own `falhook worker` starts (disk sink, default [delivery] settings), then the
batch is made due at once; the worker process's CPU (/proc) from then to the last delivery,
divided by N. Each side creates its own store with its own schema.

    .venv/bin/python bench/worker_cpu.py --baseline /tmp/base [--events 500] [--rounds 3]
        [--stores sqlite,postgres] [--pg-url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from common import ROOT, falhook_config, free_port, median, serve_command, start, stop, wait_http
from intake import baseline_env, process_cpu
from scaleout import DEFAULT_PG, accept_batch, wait_log

from falhook.testing import FalSigner, JWKSServer


def park_or_release(store: str, url: str, schema: str, release: bool) -> None:
    """All deliveries due in an hour (parked) or now (released)."""
    if store == "sqlite":
        due = "strftime('%s','now')" + ("" if release else " + 3600")
        with sqlite3.connect(url) as conn:
            conn.execute(f"UPDATE deliveries SET next_attempt_at = {due}")
        return

    async def update() -> None:
        conn = await asyncpg.connect(url)
        try:
            due = "now()" if release else "now() + interval '1 hour'"
            await conn.execute(f'UPDATE "{schema}".deliveries SET next_attempt_at = {due}')
            await conn.execute("SELECT pg_notify($1, '')", f"falhook_work:{schema}")
        finally:
            await conn.close()

    asyncio.run(update())


def delivered(store: str, url: str, schema: str) -> int:
    sql = "SELECT count(*) FROM {}deliveries WHERE state = 'delivered'"
    if store == "sqlite":
        with sqlite3.connect(url) as conn:
            return int(conn.execute(sql.format("")).fetchone()[0])

    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval(sql.format(f'"{schema}".')))
        finally:
            await conn.close()

    return asyncio.run(count())


def one_run(side: str, store: str, args: argparse.Namespace, jwks_url: str, fport: int) -> float:
    """Milliseconds of worker CPU per delivered event."""
    work = Path(tempfile.mkdtemp(prefix=f"falhook-bench-cpu-{side}-", dir=args.tmp))
    schema = f"bench_{secrets.token_hex(4)}"
    section = (
        {"url": f"sqlite:///{work}/data/events.db"}
        if store == "sqlite"
        else {"url": args.pg_url, "schema": schema}
    )
    config = falhook_config(
        work,
        jwks_url,
        store=section,
        delivery={"poll_interval": 0.05},
        sinks={"local": {"type": "disk", "root": str(work / "out")}},
    )
    env = baseline_env(args.baseline) if side == "baseline" else None
    port = free_port()
    receiver = start(serve_command(config, port, "--no-worker"), log=work / "serve.log", env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        accept_batch(port, args.signer, fport, args)
    finally:
        stop(receiver)
    url = str(work / "data" / "events.db") if store == "sqlite" else args.pg_url
    park_or_release(store, url, schema, release=False)
    worker_cmd = [sys.executable, "-m", "falhook.cli", "worker", "--config", str(config)]
    worker = start(worker_cmd, log=work / "worker.log", env=env)
    try:
        wait_log(work / "worker.log", "worker started", worker)
        cpu0 = process_cpu(worker.pid)
        split0 = user_system(worker.pid)
        spy = None
        if args.profile and side == "candidate":
            spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(worker.pid), "-r", "200", "-f", "raw",
                 "-o", f"{args.profile}.{store}", "--nonblocking", "--threads"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        park_or_release(store, url, schema, release=True)
        deadline = time.monotonic() + 300
        while delivered(store, url, schema) < args.events:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"{side} on {store}: not delivered (logs in {work})")
            time.sleep(0.05)
        used = process_cpu(worker.pid) - cpu0
        user, system = (b - a for a, b in zip(split0, user_system(worker.pid), strict=True))
        print(f"  {side} {store}: user {user / args.events * 1000:.2f} ms, system"
              f" {system / args.events * 1000:.2f} ms per event", flush=True)  # fmt: skip
    finally:
        stop(worker)
    if spy is not None:
        spy.wait(timeout=60)
    if store == "postgres":
        asyncio.run(drop_schema(args.pg_url, schema))
    shutil.rmtree(work, ignore_errors=True)
    return used / args.events * 1000


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the other checkout")
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--file-kb", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stores", default="sqlite,postgres")
    ap.add_argument("--pg-url", default=DEFAULT_PG)
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument(
        "--profile", help="py-spy this falhook's worker (pip install py-spy), to FILE.STORE"
    )
    args = ap.parse_args()
    args.signer = FalSigner()
    jwks = JWKSServer()
    jwks.set_jwks(args.signer.jwks())
    jwks.start()
    files = Path(tempfile.mkdtemp(prefix="falhook-bench-files-"))
    for i in range(args.events):
        (files / f"clip_{i}.mp4").write_bytes(os.urandom(args.file_kb * 1024))
    fport = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fileserver.py"), str(files), str(fport)]
    )
    sides = ["baseline", "candidate"]
    results: dict[tuple[str, str], list[float]] = {}
    try:
        wait_http(f"http://127.0.0.1:{fport}/clip_0.mp4")
        for rnd in range(args.rounds):
            for store in args.stores.split(","):
                for side in sides[rnd % 2 :] + sides[: rnd % 2]:  # alternating which goes first
                    ms = one_run(side, store, args, jwks.url, fport)
                    results.setdefault((side, store), []).append(ms)
                    print(f"round {rnd} {store:8} {side:9} {ms:.2f} ms CPU per event", flush=True)
    finally:
        server.terminate()
        server.wait()
        jwks.stop()
        shutil.rmtree(files, ignore_errors=True)
    for store in args.stores.split(","):
        base, cand = results[("baseline", store)], results[("candidate", store)]
        ratios = [c / b for b, c in zip(base, cand, strict=True)]
        print(
            f"{store}: baseline {median(base):.2f} ms, candidate {median(cand):.2f} ms per event;"
            f" candidate/baseline median {median(ratios):.2f}"
            f" (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
