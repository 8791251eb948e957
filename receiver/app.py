"""The ASGI app: webhook intake, health, readiness and metrics.

The request path does only what must happen before fal gets its answer: read the body
(bounded), verify the signature, parse the envelope, store the event durably, answer.
Everything slow happens after the 200, in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from falhook.config import Settings
from falhook.intake.endpoint import PREFIX, Receive, Scope, Send, WebhookEndpoint
from falhook.intake.keys import FalKeys
from falhook.logs import configure_logging
from falhook.metrics import Metrics
from falhook.sinks.base import Sink
from falhook.sinks.registry import build_sinks, close_sinks
from falhook.store import Store, make_store

log = structlog.get_logger("falhook.receiver")
_encode = msgspec.json.encode
_COUNTS_TTL = 5.0


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    """The contract's error body: {"error": code, "detail": sentence}."""
    return JSONBody({"error": code, "detail": detail}, status_code=status, headers=headers)


@dataclass
class Runtime:
    """What the app holds for its lifetime (also used by the serverless entry point)."""

    settings: Settings
    store: Store
    keys: FalKeys
    metrics: Metrics
    sinks: dict[str, Sink]
    run_worker: bool
    inline: bool = False
    worker_task: asyncio.Task[None] | None = None
    reconcile_task: asyncio.Task[None] | None = None
    _queue: Any = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False
    _inline_worker: Any = None
    _start_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _counts: tuple[float, dict[str, int]] = (0.0, {})

    async def start(self) -> None:
        await self.store.open()
        await self.keys.start()
        if self.run_worker or self.inline:
            from falhook.delivery.worker import Worker

            worker = Worker(self.settings, self.store, self.sinks, metrics=self.metrics)
            if self.inline:
                self._inline_worker = worker
            else:
                self.worker_task = asyncio.create_task(
                    self._run_worker(worker), name="falhook-worker"
                )
        key = os.environ.get("FAL_KEY")
        if self.settings.reconcile.enabled and key and not self.inline:
            # Results fal could not deliver (falhook was down past fal's retries) are polled
            # for; several receivers doing it at once is harmless: storing twice is a no-op.
            from falhook.fal.reconcile import Reconciler
            from falhook.fal.submit import make_queue

            self._queue = make_queue(self.settings, key=key)
            reconciler = Reconciler(self.store, self._queue, self.settings)
            self.reconcile_task = asyncio.create_task(
                reconciler.run(self.stop), name="falhook-reconcile"
            )
        self.started = True

    async def ensure_started(self) -> None:
        """Start once per process (serverless: once per container, on its first request)."""
        if not self.started:
            async with self._start_lock:
                if not self.started:
                    await self.start()

    async def deliver_inline(self, request_id: str) -> list[str]:
        """Serverless inline mode: run this event's undelivered deliveries now, within the
        deadline. Returns the sinks still not delivered (empty: done). Dead ones count as
        done: fal's retries cannot help them; `events replay` can."""
        worker = self._inline_worker
        deadline = self.settings.serverless.inline_deadline
        try:
            async with asyncio.timeout(deadline):
                jobs = await self.store.lease(
                    owner=worker.owner,
                    limit=max(1, len(self.sinks)),
                    lease_seconds=max(deadline * 2, self.settings.delivery.lease_seconds),
                    request_id=request_id,
                )
                for job in jobs:
                    await worker.process(job)  # a timeout cancels it: leases are handed back
        except TimeoutError:
            log.warning("inline delivery ran out of time", request_id=request_id, deadline=deadline)
        view = await self.store.get_event(request_id)
        if view is None:
            return ["(event missing)"]
        return sorted(k for k, d in view.deliveries.items() if d.state not in ("delivered", "dead"))

    async def _run_worker(self, worker: Any) -> None:
        try:
            await worker.run(self.stop)
        finally:
            await worker.aclose()

    async def close(self) -> None:
        if not self.started:
            return
        self.started = False
        self.stop.set()
        tasks = [t for t in (self.worker_task, self.reconcile_task) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._queue is not None:
            await self._queue.aclose()
        await self.keys.aclose()
        await close_sinks(self.sinks)
        await self.store.close()

    async def counts(self) -> dict[str, int]:
        at, cached = self._counts
        if time.monotonic() - at > _COUNTS_TTL:
            cached = await self.store.counts()
            self._counts = (time.monotonic(), cached)
        return cached


class Falhook:
    """The ASGI app: webhooks go straight to their endpoint (the hot path), everything else
    (health, readiness, metrics, lifespan) to Starlette."""

    def __init__(self, app: Starlette, webhooks: WebhookEndpoint, runtime: Runtime) -> None:
        self.app = app
        self.webhooks = webhooks
        self.runtime = runtime
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self.webhooks(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    run_worker: bool = True,
    store: Store | None = None,
    keys: FalKeys | None = None,
    metrics: Metrics | None = None,
    sinks: dict[str, Sink] | None = None,
    inline: bool = False,
    managed_lifespan: bool = True,
) -> Falhook:
    """The falhook ASGI app. Sinks are built here, so config mistakes fail at start-up.

    inline: run each event's sinks before answering (serverless inline mode).
    managed_lifespan=False: no ASGI lifespan; the runtime starts on the first request and
    lives as long as the process (Mangum runs a lifespan around every invocation, which
    would reopen the store and refetch keys each time).
    """
    configure_logging()
    r = settings.receiver
    runtime = Runtime(
        settings=settings,
        store=store or make_store(settings),
        keys=keys
        or FalKeys(
            r.jwks_url,
            refetch_interval=r.jwks_refetch_interval,
            refresh_interval=r.jwks_refresh_interval,
        ),
        metrics=metrics or Metrics(),
        sinks=sinks if sinks is not None else build_sinks(settings),
        run_worker=run_worker and not inline,
        inline=inline,
    )

    async def healthz(_: Request) -> Response:
        return JSONBody({"status": "ok"})

    async def readyz(_: Request) -> Response:
        await runtime.ensure_started()
        store_ok = await runtime.store.ping()
        keys_ok = runtime.keys.loaded
        body = {"store": store_ok, "keys": keys_ok}
        if store_ok and keys_ok:
            return JSONBody({"status": "ready", **body})
        return JSONBody({"status": "not_ready", **body}, status_code=503)

    async def metrics_view(_: Request) -> Response:
        m = runtime.metrics
        with contextlib.suppress(Exception):  # metrics must answer even with the store away
            counts = await runtime.counts()
            for state in ("pending", "delivering", "retrying", "delivered", "dead"):
                m.deliveries_by_state.labels(state=state).set(counts.get(state, 0))
        m.keys_loaded.set(len(runtime.keys.keys()))
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error(exc.status_code, code, str(exc.detail))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await runtime.ensure_started()
        log.info(
            "falhook ready",
            routes=sorted(settings.routes),
            store=settings.store.url.split("://", 1)[0],
            worker=run_worker,
        )
        try:
            yield
        finally:
            await runtime.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/metrics", metrics_view, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan if managed_lifespan else None,
    )
    app.state.runtime = runtime
    return Falhook(app, WebhookEndpoint(runtime), runtime)
