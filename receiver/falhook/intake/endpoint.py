"""POST /webhooks/{route}: the webhook endpoint, as a plain ASGI callable.

It sits in front of Starlette (see app.py) because it is the hot path: one request per fal
result, each paying for an Ed25519 verify and a durable store. Plain ASGI skips the router,
middleware and Request/Response objects a general-purpose framework needs and this path
does not.

Checks run in the contract's order, first failure wins: 404 unknown route, 405 method,
413 body size (counted while reading; never buffering past the limit), 401 signature,
503 no keys at all, 400 envelope, 503 store; then 200 accepted or duplicate. While the body
is read, a body too slow to arrive gets 408 and one the memory budget cannot hold 503
(intake/body.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import replace
from typing import Any

import msgspec
import structlog

from falhook.config import Settings
from falhook.intake.body import BodyBudget, BodyRules, Busy, TooLarge, TooSlow, read_body
from falhook.intake.envelope import Envelope
from falhook.intake.events import FAL_HEADERS, new_event
from falhook.intake.keys import FalKeys
from falhook.intake.offload import OFF_LOOP_BYTES, off_loop
from falhook.intake.verifier import WebhookChecks
from falhook.intake.verify import SignedRequest, VerificationError, check_header_form
from falhook.logs import LineBatch
from falhook.metrics import Metrics
from falhook.store.models import NewEvent, StoreUnavailable
from falhook.store.roles import IntakeStore
from falhook.telemetry import Telemetry

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PREFIX = "/webhooks/"
log = structlog.get_logger("falhook.receiver")
_encode = msgspec.json.encode
_WANTED = frozenset(name.encode() for name in (*FAL_HEADERS, "content-length"))
_JSON = (b"content-type", b"application/json")
_UNREAD_BODY = frozenset({"body_too_large", "body_timeout", "busy"})


class Reply(Exception):
    """An answer decided before the end of the checks: status, code, sentence."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


Ready = Callable[[], Awaitable[None]]
# Serverless inline mode: deliver this event now; the sinks still not delivered.
DeliverNow = Callable[[str], Awaitable[list[str]]]


