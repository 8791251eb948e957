"""End-to-end latency: webhook answered 200 → its 1 MiB video complete on disk, through
`falhook serve` with the disk sink, at a steady 10 webhooks/s, with the `falhook[media]`
extra installed (PyAV: video facts and posters). Percentiles of that time per event.

Two kinds of video, each on its own run: `random` (1 MiB of random bytes named .mp4, as
fal's URLs often are before a file is looked at: FFmpeg cannot read it) and `real` (an H.264
MP4 made here with PyAV, about 1 MiB). With --baseline DIR, another checkout's falhook is
measured in the same run, rounds alternating.

The disk sink writes each file under a temporary name and renames it into place, so the
file's appearance at `<root>/default/<request id>/<name>` is its completion; a thread
looks for it every half millisecond.

    .venv/bin/python bench/latency.py [--events 200] [--rate 10] [--rounds 2]
        [--videos random,real] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from fractions import Fraction
from pathlib import Path

import httpx
from common import ROOT, falhook_config, free_port, start, stop, wait_http
from intake import baseline_env

from falhook.testing import FalSigner, JWKSServer, webhook_body


def real_mp4(target_bytes: int) -> bytes:
    """An H.264 MP4 of noisy frames, grown until it is about `target_bytes`."""
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 25)
        stream.options = {"tune": "zerolatency"}  # no frames held back: the size is what it says
        for _ in range(250):
            frame = av.VideoFrame(320, 240, "rgb24")
            plane = frame.planes[0]
            plane.update(os.urandom(plane.line_size * 240))
            for packet in stream.encode(frame):
                container.mux(packet)
            if out.tell() > target_bytes:
                break
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def one_run(
    side: str, video: bytes, args: argparse.Namespace, jwks: JWKSServer, signer: FalSigner
) -> list[float]:
    """Milliseconds from each 200 to its file on disk."""
    work = Path(tempfile.mkdtemp(prefix=f"falhook-bench-latency-{side}-"))
    files = work / "files"
    files.mkdir()
    for i in range(args.events):
        (files / f"v{i}.mp4").write_bytes(video)
    fport = free_port()
    fileserver = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fileserver.py"), str(files), str(fport)],
        stdout=subprocess.DEVNULL,
    )
    root = work / "out"
    config = falhook_config(work, jwks.url, sinks={"local": {"type": "disk", "root": str(root)}})
    port = free_port()
    env = baseline_env(args.baseline) if side == "baseline" else None
    server = start(
        [sys.executable, "-m", "falhook.cli", "serve", "--config", str(config), "--port",
         str(port)],
        log=work / "serve.log",
        env=env,
    )  # fmt: skip
    waiting: dict[Path, float] = {}
    lock = threading.Lock()
    seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with lock:
                for path, answered in list(waiting.items()):
                    if path.exists():
                        seen.append((time.perf_counter() - answered) * 1000)
                        del waiting[path]
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        wait_http(f"http://127.0.0.1:{fport}/v0.mp4")
        wait_http(f"http://127.0.0.1:{port}/healthz")
        watcher.start()
        with httpx.Client(timeout=30) as client:
            next_at = time.perf_counter()
            for i in range(args.events):
                url = f"http://127.0.0.1:{fport}/v{i}.mp4"
                payload = {"video": {"url": url, "content_type": "video/mp4", "file_name": "v.mp4"}}
                rid, body = webhook_body(str(uuid.uuid4()), payload=payload)
                headers = {"Content-Type": "application/json", **signer.headers(body, rid)}
                time.sleep(max(0.0, next_at - time.perf_counter()))
                resp = client.post(f"http://127.0.0.1:{port}/webhooks/default", content=body,
                                   headers=headers)  # fmt: skip
                answered = time.perf_counter()
                if resp.status_code != 200:
                    raise RuntimeError(f"{side}: {resp.status_code} {resp.text}")
                with lock:
                    waiting[root / "default" / rid / "v.mp4"] = answered
                next_at += 1 / args.rate
        deadline = time.monotonic() + 60
        while True:
            with lock:
                if not waiting:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side}: files never arrived (logs in {work})")
            time.sleep(0.01)
    finally:
        done.set()
        stop(server)
        fileserver.terminate()
        fileserver.wait()
    shutil.rmtree(work, ignore_errors=True)
    return seen


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0, help="webhooks per second")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--videos", default="random,real")
    ap.add_argument("--baseline", help="another checkout, measured in the same run")
    args = ap.parse_args()
    try:
        import av  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs the falhook[media] extra: pip install 'falhook[media]'")
    videos = {"random": os.urandom(1024 * 1024), "real": real_mp4(1024 * 1024)}
    signer = FalSigner()
    jwks = JWKSServer()
    jwks.set_jwks(signer.jwks())
    jwks.start()
    sides = ["candidate", *(["baseline"] if args.baseline else [])]
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for rnd in range(args.rounds):
            for kind in args.videos.split(","):
                for side in sides[rnd % len(sides) :] + sides[: rnd % len(sides)]:
                    got = one_run(side, videos[kind], args, jwks, signer)
                    results.setdefault((side, kind), []).extend(got)
                    print(
                        f"round {rnd} {kind:6} {side:9} p50 {pct(got, 0.5):6.1f} ms"
                        f"  p99 {pct(got, 0.99):6.1f} ms  ({len(got)} events)",
                        flush=True,
                    )
    finally:
        jwks.stop()
    print(f"\nwebhook 200 -> 1 MiB video on disk, {args.rate:g}/s, falhook[media] installed:")
    for (side, kind), values in sorted(results.items()):
        print(
            f"  {side:9} {kind:6} ({len(values)} events, video {len(videos[kind])} bytes):"
            f" p50 {pct(values, 0.5):.1f} ms, p99 {pct(values, 0.99):.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
