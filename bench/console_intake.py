"""Intake with one console tab tailing the live stream, against intake alone, same run:
`falhook serve --no-worker` (console on, defaults) pinned to one core, wrk and the tab's
reader on the other, phases alternating so the machine's waves of load favour neither.

    python bench/console_intake.py [--duration 5] [--rounds 7] [--connections 64]

Target: throughput with the tab open at least 0.9 of intake alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import ROOT, falhook_config, free_port, median, serve_command, start, stop, wait_http
from intake import LOADGEN_CPU, SERVER_CPU, run_wrk, write_requests

from falhook.testing import FalSigner, JWKSServer


def open_tab(url: str, log: Path) -> subprocess.Popen[str]:
    tab = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "tail_stream.py"), url],
        stdout=subprocess.PIPE,
        stderr=open(log, "a"),  # noqa: SIM115 - closed with the process
        text=True,
    )
    os.sched_setaffinity(tab.pid, LOADGEN_CPU)
    assert tab.stdout is not None
    if tab.stdout.readline().strip() != "connected":
        raise RuntimeError("the tab could not subscribe to the stream")
    return tab


def close_tab(tab: subprocess.Popen[str]) -> tuple[int, bool]:
    """(messages the tab read, whether it was still connected when stopped)."""
    tab.terminate()
    out, _ = tab.communicate(timeout=30)
    _, count, how = out.strip().rsplit(" ", 2)
    return int(count), how == "stopped"


def phase(kind: str, rnd: int, work: Path, jwks_url: str, signer: FalSigner, args: Any) -> Any:
    shutil.rmtree(work / "data", ignore_errors=True)
    reqs = work / f"requests-{rnd}-{kind}.tsv"
    write_requests(reqs, signer, args.requests)
    port = free_port()
    config = falhook_config(work, jwks_url)
    server = start(serve_command(config, port, "--no-worker"), log=work / "serve.log",
                   cpus=SERVER_CPU)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    tab = None
    try:
        wait_http(url + "/healthz")
        if kind == "tab":
            tab = open_tab(url, work / "tab.log")
        res = run_wrk(url, reqs, args, work / f"wrk-{rnd}-{kind}.txt")
        res["messages"], res["connected"] = close_tab(tab) if tab is not None else (0, True)
    finally:
        if tab is not None and tab.poll() is None:
            tab.kill()
        stop(server)
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=60000)
    ap.add_argument("--workdir", default="/tmp/falhook-bench-console-intake")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    signer = FalSigner()
    jwks = JWKSServer()
    jwks.set_jwks(signer.jwks())
    jwks.start()
    results: dict[str, list[Any]] = {"alone": [], "tab": []}
    try:
        for rnd in range(args.rounds):
            for kind in ("alone", "tab") if rnd % 2 == 0 else ("tab", "alone"):
                res = phase(kind, rnd, work, jwks.url, signer, args)
                results[kind].append(res)
                print(
                    f"round {rnd} {kind:5} {res['rps']:7.0f} req/s  p50 {res['p50']:6.2f} ms  "
                    f"p99 {res['p99']:6.2f} ms  non-2xx {res['non2xx']}  "
                    f"stream messages {res['messages']}"
                    f"{'' if res['connected'] else ' (the tab was dropped)'}",
                    flush=True,
                )
    finally:
        jwks.stop()
    ratios = [t["rps"] / a["rps"] for a, t in zip(results["alone"], results["tab"], strict=True)]
    print(
        f"\nintake with a console tab / intake alone: median {median(ratios):.2f} "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    for kind, rs in results.items():
        print(
            f"{kind:5} median {median([r['rps'] for r in rs]):.0f} req/s, "
            f"p99 {median([r['p99'] for r in rs]):.2f} ms"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
