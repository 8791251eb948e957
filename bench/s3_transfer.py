"""S3 transfer: a large file from a loopback HTTP server through `falhook serve` (the S3
sink streams: parts go up while the ranged download writes them), against `curl -o` followed
by boto3's `upload_file` (the sequential baseline), both to the same moto S3 server on
loopback; with falhook's peak RSS (whole process) and its growth during the transfer.

    python bench/s3_transfer.py [--size-mib 1024] [--runs 3] [--workdir /tmp/falhook-bench-s3]
                                [--rate-mib N]   # the file server's bandwidth (default: no cap)
    python bench/s3_transfer.py --clients [--size-mib 1024]   # upload-only client comparison

`--clients` uploads the same local file with each candidate client in a fresh process
(our S3 sink: boto3 in its thread pool with CRC32 per part; boto3 upload_file; obstore when
importable) and reports the cold import time, upload wall time and peak RSS of each: the
figures behind the client choice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from common import (
    ROOT,
    falhook_config,
    free_port,
    make_file,
    median,
    proc_status,
    reset_peak_rss,
    start,
    start_falhook,
    stop,
    wait_http,
)

from falhook.testing import FalSigner, JWKSServer, webhook_body
from tests.support.moto import AWS_ENV, MotoProcess, boto3_client  # common puts ROOT on sys.path

MiB = 1024 * 1024
BUCKET = "bench"


def baseline_once(url: str, work: Path, s3: Any, key: str) -> float:
    out = work / "curl.out"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(out), url], check=True)
    s3.upload_file(str(out), BUCKET, key)
    elapsed = time.perf_counter() - t0
    out.unlink()
    s3.delete_object(Bucket=BUCKET, Key=key)
    return elapsed


def delivered(log: Path, rid: str, since: int, deadline: float) -> int:
    """Wait for falhook's own log line saying rid's delivery is done; the log's new end.

    Read from the log, not asked of the S3 server: a HEAD every few milliseconds took CPU
    from moto (the bottleneck of both contenders) only while falhook's upload ran."""
    needle = f'"{rid}"'.encode()  # in the `deliveries recorded` line, or a failure's own
    pos = since
    pending = b""
    while time.monotonic() < deadline:
        with open(log, "rb") as fh:
            fh.seek(pos)
            chunk = fh.read()
        pos += len(chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if needle in line and b'"deliveries recorded"' in line:
                return pos
            if needle in line and b'"delivery dead"' in line:
                raise RuntimeError(f"delivery failed: {line.decode()[:500]}")
        time.sleep(0.02)
    raise RuntimeError("delivery did not finish")


def falhook_once(
    base: str, signer: FalSigner, url: str, size: int, s3: Any, pid: int, log: Path
) -> tuple[float, int, int]:
    rid, body = webhook_body(
        str(uuid.uuid4()),
        payload={
            "video": {
                "url": url,
                "content_type": "video/mp4",
                "file_name": "big.mp4",
                "file_size": size,
            }
        },
    )
    rss_before = proc_status(pid, "VmRSS")
    reset_peak_rss(pid)
    since = log.stat().st_size
    t0 = time.perf_counter()
    r = httpx.post(f"{base}/webhooks/default", content=body, headers=signer.headers(body, rid))
    r.raise_for_status()
    delivered(log, rid, since, time.monotonic() + 900)
    elapsed = time.perf_counter() - t0
    peak = proc_status(pid, "VmHWM")
    growth = peak - rss_before
    keys = [f"fal/default/{rid}/big.mp4", f"fal/default/{rid}/event.json"]
    head = s3.head_object(Bucket=BUCKET, Key=keys[0])
    assert head["ContentLength"] == size, head
    for key in keys:
        s3.delete_object(Bucket=BUCKET, Key=key)
    return elapsed, growth, peak


def pipeline(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "serve").mkdir(parents=True)
    os.environ.update(AWS_ENV)
    os.environ["PYTHONPATH"] = str(ROOT)
    signer = FalSigner()
    jwks = JWKSServer()
    jwks.set_jwks(signer.jwks())
    jwks.start()
    fport, hport = free_port(), free_port()
    procs = []
    moto = MotoProcess().start()
    try:
        s3 = boto3_client(moto.url)
        s3.create_bucket(Bucket=BUCKET)
        files = start(
            [
                sys.executable,
                str(ROOT / "bench" / "fileserver.py"),
                str(work / "serve"),
                str(fport),
                "0",
                str(args.rate_mib),
            ],
            log=work / "fileserver.log",
        )
        procs.append(files)
        sink = {"type": "s3", "bucket": BUCKET, "endpoint_url": moto.url}
        config = falhook_config(
            work,
            jwks.url,
            sinks={"archive": sink},
            routes={"default": {"sinks": ["archive"]}},
        )
        try:
            fh = start_falhook(config, hport, log=work / "falhook.log")
        except RuntimeError:
            print((work / "falhook.log").read_text()[-3000:], file=sys.stderr)
            raise
        procs.append(fh)
        wait_http(f"http://127.0.0.1:{fport}/")
        size = args.size_mib * MiB
        make_file(work / "serve" / "big.bin", size)
        url = f"http://127.0.0.1:{fport}/big.bin"
        base = f"http://127.0.0.1:{hport}"
        log = work / "falhook.log"
        falhook_once(base, signer, url, size, s3, fh.pid, log)  # warm-up (imports, connections)
        base_t, fal_t, growths, peaks = [], [], [], []
        for i in range(args.runs):
            # Interleaved, each first every other run: drift, and what one run leaves the
            # server and the disk to do, hit both alike.
            for kind in ("baseline", "falhook") if i % 2 == 0 else ("falhook", "baseline"):
                if kind == "baseline":
                    base_t.append(baseline_once(url, work, s3, f"baseline/{i}.bin"))
                else:
                    t, g, peak = falhook_once(base, signer, url, size, s3, fh.pid, log)
                    fal_t.append(t)
                    growths.append(g)
                    peaks.append(peak)
        ratios = [f / b for f, b in zip(fal_t, base_t, strict=True)]
        cap = f" at {args.rate_mib:g} MiB/s" if args.rate_mib else ""
        print(
            f"{args.size_mib} MiB{cap}: curl+upload_file {median(base_t):.2f} s, "
            f"falhook (download + S3 sink) {median(fal_t):.2f} s, "
            f"ratio {median(ratios):.2f}x (runs {', '.join(f'{r:.2f}' for r in ratios)}), "
            f"peak RSS {max(peaks) / MiB:.0f} MB (growth {max(growths) / MiB:.1f} MB)"
        )
        print(
            "  per run (baseline / falhook, s): "
            + ", ".join(f"{b:.1f}/{f:.1f}" for b, f in zip(base_t, fal_t, strict=True))
        )
    finally:
        for p in procs:
            stop(p)
        moto.stop()
        jwks.stop()
        if args.keep_logs:
            shutil.rmtree(work / "serve", ignore_errors=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


# --- client comparison -----------------------------------------------------------------------


def one_client(name: str, file: Path, endpoint: str) -> dict[str, float]:
    """Runs in a fresh process: import, then upload `file` once."""
    t0 = time.perf_counter()
    if name == "sink":
        import boto3  # what a cold start pays (the sink imports it on first use)

        from falhook_sinks.base import LocalFile, SinkEnv
        from falhook_sinks.registry import construct
        from falhook_sinks.s3 import S3Sink
    elif name == "boto3":
        import boto3  # noqa: F401
    elif name == "obstore":
        import obstore
        from obstore.store import S3Store
    imported = time.perf_counter() - t0
    # A fresh key each run: the S3 sink skips an object already stored with the same sha256,
    # so reusing one would time a HEAD instead of an upload from the second run on.
    run = uuid.uuid4().hex
    key = f"clients/{run}/{name}.bin"
    t1 = time.perf_counter()
    if name == "sink":
        from tests.support.sink_ctx import make_ctx

        sink = construct(
            S3Sink,
            "archive",
            {"bucket": BUCKET, "endpoint_url": endpoint, "prefix": f"clients/{run}/"},
            SinkEnv(base_dir=Path(".")),
        )
        f = LocalFile(
            path="video",
            name=f"{name}.bin",
            url="https://example.invalid/x",
            local_path=file,
            size=file.stat().st_size,
            sha256="0" * 64,
            content_type="video/mp4",
        )

        async def go() -> None:
            try:
                await sink.deliver(make_ctx([f]))
            finally:
                await sink.aclose()

        asyncio.run(go())
    elif name == "boto3":
        boto3_client(endpoint).upload_file(str(file), BUCKET, key)
    elif name == "obstore":
        store = S3Store(
            BUCKET,
            endpoint=endpoint,
            region="us-east-1",
            access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )

        async def put() -> None:
            await obstore.put_async(
                store,
                key,
                file,
                attributes={"Content-Type": "video/mp4"},
                chunk_size=16 * MiB,
                max_concurrency=4,
            )

        asyncio.run(put())
    upload = time.perf_counter() - t1
    return {"import_s": imported, "upload_s": upload, "peak_rss_mb": proc_status_self() / MiB}


def proc_status_self() -> int:
    return proc_status(os.getpid(), "VmHWM")


def clients(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.update(AWS_ENV)
    moto = MotoProcess().start()
    try:
        boto3_client(moto.url).create_bucket(Bucket=BUCKET)
        file = work / "big.bin"
        make_file(file, args.size_mib * MiB)
        names = ["sink", "boto3", "obstore"]
        print(f"{'client':>12} {'import s':>9} {'upload s':>9} {'MiB/s':>7} {'peak RSS MB':>12}")
        for _ in range(args.runs):
            for name in names:
                done = subprocess.run(
                    [sys.executable, __file__, "--one", name, str(file), moto.url],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                )
                if done.returncode != 0:
                    print(f"{name:>12} failed: {done.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{name:>12} {r['import_s']:>9.3f} {r['upload_s']:>9.2f} "
                    f"{args.size_mib / r['upload_s']:>7.0f} {r['peak_rss_mb']:>12.0f}"
                )
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/falhook-bench-s3")
    ap.add_argument("--rate-mib", type=float, default=0, help="cap the file server's MiB/s")
    ap.add_argument("--keep-logs", action="store_true", help="keep falhook's log in the workdir")
    ap.add_argument("--clients", action="store_true", help="compare S3 clients, upload only")
    ap.add_argument(
        "--one", nargs=3, metavar=("CLIENT", "FILE", "ENDPOINT"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_client(args.one[0], Path(args.one[1]), args.one[2])))
    elif args.clients:
        clients(args)
    else:
        pipeline(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
