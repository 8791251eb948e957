"""Isolation: intake p99 of `falhook serve` while its own worker downloads 1 GiB files,
against its idle p99. falhook is pinned to one core (its event loop and its download thread
share it: the hard case), wrk and the file server to the other; wrk runs a moderate
closed-loop load (few connections), so latency reflects service time, not queueing.

    python bench/isolation.py [--duration 5] [--rounds 2] [--files 4] [--no-pin]
                              [--store-dir /dev/shm/falhook-isolation]

The store and the spool share one disk by default, as on one machine with one volume: every
webhook's commit (an fdatasync) then also waits for the download's data that the disk has
not yet made durable. `--store-dir` on another device leaves that out.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from common import ROOT, falhook_config, free_port, median, start, start_falhook, stop
from intake import run_wrk, write_requests

from falhook.testing import FalSigner, JWKSServer, webhook_body

GiB = 1024**3
# Intake events without files: the worker's only downloads are the 1 GiB ones under test.
NO_FILES = {"note": "intake under load"}


def queue_downloads(base: str, signer: FalSigner, url: str, count: int) -> list[str]:
    rids = []
    for _ in range(count):
        rid, body = webhook_body(
            str(uuid.uuid4()),
            payload={"video": {"url": url, "content_type": "video/mp4", "file_size": GiB}},
        )
        httpx.post(
            f"{base}/webhooks/downloads", content=body, headers=signer.headers(body, rid)
        ).raise_for_status()
        rids.append(rid)
    return rids


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--files", type=int, default=4, help="1 GiB downloads queued per busy phase")
    ap.add_argument("--requests", type=int, default=40000)
    ap.add_argument("--workdir", default="/tmp/falhook-bench-isolation")
    ap.add_argument("--no-pin", action="store_true", help="let falhook use both cores")
    ap.add_argument(
        "--store-dir",
        help="put the SQLite store here (another device, or /dev/shm) to leave the disk's "
        "own contention out: what is left is the CPU and the event loop",
    )
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "serve").mkdir(parents=True)
    subprocess.run(
        ["dd", "if=/dev/urandom", f"of={work / 'serve' / 'big.bin'}", "bs=1M", "count=1024"],
        check=True,
        capture_output=True,
    )
    signer = FalSigner()
    jwks = JWKSServer()
    jwks.set_jwks(signer.jwks())
    jwks.start()
    fport, hport = free_port(), free_port()
    base = f"http://127.0.0.1:{hport}"
    sections: dict[str, dict[str, object]] = {"delivery": {"concurrency": 1}}
    if args.store_dir:
        store_dir = Path(args.store_dir)
        shutil.rmtree(store_dir, ignore_errors=True)
        store_dir.mkdir(parents=True)
        sections["store"] = {"url": f"sqlite:///{store_dir}/events.db"}
    config = falhook_config(work, jwks.url, **sections)
    text = config.read_text().replace(
        '[routes.default]\nsinks = ["local"]',
        '[routes.default]\nsinks = ["local"]\n\n[routes.downloads]\nsinks = ["local"]',
    )
    config.write_text(text)
    procs = []
    idle, busy = [], []
    try:
        procs.append(
            start(
                [
                    sys.executable,
                    str(ROOT / "bench" / "fileserver.py"),
                    str(work / "serve"),
                    str(fport),
                ],
                log=work / "files.log",
                cpus={1},
            )
        )
        fh = start_falhook(
            config, hport, log=work / "falhook.log", cpus=None if args.no_pin else {0}
        )
        procs.append(fh)
        url = f"http://127.0.0.1:{fport}/big.bin"
        for rnd in range(args.rounds):
            reqs = work / f"idle-{rnd}.tsv"
            write_requests(reqs, signer, args.requests, payload=NO_FILES)
            idle.append(run_wrk(base, reqs, args, work / f"wrk-idle-{rnd}.txt"))
            reqs = work / f"busy-{rnd}.tsv"
            write_requests(reqs, signer, args.requests, payload=NO_FILES)
            rids = queue_downloads(base, signer, url, args.files)
            spool = work / "data" / "spool"
            deadline = time.monotonic() + 60
            # Until a 1 GiB download is really under way (a spool file past 8 MiB).
            while time.monotonic() < deadline and not any(
                f.is_file() and f.stat().st_size > 8 * 1024 * 1024 for f in spool.rglob("*")
            ):
                time.sleep(0.01)
            busy.append(run_wrk(base, reqs, args, work / f"wrk-busy-{rnd}.txt"))
            last_done = (work / "files" / "downloads" / rids[-1] / "event.json").exists()
            print(
                f"round {rnd}: idle p99 {idle[-1]['p99']:.2f} ms {idle[-1]['rps']:.0f} req/s | "
                f"busy p99 {busy[-1]['p99']:.2f} ms {busy[-1]['rps']:.0f} req/s"
                f"{' (WARNING: downloads ended inside the window)' if last_done else ''}",
                flush=True,
            )
            deadline = time.monotonic() + 300
            while (
                not all((work / "files" / "downloads" / r / "event.json").exists() for r in rids)
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            shutil.rmtree(work / "files" / "downloads", ignore_errors=True)
    finally:
        for p in procs:
            stop(p)
        jwks.stop()
        shutil.rmtree(work, ignore_errors=True)
        if args.store_dir:
            shutil.rmtree(args.store_dir, ignore_errors=True)
    p99 = [b["p99"] / i["p99"] for i, b in zip(idle, busy, strict=True)]
    rps = [b["rps"] / i["rps"] for i, b in zip(idle, busy, strict=True)]
    print(
        f"\nbusy/idle p99: median {median(p99):.2f}x; busy/idle throughput: "
        f"median {median(rps):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
