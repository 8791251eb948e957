"""The ASGI app: webhook intake, health, readiness and metrics.

The request path does only what must happen before fal gets its answer: read the body
(bounded), verify the signature, parse the envelope, store the event durably, answer.
Everything slow happens after the 200, in the worker.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
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
from falhook.logs import configure_logging
from falhook.runtime import Runtime, WorkerMode
from falhook.store.roles import EventReader
from falhook.store.states import DELIVERY_STATES

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


class _Counts:
    """Deliveries per state for /metrics, read from the store at most every few seconds (a
    scraper must not turn into a load on the store)."""

    def __init__(self, store: EventReader) -> None:
        self.store = store
        self._at = 0.0
        self._cached: dict[str, int] = {}

    async def get(self) -> dict[str, int]:
        if time.monotonic() - self._at > _COUNTS_TTL:
            self._cached = await self.store.counts()
            self._at = time.monotonic()
        return self._cached


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
    inline: bool = False,
    managed_lifespan: bool = True,
    **parts: Any,
) -> Falhook:
    """The falhook ASGI app. Sinks are built here, so config mistakes fail at start-up.

    run_worker: deliver in this process too (`falhook serve` without --no-worker).
    inline: run each event's sinks before answering (serverless inline mode).
    managed_lifespan=False: no ASGI lifespan; the runtime starts on the first request and
    lives as long as the process (Mangum runs a lifespan around every invocation, which
    would reopen the store and refetch keys each time).
    parts: a store, keys, metrics or sinks of the caller's, instead of those the settings name.
    """
    configure_logging()
    worker: WorkerMode = "on_demand" if inline else ("run" if run_worker else None)
    parts.setdefault("keys", True)
    if worker is None:
        parts.setdefault("sinks", {})
    runtime = Runtime(settings, worker=worker, reconcile=not inline, **parts)
    keys = runtime.keys
    assert keys is not None

    async def deliver_now(request_id: str) -> list[str]:
        assert runtime.worker is not None
        return await runtime.worker.deliver_now(
            request_id, deadline=settings.serverless.inline_deadline
        )

    webhooks = WebhookEndpoint(
        settings,
        keys=keys,
        store=runtime.store,
        metrics=runtime.metrics,
        ready=runtime.ensure_started,
        deliver_now=deliver_now if inline else None,
    )
    counts = _Counts(runtime.store)

    async def healthz(_: Request) -> Response:
        return JSONBody({"status": "ok"})

    async def readyz(_: Request) -> Response:
        await runtime.ensure_started()
        store_ok = await runtime.store.ping()
        keys_ok = keys.loaded
        body = {"store": store_ok, "keys": keys_ok}
        if store_ok and keys_ok:
            return JSONBody({"status": "ready", **body})
        return JSONBody({"status": "not_ready", **body}, status_code=503)

    async def metrics_view(_: Request) -> Response:
        m = runtime.metrics
        with contextlib.suppress(Exception):  # metrics must answer even with the store away
            by_state = await counts.get()
            for state in DELIVERY_STATES:
                m.deliveries_by_state.labels(state=state).set(by_state.get(state, 0))
        m.keys_loaded.set(len(keys.keys()))
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
    return Falhook(app, webhooks, runtime)
