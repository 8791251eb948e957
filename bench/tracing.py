"""What tracing costs: intake and delivery with tracing on, off, and absent, in one run.

Three variants, each measured in a fresh process, interleaved round by round (the order
rotates), on a SQLite store in /dev/shm so that the disk's noise stays out:

    main   the code before tracing existed (the merge base with `main`, exported with
           `git archive` into a temporary tree and imported from there)
    off    this tree, tracing off (the default: OpenTelemetry is not imported)
    on     this tree, tracing on, every span kept by OpenTelemetry's in-memory exporter
           (SimpleSpanProcessor: exported as each span ends, on the request's own path)

Each process: N signed webhooks posted through the ASGI app (16 at a time, the webhook
endpoint, verification and the store's group commit included) = intake events/s; then one
worker delivers them all to a sink that does nothing = delivery events/s.

    python bench/tracing.py --events 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("main", "off", "on")
CONCURRENCY = 16


async def noop(ctx: Any) -> None:
    """The sink: takes the event, does nothing (the worker and store are what is measured)."""


# --- one measurement, in its own process -------------------------------------------------------


def child(variant: str, events: int, work: Path) -> dict[str, Any]:
    if variant == "on":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = TracerProvider()
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    result = asyncio.run(measure(variant, events, work))
    if variant == "on":
        result["spans"] = len(exporter.get_finished_spans())
    return result


async def measure(variant: str, events: int, work: Path) -> dict[str, Any]:
    import falhook
    from falhook.app import create_app
    from falhook.config import settings_from_dict
    from falhook.logs import configure_logging
    from falhook.runtime import Runtime
    from falhook.testing import FalSigner, JWKSServer, sign_request

    configure_logging("warning", json=True)
    signer = FalSigner(user_id="bench")
    with JWKSServer() as jwks:
        jwks.set_jwks(signer.jwks())
        raw: dict[str, Any] = {
            "receiver": {"jwks_url": jwks.url},
            "store": {"url": f"sqlite:///{work}/events.db"},
            "downloads": {"spool_dir": str(work / "spool")},
            "delivery": {"poll_interval": 0.05, "concurrency": 8},
            "sinks": {"noop": {"type": "python", "handler": "bench.tracing:noop"}},
            "routes": {"default": {"sinks": ["noop"]}},
        }
        if variant == "on":
            raw["telemetry"] = {"enabled": True}
        settings = settings_from_dict(raw, base_dir=work)
        signed = [sign_request(signer, payload={"text": "done", "seed": i}) for i in range(events)]
        intake = await post_all(create_app(settings, run_worker=False), signed)
        delivery = await deliver_all(Runtime(settings, worker="on_demand"), events)
    return {"intake": intake, "delivery": delivery, "falhook": falhook.__file__}


async def post_all(app: Any, signed: list[tuple[str, bytes, dict[str, str]]]) -> float:
    import httpx

    await app.runtime.ensure_started()  # keys loaded, store open: not part of the timing
    queue = list(reversed(signed))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def poster() -> None:
                while queue:
                    _, body, headers = queue.pop()
                    answer = await client.post("/webhooks/default", content=body, headers=headers)
                    assert answer.status_code == 200, answer.text

            started = time.perf_counter()
            await asyncio.gather(*(poster() for _ in range(CONCURRENCY)))
            return len(signed) / (time.perf_counter() - started)
    finally:
        await app.runtime.close()


async def deliver_all(runtime: Any, events: int) -> float:
    await runtime.start()
    try:
        stop = asyncio.Event()
        started = time.perf_counter()
        loop = asyncio.create_task(runtime.worker.run(stop))
        deadline = started + 600
        while (await runtime.store.counts()).get("delivered", 0) < events:
            if time.perf_counter() > deadline or loop.done():
                raise RuntimeError(f"not delivered: {await runtime.store.counts()}")
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - started
        stop.set()
        await loop
        return events / seconds
    finally:
        await runtime.close()


# --- the run: variants interleaved ------------------------------------------------------------


def baseline_tree(rev: str, into: Path) -> Path:
    """The package `falhook` as it was at `rev`, importable from `into`."""
    archive = subprocess.run(
        ["git", "archive", rev, "receiver", "handlers"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "receiver").rename(into / "falhook")
    (into / "handlers").rename(into / "falhook" / "sinks")
    return into


def run_child(variant: str, events: int, tree: Path, scratch: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"falhook-trace-{variant}-", dir=scratch))
    paths = [str(tree)] if variant == "main" else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT)])
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--events", str(events), str(work)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(runs: dict[str, list[dict[str, Any]]]) -> None:
    def median(variant: str, what: str) -> float:
        return statistics.median(r[what] for r in runs[variant])

    for what in ("intake", "delivery"):
        figures = "  ".join(f"{v} {'/'.join(f'{r[what]:.0f}' for r in runs[v])}" for v in VARIANTS)
        on_off = median("on", what) / median("off", what)
        off_main = median("off", what) / median("main", what)
        print(f"{what} events/s by round: {figures}")
        print(f"  medians: on/off {on_off:.3f}  off/main {off_main:.3f}")
    print(f"spans per run with tracing on: {runs['on'][0].get('spans')}")
    origins = ", ".join(f"{v}={runs[v][0]['falhook']}" for v in VARIANTS)
    print(f"imported from: {origins}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline-rev", default="", help="default: the merge base with main")
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("work", nargs="?")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.events, Path(args.work))))
        return 0
    rev = (
        args.baseline_rev
        or subprocess.run(
            ["git", "merge-base", "HEAD", "main"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    scratch = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="falhook-main-") as tmp:
        tree = baseline_tree(rev, Path(tmp))
        print(f"baseline {rev[:12]}, {args.events} events, {args.rounds} rounds", flush=True)
        for i in range(args.rounds):
            order = VARIANTS[i % 3 :] + VARIANTS[: i % 3]
            for variant in order:
                runs[variant].append(run_child(variant, args.events, tree, scratch))
            print(
                f"round {i + 1}: "
                + ", ".join(
                    f"{v} {runs[v][-1]['intake']:.0f}/{runs[v][-1]['delivery']:.0f}" for v in order
                ),
                flush=True,
            )
    report(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
