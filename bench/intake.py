"""Intake: signed webhooks per second through `falhook serve` (verification and durable
store) against a bare Starlette app that only reads the body and answers 200, on the same
uvicorn, each server pinned to one core and wrk on the other, a fresh request_id per request.

    python bench/intake.py [--duration 5] [--connections 64] [--rounds 7] [--worker] [--minimal]

The host's load comes in waves of seconds that no counter here shows (no steal time is
reported), so the two apps run in many short phases, in alternating order, and each round's
ratio compares two phases seconds apart.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    falhook_config,
    free_port,
    median,
    serve_command,
    start,
    stop,
    wait_http,
)

from falhook.testing import FalSigner, JWKSServer, webhook_body

SERVER_CPU, LOADGEN_CPU = {0}, {1}


# A reframe-shaped payload. Its file URL is on loopback (port 9, where nothing listens), so
# a worker that does try to fetch it never leaves this machine.
REFRAME_PAYLOAD = {
    "video": {
        "url": "http://127.0.0.1:9/files/abc123/output.mp4",
        "content_type": "video/mp4",
        "file_name": "output.mp4",
        "file_size": 4404019,
    }
}


def write_requests(
    path: Path, signer: FalSigner, count: int, payload: object = REFRAME_PAYLOAD
) -> None:
    with open(path, "w") as fh:
        for _ in range(count):
            rid, body = webhook_body(
                str(uuid.uuid4()),
                payload=payload,
            )
            h = signer.headers(body, rid)
            fh.write(
                "\t".join(
                    [
                        rid,
                        h["X-Fal-Webhook-User-Id"],
                        h["X-Fal-Webhook-Timestamp"],
                        h["X-Fal-Webhook-Signature"],
                        body.decode(),
                    ]
                )
                + "\n"
            )


def to_ms(text: str) -> float:
    """wrk's latency text (`850.00us`, `12.3ms`, `1.02s`, `1.50m`) in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:  # name what wrk printed
        raise RuntimeError(f"wrk latency {text!r} not understood")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def wrk_command(url: str, args: argparse.Namespace) -> list[str]:
    """wrk under /usr/bin/time (its own CPU is reported) replaying signed requests."""
    return [
        "/usr/bin/time",
        "-f",
        "cpu %U %S %e",
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "-s",
        str(ROOT / "bench" / "replay.lua"),
        url,
    ]


def wrk_env(
    requests_file: Path, args: argparse.Namespace, ports: list[int] | None = None
) -> dict[str, str]:
    """replay.lua's inputs; with ports, its threads spread over those servers."""
    env = {
        **os.environ,
        "FALHOOK_BENCH_REQUESTS": str(requests_file),
        "FALHOOK_BENCH_THREADS": str(args.threads),
    }
    if ports:
        env["FALHOOK_BENCH_PORTS"] = ",".join(map(str, ports))
    return env