class WebhookEndpoint:
    """Verifies and stores webhooks. `ready` is awaited before the first check of each
    request (the serverless runtime starts on its first request); `deliver_now`, when given,
    runs the event's sinks before answering. `batch_logs` False: a line per webhook as it is
    answered (serverless, where the event loop may not turn again before the process is
    frozen)."""

    def __init__(
        self,
        settings: Settings,
        *,
        keys: FalKeys,
        store: IntakeStore,
        metrics: Metrics,
        telemetry: Telemetry | None = None,
        ready: Ready | None = None,
        deliver_now: DeliverNow | None = None,
        batch_logs: bool = True,
    ) -> None:
        r = settings.receiver
        self.routes = {name: route.sinks for name, route in settings.routes.items()}
        self.keys = keys
        self.store = store
        self.metrics = metrics
        # None when tracing is off: the request path then does not even look at it.
        self.tracing = telemetry if telemetry is not None and telemetry.enabled else None
        self.ready = ready
        self.deliver_now = deliver_now
        self.trail = LineBatch(log, "webhooks accepted", at_once=not batch_logs)
        self.limit = r.max_body_bytes
        self.body_rules = BodyRules(r.max_body_bytes, r.body_timeout, r.body_min_rate)
        self.budget = BodyBudget(r.max_buffered_bytes)
        metrics.unfinished_body_bytes.set_function(lambda: self.budget.held)
        self.tolerance = r.timestamp_tolerance
        self.checks = WebhookChecks(
            keys, tolerance=r.timestamp_tolerance, allowed_user_ids=r.allowed_user_ids
        )
        # Labelled children resolved once: labels() takes a lock and builds a key each time.
        self.counted = {
            (route, status): metrics.webhooks.labels(route, status, "")
            for route in self.routes
            for status in ("accepted", "duplicate")
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.tracing is not None:
            return await self._traced(scope, receive, send)
        answer = await self._answer(scope, receive)
        if answer is not None:  # None: the client went away, nothing to answer
            status, doc, close = answer
            await _send(send, status, doc, allow=status == 405, close=close)

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.tracing is not None
        route = route_path(scope)[len(PREFIX) :]
        with self.tracing.receive(route, known=route in self.routes) as span:
            answer = await self._answer(scope, receive)
            if answer is None:
                span.answered(499, "abandoned", "the client went away")
                return
            status, doc, close = answer
            span.answered(status, doc.get("status", "rejected"), doc.get("error"))
            await _send(send, status, doc, allow=status == 405, close=close)

    async def _answer(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, dict[str, Any], bool] | None:
        """(status, body, close the connection) for one request."""
        route = route_path(scope)[len(PREFIX) :]
        close = False
        try:
            if route not in self.routes:
                raise Reply(404, "unknown_route", f"no route named {route!r}")
            if scope["method"] != "POST":
                raise Reply(405, "method_not_allowed", "use POST")
            headers = _headers(scope)
            body = await self._read_body(headers, receive)
            if body is None:
                return None  # the client went away: nothing to answer, nothing stored
            status, doc = await self.process(route, headers, body)
        except Reply as reply:
            self._count_rejection(route, reply)
            status, doc = reply.status, _error(reply.code, reply.detail)
            # A body left unread (too large, too slow, no room) ends the connection: the
            # client must not keep it by trickling the rest.
            close = reply.code in _UNREAD_BODY
        return status, doc, close

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        declared = headers.get("content-length")
        try:
            # Headers that cannot verify whatever the body: keep none of it (the answer is
            # 413 if it is too large, else 401), so such requests hold no memory.
            check_header_form(headers, now=time.time(), tolerance=self.tolerance)
            keep = True
        except VerificationError:
            keep = False
        try:
            return await read_body(
                receive,
                self.body_rules,
                self.budget,
                declared=int(declared) if declared and declared.isdigit() else None,
                keep=keep,
            )
        except TooLarge:
            raise Reply(413, "body_too_large", f"the body exceeds {self.limit} bytes") from None
        except TooSlow:
            raise Reply(
                408, "body_timeout", "the body did not arrive in time (too slow or stalled)"
            ) from None
        except Busy:
            raise Reply(
                503, "busy", "too many unfinished webhook bodies at once; retry later"
            ) from None

    async def process(
        self, route: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Verify, parse and store one webhook whose route and size already passed."""
        if self.ready is not None:
            await self.ready()
        started = time.perf_counter()
        big = len(body) > OFF_LOOP_BYTES
        try:
            signed = await self.checks.signed(headers, body, big=big)  # hashing megabytes
        except VerificationError as exc:
            if exc.code == "bad_signature":  # a signature refused counts in the histogram
                self.metrics.verify_seconds.observe(time.perf_counter() - started)
            raise Reply(exc.status, exc.code, exc.detail) from None
        self.metrics.verify_seconds.observe(time.perf_counter() - started)

        # A payload of thousands of Files is parsed and walked off the loop too.
        envelope, event = await off_loop(big, self._event, route, headers, body, signed)
        event = self._with_trace(envelope, event)
        started = time.perf_counter()
        try:
            fresh = await self.store.accept(event)
        except StoreUnavailable as exc:
            log.error("store refused an event", request_id=envelope.request_id, error=str(exc))
            raise Reply(503, "store_unavailable", "the event could not be stored") from None
        self.metrics.accept_seconds.observe(time.perf_counter() - started)
        status = "accepted" if fresh else "duplicate"
        if self.deliver_now is not None:
            unfinished = await self.deliver_now(envelope.request_id)
            if unfinished:  # a non-2xx hands the retry to fal's own schedule
                raise Reply(
                    503,
                    "delivery_incomplete",
                    f"stored, but not yet delivered to {', '.join(unfinished)}; retry later",
                )
        self.counted[route, status].inc()
        # One line for the webhooks answered together (docs/performance.md); at debug
        # level, one each as well.
        self.trail.add(status, route, envelope.request_id)
        log.debug(
            "webhook " + status,
            request_id=envelope.request_id,
            route=route,
            fal_status=envelope.status,
            files=len(event.files),
        )
        return 200, {"status": status, "request_id": envelope.request_id}

    def _with_trace(self, envelope: Envelope, event: NewEvent) -> NewEvent:
        """The event carrying the receive span's context (the store takes it to the
        workers, in whatever process); as it is when tracing is off."""
        if self.tracing is None:
            return event
        self.tracing.annotate(request_id=envelope.request_id, fal_status=envelope.status)
        return replace(event, trace_context=self.tracing.traceparent())

    def _event(
        self, route: str, headers: dict[str, str], body: bytes, signed: SignedRequest
    ) -> tuple[Envelope, NewEvent]:
        """The envelope and the event to store; Reply(400) when the body is not one."""
        try:
            envelope = self.checks.envelope(signed, body)
        except VerificationError as exc:
            raise Reply(exc.status, exc.code, exc.detail) from None
        sinks = self.routes[route]
        return envelope, new_event(envelope, route=route, sinks=sinks, body=body, headers=headers)

    def _count_rejection(self, route: str, reply: Reply) -> None:
        # Unknown routes are not labelled by name: a scanner must not grow our metrics.
        label = route if reply.status != 404 else "(unknown)"
        self.metrics.webhooks.labels(label, "rejected", reply.code).inc()
        log.info("webhook rejected", route=label, status=reply.status, reason=reply.code)


def route_path(scope: Scope) -> str:
    """The request's path below the app's mount point. ASGI's `path` is the full path and
    `root_path` the prefix the app is mounted under (Starlette's and FastAPI's `mount`,
    `uvicorn --root-path`); a proxy that strips the prefix itself sends a path without it,
    which is then taken as it is."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :]
    return path


def _headers(scope: Scope) -> dict[str, str]:
    """Only the headers the endpoint reads (ASGI gives lower-case names)."""
    return {
        name.decode(): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in _WANTED
    }


def _error(code: str, detail: str) -> dict[str, str]:
    """The contract's error body."""
    return {"error": code, "detail": detail}


async def _send(
    send: Send, status: int, doc: dict[str, Any], *, allow: bool = False, close: bool = False
) -> None:
    body = _encode(doc)
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if allow:
        headers.append((b"allow", b"POST"))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
