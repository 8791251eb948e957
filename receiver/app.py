"""The ASGI app: webhook intake, health, readiness and metrics.

The request path does only what must happen before fal gets its answer: read the body
(bounded), verify the signature, parse the envelope, store the event durably, answer.
Everything slow happens after the 200, in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from handlers.base import Sink
from handlers.registry import build_sinks, close_sinks
from receiver.config import Settings
from receiver.envelope import EnvelopeError, parse_envelope
from receiver.intake import new_event
from receiver.keys import FalKeys
from receiver.logs import configure_logging
from receiver.metrics import Metrics
from receiver.store import Store, StoreUnavailable, make_store
from receiver.verify import VerificationError, check_headers, check_user, verify_signature

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


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing past `limit` bytes without buffering more than that."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


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
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False
    _inline_worker: Any = None
    _start_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _counts: tuple[float, dict[str, int]] = (0.0, {})

    async def start(self) -> None:
        await self.store.open()
        await self.keys.start()
        if self.run_worker or self.inline:
            from receiver.worker import Worker

            worker = Worker(self.settings, self.store, self.sinks, metrics=self.metrics)
            if self.inline:
                self._inline_worker = worker
            else:
                self.worker_task = asyncio.create_task(
                    self._run_worker(worker), name="falhook-worker"
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
        if self.worker_task is not None:
            await asyncio.gather(self.worker_task, return_exceptions=True)
        await self.keys.aclose()
        await close_sinks(self.sinks)
        await self.store.close()

    async def counts(self) -> dict[str, int]:
        at, cached = self._counts
        if time.monotonic() - at > _COUNTS_TTL:
            cached = await self.store.counts()
            self._counts = (time.monotonic(), cached)
        return cached


class WebhookEndpoint:
    """POST /webhooks/{route}: checks in the contract's order, first failure wins."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        r = runtime.settings.receiver
        self.limit = r.max_body_bytes
        self.tolerance = r.timestamp_tolerance
        self.allowed = frozenset(r.allowed_user_ids)

    async def handle(self, request: Request) -> Response:
        route = request.path_params["route"]
        rt = self.rt
        if not rt.started:
            await rt.ensure_started()
        conf = rt.settings.routes.get(route)
        if conf is None:
            return self._reject(route, 404, "unknown_route", f"no route named {route!r}")
        if request.method != "POST":
            return error(405, "method_not_allowed", "use POST", headers={"Allow": "POST"})
        try:
            body = await read_body(request, self.limit)
        except BodyTooLarge:
            return self._reject(
                route, 413, "body_too_large", f"the body exceeds {self.limit} bytes"
            )
        except ClientDisconnect:
            return error(400, "client_disconnected", "the client went away mid-body")

        headers = request.headers
        started = time.perf_counter()
        try:
            signed = check_headers(headers, body, now=time.time(), tolerance=self.tolerance)
        except VerificationError as exc:
            return self._reject(route, 401, exc.code, exc.detail)
        keys = rt.keys.keys()
        if not keys and not await rt.keys.ensure_loaded():
            return self._reject(
                route, 503, "keys_unavailable", "no signing keys could be loaded; retry later"
            )
        verified = verify_signature(signed, rt.keys.keys())
        if not verified and await rt.keys.refetch_for_unknown():
            verified = verify_signature(signed, rt.keys.keys())  # keys rotated
        rt.metrics.verify_seconds.observe(time.perf_counter() - started)
        if not verified:
            return self._reject(route, 401, "bad_signature", "no fal key verifies the signature")
        try:
            check_user(signed, self.allowed)
        except VerificationError as exc:
            return self._reject(route, 401, exc.code, exc.detail)

        try:
            envelope = parse_envelope(body)
        except EnvelopeError as exc:
            return self._reject(route, 400, "bad_envelope", str(exc))
        if envelope.request_id != signed.request_id:
            return self._reject(
                route, 400, "request_id_mismatch", "body request_id differs from the header's"
            )

        event = new_event(envelope, route=route, sinks=conf.sinks, body=body, headers=dict(headers))
        started = time.perf_counter()
        try:
            fresh = await rt.store.accept(event)
        except StoreUnavailable as exc:
            log.error("store refused an event", request_id=envelope.request_id, error=str(exc))
            return self._reject(route, 503, "store_unavailable", "the event could not be stored")
        rt.metrics.accept_seconds.observe(time.perf_counter() - started)
        status = "accepted" if fresh else "duplicate"
        if rt.inline:
            unfinished = await rt.deliver_inline(envelope.request_id)
            if unfinished:  # a non-2xx hands the retry to fal's own schedule
                return self._reject(
                    route,
                    503,
                    "delivery_incomplete",
                    f"stored, but not yet delivered to {', '.join(unfinished)}; retry later",
                )
        rt.metrics.webhooks.labels(route=route, outcome=status, reason="").inc()
        log.info(
            "webhook " + status,
            request_id=envelope.request_id,
            route=route,
            fal_status=envelope.status,
            files=len(event.files),
        )
        return JSONBody({"status": status, "request_id": envelope.request_id})

    def _reject(self, route: str, status: int, code: str, detail: str) -> Response:
        self.rt.metrics.webhooks.labels(route=route, outcome="rejected", reason=code).inc()
        log.info("webhook rejected", route=route, status=status, reason=code)
        return error(status, code, detail)


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
) -> Starlette:
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

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/webhooks/{route}", WebhookEndpoint(runtime).handle, methods=methods),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/metrics", metrics_view, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan if managed_lifespan else None,
    )
    app.state.runtime = runtime
    return app
