"""Download alone: a large file from a loopback HTTP server (bench/fileserver.py, which honours
Range) into falhook's spool with its Fetcher, against `curl -o` of the same file to the same
folder. Neither side syncs: the spool is not durable, so both write to the page cache. falhook
runs twice, with its default range plan (parallel parts) and with one stream; the figure is
curl's time over falhook's (a throughput ratio: above 1 is faster than curl).

    python bench/download.py [--size-mib 1024] [--runs 5] [--workdir /tmp/falhook-bench-dl]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, free_port, make_file, median, start, stop, wait_http

from falhook.config import DownloadSettings
from falhook.downloads.fetch import Fetcher
from falhook.downloads.ranged import RangePlan
from falhook.intake.envelope import FileRef

MiB = 1024 * 1024


def curl_once(url: str, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - t0
    out.unlink()
    return elapsed


def fetcher(ranged: bool) -> Fetcher:
    d = DownloadSettings()
    plan = RangePlan(d.range_threshold if ranged else 0, d.range_size, d.range_parts)
    return Fetcher(
        max_file_bytes=d.max_file_bytes,
        timeout=d.timeout,
        allow_private_hosts=True,
        ranges=plan,
    )


async def falhook_once(fetch: Fetcher, url: str, size: int, spool: Path) -> float:
    ref = FileRef(path="video", url=url, content_type="video/mp4", file_size=size)
    t0 = time.perf_counter()
    got = await fetch.fetch(ref, spool, keep=False)
    elapsed = time.perf_counter() - t0
    assert got.size == size, got
    got.local_path.unlink()
    return elapsed


def settle(folder: Path) -> None:
    """Write back what the last run left dirty, so no run pays for the one before it."""
    subprocess.run(["sync", "-f", str(folder)], check=True)


async def run(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "serve").mkdir(parents=True)
    (work / "out").mkdir()
    size = args.size_mib * MiB
    make_file(work / "serve" / "big.bin", size)
    port = free_port()
    server = start(
        [sys.executable, str(ROOT / "bench" / "fileserver.py"), str(work / "serve"), str(port)],
        log=work / "fileserver.log",
    )
    fetchers = {"ranges": fetcher(True), "one stream": fetcher(False)}
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        url = f"http://127.0.0.1:{port}/big.bin"
        out = work / "out"
        for f in fetchers.values():  # warm-up: threads, connections, the file in page cache
            await falhook_once(f, url, size, out)
        curl_once(url, out / "curl.out")
        times: dict[str, list[float]] = {"curl": [], **{k: [] for k in fetchers}}
        kinds = list(times)
        for i in range(args.runs):
            # Rotated: each contender goes first, middle and last in turn.
            for kind in kinds[i % 3 :] + kinds[: i % 3]:
                settle(out)
                if kind == "curl":
                    times[kind].append(curl_once(url, out / "curl.out"))
                else:
                    times[kind].append(await falhook_once(fetchers[kind], url, size, out))
        curl = times["curl"]
        print(f"{args.size_mib} MiB, {args.runs} runs, median wall time:")
        rate = args.size_mib / median(curl)
        print(f"  curl -o            {median(curl):.2f} s  ({rate:.0f} MiB/s)")
        for kind in fetchers:
            ratios = [c / t for c, t in zip(curl, times[kind], strict=True)]
            print(
                f"  falhook {kind:<11}{median(times[kind]):.2f} s  "
                f"throughput vs curl {median(ratios):.2f} "
                f"(runs {', '.join(f'{r:.2f}' for r in ratios)})"
            )
    finally:
        for f in fetchers.values():
            await f.aclose()
        stop(server)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", default="/tmp/falhook-bench-dl")
    asyncio.run(run(ap.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
