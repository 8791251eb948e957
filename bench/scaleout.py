"""Scale-out on PostgreSQL, measured against a baseline in the same run.

intake:   signed webhooks/s through 2 `falhook serve --no-worker` receivers on PostgreSQL
          against 1 `falhook serve --no-worker` on SQLite. One wrk, same threads and
          connections for both: with PostgreSQL its threads are split between the two
          receivers (bench/replay.lua, $FALHOOK_BENCH_PORTS), so one latency histogram covers
          both. A fresh request_id per request; rounds interleaved (SQLite, PostgreSQL, ...).
delivery: N events, each with one small file on a loopback file server (bench/fileserver.py),
          accepted by a receiver into PostgreSQL, then delivered to the disk sink by
          1 `falhook worker`, 3 `falhook worker` processes, and (a control) 1 worker with
          [delivery].concurrency 24 instead of 8; events/s from making the batch due (workers
          already up) to its last delivery, rounds interleaved. First with a file server
          answering at once (CPU-bound here), then with each answer held DELAY ms (a distant
          storage service): there a worker's rate is bounded by its downloads in flight /
          DELAY, and more processes raise that bound until CPU caps it again.

Nothing is pinned: receivers, workers, PostgreSQL, the file server and wrk share this
machine's cores, and the output says how much CPU each took.

    .venv/bin/python bench/scaleout.py [intake|delivery|all] [--rounds 3]
        [--duration 10] [--connections 64] [--threads 2] [--requests 60000]
        [--events 300] [--file-kb 4] [--delay-ms 50,200] [--pg-url postgresql://...]

It creates its own database (falhook_bench_<hex>) on the PostgreSQL server and drops it at
the end; temporary files go to a fresh folder under /tmp, removed at the end.
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
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from common import (
    ROOT,
    falhook_config,
    free_port,
    median,
    serve_command,
    start,
    wait_http,
)
from intake import parse_wrk, write_requests, wrk_command, wrk_env

from falhook.testing import FalSigner, JWKSServer, webhook_body

DEFAULT_PG = os.environ.get("FALHOOK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CLK_TCK = os.sysconf("SC_CLK_TCK")
REST = (
    "rest: the machine's busy CPU outside the processes measured (other users, this script,"
    " PostgreSQL's background processes, kernel threads)"
)
CHANNEL = "falhook_work:falhook"  # the store's NOTIFY channel for its default schema


# --- CPU accounting (/proc) ----------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """CPU seconds the whole machine spent not idle (all cores, all users)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


