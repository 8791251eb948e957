"""The ASGI app: webhook intake, health, readiness and metrics, and the console.

The request path does only what must happen before fal gets its answer: read the body
(bounded), verify the signature, parse the envelope, store the event durably, answer.
Everything slow happens after the 200, in the worker.

The app can be mounted under any path prefix of the user's own application (ASGI's
`root_path`: Starlette's and FastAPI's `mount`, `uvicorn --root-path`); its `lifespan` is
then run by the host (docs/embedding.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from falhook.config import DEFAULT_JWKS_URL, ConfigError, Settings
from falhook.console.exposure import console_served, unguarded_reason
from falhook.intake.endpoint import (
    PREFIX,
    DeliverNow,
    Receive,
    Scope,
    Send,
    WebhookEndpoint,
    route_path,
)
from falhook.intake.events import new_event
from falhook.intake.keys import FalKeys
from falhook.intake.verifier import Webhook
from falhook.logs import configure_logging
from falhook.runtime import Runtime, WorkerMode
from falhook.store.states import DELIVERY_STATES

if TYPE_CHECKING:
    from falhook.console.app import Console

log = structlog.get_logger("falhook.receiver")
CONSOLE_PREFIX = "/console"
_encode = msgspec.json.encode
_COUNTS_TTL = 5.0
_STORE_RETRY = 5.0  # seconds between readiness checks of a store that does not answer
Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]
UNHOSTED = (
    "falhook started on its first request, not with the server: its lifespan was not run "
    "(a host does not run a mounted app's lifespan). Pass lifespan=falhook_app.lifespan to "
    "FastAPI(...) or Starlette(...), or enter `async with falhook_app.lifespan():` in your "
    "own lifespan, so that the worker, the key cache and reconciliation start with the "
    "server and stop gracefully with it (docs/embedding.md)"
)


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    """The contract's error body: {"error": code, "detail": sentence}."""
    return JSONBody({"error": code, "detail": detail}, status_code=status, headers=headers)


class Probes:
    """/healthz, /readyz and /metrics over one runtime."""

    def __init__(self, runtime: Runtime, keys: FalKeys | None, start: Starter) -> None:
        self.runtime = runtime
        self.keys = keys
        self.start = start
        self._counted_at = 0.0
        self._counts: dict[str, int] = {}

    async def healthz(self, _: Request) -> Response:
        return JSONBody({"status": "ok"})

    async def readyz(self, _: Request) -> Response:
        await self.start()
        store_ok = await self.runtime.store.ping()
        keys_ok = self.keys is not None and self.keys.loaded
        # Sink problems are reported, not made a 503: webhooks are still stored safely and
        # their deliveries retry, so the receiver stays in the load balancer.
        problems = await self.runtime.check_sinks()
        sinks = {name: [str(p) for p in problems.get(name, [])] for name in self.runtime.sinks}
        body = {"store": store_ok, "keys": keys_ok, "sinks": sinks}
        if store_ok and keys_ok:
            return JSONBody({"status": "ready", **body})
        return JSONBody({"status": "not_ready", **body}, status_code=503)

    async def metrics(self, _: Request) -> Response:
        m = self.runtime.metrics
        with contextlib.suppress(Exception):  # metrics must answer even with the store away
            by_state = await self._deliveries_by_state()
            for state in DELIVERY_STATES:
                m.deliveries_by_state.labels(state=state).set(by_state.get(state, 0))
        m.keys_loaded.set(len(self.keys.keys()) if self.keys is not None else 0)
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    async def _deliveries_by_state(self) -> dict[str, int]:
        # Read at most every few seconds: a scraper must not turn into a load on the store.
        if time.monotonic() - self._counted_at > _COUNTS_TTL:
            self._counts = await self.runtime.store.counts()
            self._counted_at = time.monotonic()
        return self._counts


async def http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error(exc.status_code, code, str(exc.detail))


class Starter:
    """Starts the runtime once: with the server (the app's lifespan) or, where none ran, on
    the first request that needs it. An app meant to have a lifespan that starts on a
    request instead says once, as a warning, how to wire it."""

    def __init__(self, runtime: Runtime, *, expects_lifespan: bool) -> None:
        self.runtime = runtime
        self.expects_lifespan = expects_lifespan
        self.hosted = False  # the lifespan runs: no warning
        self.warned = False

    async def __call__(self) -> None:
        if self.runtime.started:
            return
        if self.expects_lifespan and not self.hosted and not self.warned:
            self.warned = True
            log.warning(UNHOSTED)
        await self.runtime.ensure_started()