def parse_wrk(out: str) -> dict[str, Any]:
    """Throughput, latency percentiles, wrk's own CPU and replay.lua's counters."""

    def grab(pattern: str) -> str:
        m = re.search(pattern, out, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"wrk output lacks {pattern!r}:\n{out}")
        return m.group(1)

    user, system, wall = map(float, grab(r"cpu ([\d.]+ [\d.]+ [\d.]+)").split())
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(grab(r"Requests/sec:\s+([\d.]+)")),
        "completed": int(grab(r"(\d+) requests in")),
        # Anchored: the Req/Sec line's "+/- Stdev" column (such as 50.99%) holds these too.
        "p50": to_ms(grab(r"^\s+50%\s+(\S+)")),
        "p99": to_ms(grab(r"^\s+99%\s+(\S+)")),
        "wrk_cpu": (user + system) / wall,
        "wrapped": int(grab(r"wrapped (\d+)")),
        "non2xx": int(grab(r"non2xx (\d+)")),
        "sent": [int(n) for n in re.findall(r"sent \d+ (\d+)", out)],
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def run_wrk(url: str, requests_file: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    proc = subprocess.Popen(
        wrk_command(url, args),
        env=wrk_env(requests_file, args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    os.sched_setaffinity(proc.pid, LOADGEN_CPU)
    out, _ = proc.communicate(timeout=args.duration + 120)
    log.write_text(out)
    return parse_wrk(out)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_command(
    kind: str, port: int, work: Path, jwks_url: str, args: argparse.Namespace
) -> tuple[list[str], str]:
    """The command that serves `kind` on port, and the URL that answers once it is up."""
    url = f"http://127.0.0.1:{port}"
    if kind == "falhook":
        config = falhook_config(work, jwks_url)
        return serve_command(config, port, *(() if args.worker else ("--no-worker",))), (
            url + "/healthz"
        )
    if kind == "baseline":  # `falhook serve` from another checkout (--baseline)
        config = falhook_config(work, jwks_url)
        return serve_command(config, port, "--no-worker"), url + "/healthz"
    (work / "data").mkdir(parents=True, exist_ok=True)
    os.environ["FALHOOK_BENCH_DB"] = str(work / "data" / "minimal.db")
    app = {"bare": "bench.bare_app:app", "minimal": "bench.minimal_app:app"}[kind]
    uvicorn = [sys.executable, "-m", "uvicorn", app, "--port", str(port)]
    return [*uvicorn, "--log-level", "warning", "--no-access-log"], url + "/"


def baseline_env(checkout: str) -> dict[str, str]:
    """The environment that runs another checkout's falhook with this interpreter: its two
    source roots first on the path (ahead of this one's editable install)."""
    root = Path(checkout).resolve()
    if not (root / "receiver" / "falhook").is_dir():  # else this checkout would run as both
        raise SystemExit(f"--baseline {checkout}: no receiver/falhook there")
    path = f"{root / 'receiver'}:{root / 'handlers'}"
    return {**os.environ, "PYTHONPATH": path, "FALHOOK_LOG_FORMAT": "json"}


def profile(pid: int, out: str, duration: int) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) sampling a server for most of a run, in raw form."""
    return subprocess.Popen(
        ["py-spy", "record", "-p", str(pid), "-d", str(max(1, duration - 1)), "-r", "200",
         "-f", "raw", "-o", out, "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=60000, help="signed requests per falhook run")
    ap.add_argument("--worker", action="store_true", help="keep the in-process worker running")
    ap.add_argument(
        "--minimal",
        action="store_true",
        help="also a receiver that only verifies and inserts (bench/minimal_app.py)",
    )
    ap.add_argument(
        "--baseline",
        help="a checkout of another falhook (a `git worktree` of main, say) served beside this"
        " one, same run: `falhook serve --no-worker` with its receiver/ and handlers/ first",
    )
    ap.add_argument("--no-bare", action="store_true", help="leave out the bare app")
    ap.add_argument("--profile", help="py-spy this falhook's server in each round, to FILE.N")
    ap.add_argument("--workdir", default="/tmp/falhook-bench-intake")
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
    kinds = [
        *([] if args.no_bare else ["bare"]),
        "falhook",
        *(["minimal"] if args.minimal else []),
        *(["baseline"] if args.baseline else []),
    ]
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    os.environ["FALHOOK_BENCH_JWKS"] = jwks.url
    try:
        for rnd in range(args.rounds):
            # The order rotates: a drift during the run favours no app.
            for kind in kinds[rnd % len(kinds) :] + kinds[: rnd % len(kinds)]:
                port = free_port()
                reqs = work / f"requests-{rnd}-{kind}.tsv"
                write_requests(reqs, signer, args.requests if kind != "bare" else 20000)
                shutil.rmtree(work / "data", ignore_errors=True)
                cmd, health = server_command(kind, port, work, jwks.url, args)
                env = baseline_env(args.baseline) if kind == "baseline" else None
                server = start(cmd, log=work / f"{kind}.log", cpus=SERVER_CPU, env=env)
                spy = None
                try:
                    wait_http(health)
                    if args.profile and kind == "falhook":
                        spy = profile(server.pid, f"{args.profile}.{rnd}", args.duration)
                    cpu_before = process_cpu(server.pid)
                    res = run_wrk(
                        f"http://127.0.0.1:{port}", reqs, args, work / f"wrk-{rnd}-{kind}.txt"
                    )
                    if spy is not None:
                        spy.wait(timeout=60)
                    res["cpu_us"] = (process_cpu(server.pid) - cpu_before) / res["completed"] * 1e6
                finally:
                    stop(server)
                results[kind].append(res)
                print(
                    f"round {rnd} {kind:8} {res['rps']:8.0f} req/s  p50 {res['p50']:6.2f} ms  "
                    f"p99 {res['p99']:6.2f} ms  server cpu {res['cpu_us']:5.0f} us/request  "
                    f"wrk cpu {res['wrk_cpu']:.2f} cores  "
                    f"non-2xx {int(res['non2xx'])}  wrapped {int(res['wrapped'])}",
                    flush=True,
                )
    finally:
        jwks.stop()
    pairs = [(k, "bare") for k in kinds if k != "bare" and "bare" in kinds]
    pairs += [("falhook", k) for k in ("minimal", "baseline") if k in kinds]
    for kind, base in pairs:
        ratios = [k["rps"] / b["rps"] for b, k in zip(results[base], results[kind], strict=True)]
        cpu = [b["cpu_us"] / k["cpu_us"] for b, k in zip(results[base], results[kind], strict=True)]
        print(
            f"\n{kind} / {base} throughput: median {median(ratios):.2f} "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); "
            f"{base}'s CPU per request / {kind}'s: median {median(cpu):.2f}"
        )
    for kind in kinds:
        rs = results[kind]
        med = {
            key: median([r[key] for r in rs]) for key in ("rps", "p50", "p99", "wrk_cpu", "cpu_us")
        }
        print(
            f"{kind:8} median {med['rps']:.0f} req/s, p50 {med['p50']:.2f} ms, "
            f"p99 {med['p99']:.2f} ms, server {med['cpu_us']:.0f} us CPU per request, "
            f"load generator {med['wrk_cpu']:.2f} cores"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