class CpuMeter:
    """CPU used between start() and stop() by named groups of processes, in cores."""

    def __init__(self, db: Db | None) -> None:
        self.db = db

    def _sample(self, groups: dict[str, list[int]]) -> dict[str, dict[int, float]]:
        snap = {name: {pid: proc_cpu(pid) for pid in pids} for name, pids in groups.items()}
        if self.db is not None:
            snap["postgres"] = {pid: proc_cpu(pid) for pid in self.db.backend_pids()}
        return snap

    def start(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.t0, self.busy0 = time.monotonic(), machine_busy()
        self.before = self._sample(groups)

    def stop(self) -> dict[str, float]:
        after = self._sample(self.groups)
        wall = time.monotonic() - self.t0
        out = {"wall": wall, "machine": (machine_busy() - self.busy0) / wall}
        for name, pids in after.items():
            # a PostgreSQL backend opened during the run counts from zero
            used = sum(cpu - self.before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
            out[name] = used / wall
        return out


# --- the bench database --------------------------------------------------------------------


class Db:
    """A database of our own on the PostgreSQL server, dropped by close()."""

    def __init__(self, admin_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.admin_url = admin_url
        self.name = f"falhook_bench_{secrets.token_hex(4)}"
        parts = urlsplit(admin_url)
        self.url = urlunsplit(parts._replace(path=f"/{self.name}"))
        admin = self.run(asyncpg.connect(admin_url, timeout=10))
        try:
            self.run(admin.execute(f"CREATE DATABASE {self.name}"))
        finally:
            self.run(admin.close())
        self.conn = self.run(asyncpg.connect(self.url, timeout=10))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def fetch(self, sql: str, *args: Any) -> list[Any]:
        return self.run(self.conn.fetch(sql, *args, timeout=60))

    def execute(self, sql: str, *args: Any) -> None:
        self.run(self.conn.execute(sql, *args, timeout=60))

    def backend_pids(self) -> list[int]:
        rows = self.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.name,
        )
        return [r["pid"] for r in rows]

    def close(self) -> None:
        try:
            self.run(self.conn.close())
            admin = self.run(asyncpg.connect(self.admin_url, timeout=10))
            try:
                self.run(admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"))
            finally:
                self.run(admin.close())
        finally:
            self.loop.close()


# --- processes -----------------------------------------------------------------------------


class Procs:
    """Every process this bench starts, each stopped by its own pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        proc = start(args, log=log)
        self.procs.append(proc)
        return proc

    def stop(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:  # SIGTERM to all first, so they shut down side by side
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            if proc in self.procs:
                self.procs.remove(proc)

    def stop_all(self) -> None:
        self.stop(list(self.procs))


def wait_log(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{path.name}: exited with {proc.returncode}:\n{path.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"{path.name}: no {text!r} within {timeout} s")


# --- intake ----------------------------------------------------------------------------------


def intake_run(
    kind: str,
    rnd: int,
    args: argparse.Namespace,
    work: Path,
    db: Db,
    jwks: JWKSServer,
    signer: FalSigner,
    procs: Procs,
) -> dict[str, Any]:
    run_dir = work / f"intake-{kind}-{rnd}"
    run_dir.mkdir()
    requests = run_dir / "requests.tsv"
    write_requests(requests, signer, args.requests)
    if kind == "sqlite":
        config = falhook_config(run_dir, jwks.url)
        count = 1
    else:
        db.execute("DROP SCHEMA IF EXISTS falhook CASCADE")  # fresh tables, like SQLite's
        config = falhook_config(run_dir, jwks.url, store={"url": db.url})
        count = 2
    ports = [free_port() for _ in range(count)]
    servers = [
        procs.start(serve_command(config, port, "--no-worker"), log=run_dir / f"serve-{i}.log")
        for i, port in enumerate(ports)
    ]
    try:
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
        db.execute("CHECKPOINT")  # no checkpoint left over from set-up lands in the run
        meter = CpuMeter(db if kind == "pg" else None)
        meter.start({"falhook": [s.pid for s in servers]})
        wrk = subprocess.run(
            wrk_command(f"http://127.0.0.1:{ports[0]}", args),
            env=wrk_env(requests, args, ports),
            capture_output=True,
            text=True,
            timeout=args.duration + 120,
        )
        cpu = meter.stop()
        (run_dir / "wrk.txt").write_text(wrk.stdout + wrk.stderr)
        res = parse_wrk(wrk.stdout + wrk.stderr)
    finally:
        procs.stop(servers)
    if kind == "sqlite":
        with sqlite3.connect(run_dir / "data" / "events.db") as conn:
            res["stored"] = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    else:
        res["stored"] = db.fetch("SELECT count(*) AS n FROM falhook.events")[0]["n"]
    # busy CPU outside the processes measured (other users, this script, kernel, ...)
    cpu["others"] = max(
        0.0, cpu["machine"] - res["wrk_cpu"] - cpu["falhook"] - cpu.get("postgres", 0.0)
    )
    res["cpu"] = cpu
    # CPU per request holds steadier than req/s when other users take a varying share
    res["ms_falhook"] = cpu["falhook"] * cpu["wall"] / res["completed"] * 1000
    res["ms_postgres"] = cpu.get("postgres", 0.0) * cpu["wall"] / res["completed"] * 1000
    shutil.rmtree(run_dir, ignore_errors=True)
    return res


def intake(args: argparse.Namespace, work: Path, db: Db, procs: Procs) -> None:
    print(
        f"== intake: {args.connections} connections, {args.threads} wrk threads, "
        f"{args.duration} s per run, {args.rounds} rounds; receive only (--no-worker) on both\n"
        "   sqlite: 1 `falhook serve` on SQLite; pg: 2 `falhook serve` on PostgreSQL, "
        "wrk threads split between them\n"
        f"   nothing pinned: on {os.cpu_count()} cores the receivers, PostgreSQL and wrk "
        "compete for CPU (see the cpu columns)\n"
        f"   {REST}",
        flush=True,
    )
    signer = FalSigner()
    jwks = JWKSServer()
    jwks.set_jwks(signer.jwks())
    jwks.start()
    results: dict[str, list[dict[str, Any]]] = {"sqlite": [], "pg": []}
    try:
        for rnd in range(args.rounds):
            for kind in ("sqlite", "pg"):
                res = intake_run(kind, rnd, args, work, db, jwks, signer, procs)
                results[kind].append(res)
                cpu = res["cpu"]
                ok = res["completed"] - res["non2xx"]
                print(
                    f"round {rnd} {kind:6} {res['rps']:6.0f} req/s  p50 {res['p50']:6.2f} ms  "
                    f"p99 {res['p99']:7.2f} ms | cores: wrk {res['wrk_cpu']:.2f}  "
                    f"falhook {cpu['falhook']:.2f}  postgres {cpu.get('postgres', 0):.2f}  "
                    f"rest {cpu['others']:.2f} | cpu ms/request: falhook "
                    f"{res['ms_falhook']:.2f} postgres {res['ms_postgres']:.2f} | non-2xx "
                    f"{res['non2xx']} wrapped {res['wrapped']} sent per wrk thread {res['sent']} "
                    f"stored {res['stored']} >= 2xx {ok}"
                    + (f"  socket errors: {res['socket_errors']}" if res["socket_errors"] else ""),
                    flush=True,
                )
                if res["wrapped"]:
                    print(
                        "  wrk ran out of requests and repeated some: raise --requests", flush=True
                    )
                elif res["stored"] < ok:
                    print("  WARNING: fewer events stored than acknowledged", flush=True)
    finally:
        jwks.stop()
    ratios = [p["rps"] / s["rps"] for s, p in zip(results["sqlite"], results["pg"], strict=True)]
    print(
        f"\nintake, 2 receivers on PostgreSQL / 1 on SQLite, throughput: median "
        f"{median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    for kind, label in (("sqlite", "1 x SQLite"), ("pg", "2 x PostgreSQL")):
        rs = results[kind]

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return median([r[key] for r in rs])

        def med_cpu(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return median([r["cpu"].get(key, 0.0) for r in rs])

        print(
            f"  {label:15} median {med('rps'):5.0f} req/s, p50 {med('p50'):.2f} ms, "
            f"p99 {med('p99'):.2f} ms; cores: wrk {med('wrk_cpu'):.2f}, falhook "
            f"{med_cpu('falhook'):.2f}, postgres {med_cpu('postgres'):.2f}, rest "
            f"{med_cpu('others'):.2f} (of {os.cpu_count()}); cpu per request: falhook "
            f"{med('ms_falhook'):.2f} ms + postgres {med('ms_postgres'):.2f} ms"
        )
    print(flush=True)


# --- delivery --------------------------------------------------------------------------------

VARIANTS = [  # (label, worker processes, [delivery].concurrency per process)
    ("1 worker", 1, 8),
    ("3 workers", 3, 8),
    ("1 worker, concurrency 24", 1, 24),
]


def accept_batch(port: int, signer: FalSigner, fport: int, args: argparse.Namespace) -> list[str]:
    """Post N signed webhooks, each with one file, to the receiver; their request_ids."""
    size = args.file_kb * 1024
    ids = []
    with httpx.Client(timeout=30) as client:
        for i in range(args.events):
            payload = {
                "video": {
                    "url": f"http://127.0.0.1:{fport}/clip_{i}.mp4",
                    "content_type": "video/mp4",
                    "file_name": f"clip_{i}.mp4",
                    "file_size": size,
                }
            }
            rid, body = webhook_body(payload=payload)
            resp = client.post(
                f"http://127.0.0.1:{port}/webhooks/default",
                content=body,
                headers={"Content-Type": "application/json", **signer.headers(body, rid)},
            )
            if resp.status_code != 200 or resp.json().get("status") != "accepted":
                raise RuntimeError(f"accept: {resp.status_code} {resp.text}")
            ids.append(rid)
    return ids


def delivery_run(
    variant: tuple[str, int, int],
    ids: list[str],
    configs: dict[int, Path],
    run_dir: Path,
    db: Db,
    procs: Procs,
    args: argparse.Namespace,
) -> dict[str, Any]:
    label, count, concurrency = variant
    # Park the batch (due in an hour) while the workers start, so start-up is not timed...
    db.execute(
        "UPDATE falhook.deliveries SET next_attempt_at = now() + interval '1 hour'"
        " WHERE request_id = ANY($1::text[])",
        ids,
    )
    workers = []
    for i in range(count):
        cmd = [
            sys.executable,
            "-m",
            "falhook.cli",
            "worker",
            "--config",
            str(configs[concurrency]),
        ]
        workers.append(procs.start(cmd, log=run_dir / f"worker-{i}.log"))
    try:
        for i, w in enumerate(workers):
            wait_log(run_dir / f"worker-{i}.log", "worker started", w)
        meter = CpuMeter(db)
        meter.start({"workers": [w.pid for w in workers], "fileserver": [args.fileserver_pid]})
        # ...then make it due all at once and wake every worker (as an accept's NOTIFY would).
        t0 = db.run(release(db.conn, ids))
        deadline = time.monotonic() + args.delivery_timeout
        while True:
            row = db.fetch(
                "SELECT count(*) FILTER (WHERE state = 'delivered') AS delivered,"
                " count(*) FILTER (WHERE state IN ('dead', 'retrying')) AS failed,"
                " max(updated_at) AS last FROM falhook.deliveries"
                " WHERE request_id = ANY($1::text[])",
                ids,
            )[0]
            if row["delivered"] == len(ids):
                break
            if row["failed"] or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{label}: {row['delivered']} of {len(ids)} delivered, {row['failed']} "
                    f"failed or retrying (logs in {run_dir})"
                )
            time.sleep(0.05)
        cpu = meter.stop()
    finally:
        procs.stop(workers)
    elapsed = (row["last"] - t0).total_seconds()
    ours = cpu["workers"] + cpu["postgres"] + cpu["fileserver"]
    cpu["others"] = max(0.0, cpu["machine"] - ours)
    cpu["ms_per_event"] = cpu["workers"] * cpu["wall"] / len(ids) * 1000
    delivered = sum(1 for rid in ids if (run_dir / "out" / "default" / rid).is_dir())
    if delivered != len(ids):
        raise RuntimeError(f"{label}: {delivered} of {len(ids)} event folders on disk")
    shutil.rmtree(run_dir / "out", ignore_errors=True)
    for i in range(count):
        log = run_dir / f"worker-{i}.log"
        if args.keep:
            log.rename(run_dir / f"worker-{i}-{label.replace(' ', '_')}-{ids[0][:8]}.log")
        else:
            log.unlink(missing_ok=True)
    return {"eps": len(ids) / elapsed, "seconds": elapsed, "cpu": cpu}


async def release(conn: asyncpg.Connection, ids: list[str]) -> Any:
    async with conn.transaction():
        t0 = await conn.fetchval("SELECT now()")
        await conn.execute(
            "UPDATE falhook.deliveries SET next_attempt_at = now()"
            " WHERE request_id = ANY($1::text[])",
            ids,
        )
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return t0


def delivery(args: argparse.Namespace, work: Path, db: Db, procs: Procs) -> None:
    print(
        f"== delivery: {args.events} events, one {args.file_kb} KiB file each, disk sink "
        f"(fsync on), PostgreSQL store, {args.rounds} rounds\n"
        "   timed from making the accepted batch due (workers already up) to the last "
        "delivery, by the database's clock\n"
        f"   nothing pinned: workers, PostgreSQL and the file server share {os.cpu_count()} "
        f"cores\n   {REST}",
        flush=True,
    )
    run_dir = work / "delivery"
    src = run_dir / "src"
    src.mkdir(parents=True)
    for i in range(args.events):
        (src / f"clip_{i}.mp4").write_bytes(os.urandom(args.file_kb * 1024))
    signer = FalSigner()
    jwks = JWKSServer()
    jwks.set_jwks(signer.jwks())
    jwks.start()
    db.execute("DROP SCHEMA IF EXISTS falhook CASCADE")
    configs = {}
    for conc in sorted({v[2] for v in VARIANTS}):
        conf_dir = run_dir / f"c{conc}"
        conf_dir.mkdir()
        configs[conc] = falhook_config(
            conf_dir,
            jwks.url,
            store={"url": db.url},
            delivery={"concurrency": conc},
            sinks={"local": {"type": "disk", "root": str(run_dir / "out")}},
            downloads={"spool_dir": str(run_dir / "spool")},
        )
    port = free_port()
    receiver = procs.start(
        serve_command(configs[8], port, "--no-worker"), log=run_dir / "receiver.log"
    )
    summary = []
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
        for delay in [0, *args.delay_ms]:
            fport = free_port()
            fileserver = procs.start(
                [
                    sys.executable,
                    str(ROOT / "bench" / "fileserver.py"),
                    str(src),
                    str(fport),
                    str(delay),
                ],
                log=run_dir / "fileserver.log",
            )
            args.fileserver_pid = fileserver.pid
            results: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in VARIANTS}
            try:
                wait_http(f"http://127.0.0.1:{fport}/clip_0.mp4")
                print(f"-- file server delay {delay} ms", flush=True)
                for rnd in range(args.rounds):
                    for variant in VARIANTS:
                        ids = accept_batch(port, signer, fport, args)
                        res = delivery_run(variant, ids, configs, run_dir, db, procs, args)
                        results[variant[0]].append(res)
                        cpu = res["cpu"]
                        print(
                            f"round {rnd} {variant[0]:25} {res['eps']:5.0f} events/s "
                            f"({res['seconds']:5.2f} s) | cores: workers "
                            f"{cpu['workers']:.2f}  postgres {cpu['postgres']:.2f}  "
                            f"file server {cpu['fileserver']:.2f}  rest {cpu['others']:.2f}"
                            f" | worker cpu {cpu['ms_per_event']:.1f} ms/event",
                            flush=True,
                        )
            finally:
                procs.stop([fileserver])
            one, three, wide = (results[v[0]] for v in VARIANTS)
            scale = [t["eps"] / o["eps"] for o, t in zip(one, three, strict=True)]
            control = [w["eps"] / o["eps"] for o, w in zip(one, wide, strict=True)]
            summary.append((delay, one, three, wide, scale, control))
            print(
                f"   3 workers / 1 worker: median {median(scale):.2f} "
                f"(rounds: {', '.join(f'{r:.2f}' for r in scale)}); "
                f"1 worker at concurrency 24 / 1 worker: median {median(control):.2f}",
                flush=True,
            )
    finally:
        procs.stop([receiver])
        jwks.stop()
    print("\ndelivery summary (medians of the rounds):")
    for delay, one, three, wide, scale, control in summary:

        def eps(rs: list[dict[str, Any]]) -> float:
            return median([r["eps"] for r in rs])

        def cpu(rs: list[dict[str, Any]], key: str) -> float:
            return median([r["cpu"][key] for r in rs])

        print(
            f"  file server delay {delay:3} ms: 3 workers / 1 worker {median(scale):.2f} "
            f"({eps(three):.0f} / {eps(one):.0f} events/s; worker cpu "
            f"{cpu(three, 'ms_per_event'):.1f} / {cpu(one, 'ms_per_event'):.1f} ms/event; "
            f"rest {cpu(three, 'others'):.2f} / {cpu(one, 'others'):.2f} cores); "
            f"1 worker at concurrency 24 / 1 worker {median(control):.2f} ({eps(wide):.0f} "
            "events/s)"
        )
    print(flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", choices=("intake", "delivery", "all"), default="all")
    ap.add_argument("--pg-url", default=DEFAULT_PG, help="a database to connect to as admin")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per intake run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (even: split evenly)")
    ap.add_argument("--requests", type=int, default=60000, help="signed requests per intake run")
    ap.add_argument("--events", type=int, default=300, help="events per delivery run")
    ap.add_argument("--file-kb", type=int, default=4)
    ap.add_argument(
        "--delay-ms",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[50, 200],
        help="file server delays (ms) to run after the undelayed pass, comma-separated",
    )
    ap.add_argument("--delivery-timeout", type=float, default=300, help="seconds per run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if shutil.which("wrk") is None and args.mode != "delivery":
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="falhook-bench-scaleout-"))
    procs = Procs()
    db = Db(args.pg_url)
    print(f"database {db.name} on {urlsplit(args.pg_url).hostname}; work folder {work}")
    try:
        if args.mode in ("intake", "all"):
            intake(args, work, db, procs)
        if args.mode in ("delivery", "all"):
            delivery(args, work, db, procs)
    finally:
        procs.stop_all()
        db.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