class Falhook:
    """The ASGI app: webhooks go straight to their endpoint (the hot path), the console to
    its own app, everything else (health, readiness, metrics) to Starlette. Paths are read
    below `root_path`, so the app answers wherever it is mounted."""

    def __init__(
        self,
        app: Starlette,
        webhooks: WebhookEndpoint | None,
        runtime: Runtime,
        start: Starter,
        lifespan: Lifespan,
        *,
        serve_lifespan: bool = True,
    ) -> None:
        self.app = app
        self.webhooks = webhooks
        self.runtime = runtime
        self.state = app.state
        self.start = start
        self._lifespan_of = lifespan
        # False (serverless): the ASGI lifespan is not taken, the runtime lives as long as
        # the process and starts on the first request.
        self.serve_lifespan = serve_lifespan
        # A configuration mistake found at start-up (a sink's folder not writable): the
        # server exits and `falhook serve` prints it, without a traceback.
        self.startup_error: ConfigError | None = None
        self.console: Console | None = None  # built on the first console request
        self.console_on = console_served(runtime.settings)  # warns when it stays off
        self._console_app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = route_path(scope)
            if self.webhooks and path.startswith(PREFIX):
                return await self.webhooks(scope, receive, send)
            if self._is_console(path):
                return await (await self._console())(scope, receive, send)
        elif kind == "lifespan" and self.serve_lifespan:
            return await self._serve_lifespan(receive, send)
        await self.app(scope, receive, send)

    def lifespan(self, app: object = None) -> AbstractAsyncContextManager[None]:
        """falhook's start and stop, for a host that mounts this app: `FastAPI(lifespan=
        fh.lifespan)`, `Starlette(lifespan=fh.lifespan)`, or `async with fh.lifespan():`
        inside the host's own lifespan. Starts the store, the key cache, the worker and
        reconciliation; on the way out ends the console's live streams, lets in-flight
        deliveries finish within `shutdown_grace` (or hands them back, due at once) and
        closes everything. A configuration mistake found at start (a sink folder that
        cannot be written) raises ConfigError, which stops the host's start-up."""
        return self._hosted()

    @contextlib.asynccontextmanager
    async def _hosted(self) -> AsyncIterator[None]:
        self.start.hosted = True
        async with self._lifespan_of(self.app):
            try:
                yield
            finally:
                self.stop_streams()
                await self.close_console()

    async def accept(self, webhook: Webhook, *, route: str) -> bool:
        """Store a webhook verified by the user's own route (WebhookVerifier) as the
        endpoint stores one: durably, with a delivery per sink of `route`, deduplicated on
        request_id (False: already stored). Raises KeyError for a route not configured and
        StoreUnavailable when the store cannot take it (answer 503: fal retries)."""
        sinks = self.runtime.settings.routes[route].sinks
        await self.start()
        event = new_event(
            webhook.envelope, route=route, sinks=sinks, body=webhook.body, headers=webhook.headers
        )
        fresh = await self.runtime.store.accept(event)
        log.info(
            "webhook " + ("accepted" if fresh else "duplicate"),
            request_id=webhook.request_id,
            route=route,
            fal_status=webhook.status,
            files=len(event.files),
            via="accept",
        )
        return fresh

    def _is_console(self, path: str) -> bool:
        if not self.console_on or not path.startswith(CONSOLE_PREFIX):
            return False
        return len(path) == len(CONSOLE_PREFIX) or path[len(CONSOLE_PREFIX)] == "/"

    async def _console(self) -> Starlette:
        """The console's app, built on its first request: Jinja2 and the templates load
        only when someone opens the console."""
        await self.start()
        if self._console_app is None:
            from falhook.console.app import console_app

            self._console_app, self.console = console_app(self.runtime.settings, self.runtime.store)
        return self._console_app

    def stop_streams(self) -> None:
        """The server is stopping: end the console's live streams, so it does not wait for
        open tabs."""
        if self.console is not None:
            self.console.state.feed.stop()

    async def close_console(self) -> None:
        if self.console is not None:
            await self.console.aclose()

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol, when a server runs this app itself (`falhook serve`,
        uvicorn, Modal)."""
        await receive()  # lifespan.startup
        context = self.lifespan()
        try:
            await context.__aenter__()
        except ConfigError as exc:
            self.startup_error = exc
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        except BaseException:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await context.__aexit__(None, None, None)
        except BaseException:
            await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})


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
    parts.setdefault("sink_checks_fatal", managed_lifespan)
    runtime = Runtime(settings, worker=worker, reconcile=not inline, **parts)
    assert runtime.keys is not None
    start = Starter(runtime, expects_lifespan=managed_lifespan)
    webhooks = WebhookEndpoint(
        settings,
        keys=runtime.keys,
        store=runtime.store,
        metrics=runtime.metrics,
        telemetry=runtime.telemetry,
        ready=start,
        deliver_now=_inline_delivery(runtime) if inline else None,
        batch_logs=managed_lifespan,
    )
    probes = Probes(runtime, runtime.keys, start)
    app = Starlette(
        routes=[
            Route("/healthz", probes.healthz, methods=["GET", "HEAD"]),
            Route("/readyz", probes.readyz, methods=["GET", "HEAD"]),
            Route("/metrics", probes.metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.state.runtime = runtime
    lifespan = _lifespan(runtime, run_worker)
    return Falhook(app, webhooks, runtime, start, lifespan, serve_lifespan=managed_lifespan)


def create_console_app(settings: Settings) -> Falhook:
    """The console alone (`falhook console`): its pages and API over the configured store,
    without webhooks, keys or a worker; for deployments whose receivers and workers run
    elsewhere."""
    configure_logging()
    if not settings.console.enabled:
        raise ConfigError("[console].enabled", "is false: there is no console to serve")
    if (unguarded := unguarded_reason(settings)) is not None:
        raise ConfigError("[console].token", unguarded)
    runtime = Runtime(settings)  # the store only
    start = Starter(runtime, expects_lifespan=True)
    probes = Probes(runtime, None, start)
    app = Starlette(
        routes=[
            Route("/", lambda r: RedirectResponse(f"{r.scope.get('root_path', '')}/console/", 307)),
            Route("/healthz", probes.healthz, methods=["GET", "HEAD"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.state.runtime = runtime

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await runtime.ensure_started()
        try:
            yield
        finally:
            await runtime.close()

    return Falhook(app, None, runtime, start, lifespan)


def _inline_delivery(runtime: Runtime) -> DeliverNow:
    async def deliver_now(request_id: str) -> list[str]:
        assert runtime.worker is not None
        deadline = runtime.settings.serverless.inline_deadline
        return await runtime.worker.deliver_now(request_id, deadline=deadline)

    return deliver_now


def _lifespan(runtime: Runtime, run_worker: bool) -> Lifespan:
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await runtime.ensure_started()
        announcer = asyncio.create_task(_announce_ready(runtime, run_worker))
        try:
            yield
        finally:
            announcer.cancel()
            await asyncio.gather(announcer, return_exceptions=True)
            await runtime.close()

    return lifespan


OFFLINE_HINT = "without the internet, `falhook emulate` is a local fal (README: Quick start)"


async def _announce_ready(runtime: Runtime, run_worker: bool) -> None:
    """Log "falhook ready" when /readyz would say so (store reachable, keys loaded): at once,
    or once fal's JWKS has been fetched (the keys retry on their own timer)."""
    settings = runtime.settings
    assert runtime.keys is not None
    if not runtime.keys.loaded:
        offline = settings.receiver.jwks_url == DEFAULT_JWKS_URL
        log.warning(
            "falhook started, not ready: no signing keys yet (webhooks get 503 until fal's "
            "JWKS can be fetched; see the jwks fetch failed line for why)",
            jwks=runtime.keys.log_url,
            **({"offline": OFFLINE_HINT} if offline else {}),
        )
        await runtime.keys.wait_loaded()
    while not await runtime.store.ping():
        log.warning("falhook started, not ready: the store does not answer")
        await asyncio.sleep(_STORE_RETRY)  # until it answers, or the server stops (cancel)
    log.info(
        "falhook ready",
        routes=sorted(settings.routes),
        store=settings.store.url.split("://", 1)[0],
        worker=run_worker,
    )
