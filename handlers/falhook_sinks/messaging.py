"""What the queue sinks (redis, amqp, nats, sqs) share: their opening (`QueueSink`), the
message, when to publish, the connection each keeps, and secrets kept out of errors.

The message is the event document (``ctx.event.document()``, the event as received) with each
file's best link: the stored copy when a sink in ``after`` stored one (S3), else fal's URL,
which is then kept as ``fal_url``.

Publishing once per event. A sink's successful output comes back in ``ctx.previous`` on later
retries and replays, and then nothing is published (``"done"``). Without it, two cases look
alike: a first try (``"fresh"``: the first attempt of the event, or of ``events replay
--force``, which forgets the output and resets the attempts) and a later attempt after one
that may have published without being recorded (``"resume"``: its answer was lost, or the
worker died between the publish and the record). Redis (its marker) and NATS (JetStream's
``Nats-Msg-Id``) honour what the broker already holds only when resuming, so a forced replay
publishes again; an SQS FIFO queue drops any message whose deduplication id (the request id)
it saw in the last 5 minutes, forced or not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Generic, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec

from falhook_sinks.base import (
    BatchResult,
    BatchSink,
    DeliveryContext,
    Permanent,
    SinkEnv,
    SinkOptions,
)
from falhook_sinks.links import best_link, stored_event_link
from falhook_sinks.options import require_extra

T = TypeVar("T")
Opts = TypeVar("Opts", bound=SinkOptions)
PublishMode = Literal["done", "fresh", "resume"]
CONTENT_TYPE = "application/json"


class QueueSink(BatchSink, Generic[Opts]):
    """A queue sink: links the files, never reads them; its client library must be installed
    (the extra named by `client`); publishes once per event, and the events handed over
    together in one round trip. A subclass sets ``options_type``, ``client`` and ``kind``
    and implements `publish_batch`."""

    reads_files = False  # links the files (a stored copy, else fal's URL), never reads them
    # The sink type's extra, the module it imports lazily and the package that brings it.
    client: ClassVar[tuple[str, str, str]]
    kind: ClassVar[str] = "queue"  # how logs name what it publishes: "redis entry"

    def __init__(self, name: str, opts: Opts, env: SinkEnv) -> None:
        require_extra(name, *self.client)
        self.name = name
        self.opts = opts

    async def deliver_batch(self, batch: Sequence[DeliveryContext]) -> list[BatchResult]:
        """An event whose earlier delivery published it is answered from that output; the
        others go to `publish_batch` together."""
        results: list[BatchResult] = [None] * len(batch)
        todo: list[tuple[int, DeliveryContext, PublishMode]] = []
        for i, ctx in enumerate(batch):
            mode = publish_mode(ctx)
            if mode == "done" and ctx.previous is not None:
                ctx.log.info(f"{self.kind} already published; not publishing again")
                results[i] = ctx.previous
            else:
                todo.append((i, ctx, mode))
        if todo:
            published = await self.publish_batch([(ctx, mode) for _, ctx, mode in todo])
            for (i, _, _), result in zip(todo, published, strict=True):
                results[i] = result
        return results

    async def publish_batch(
        self, batch: Sequence[tuple[DeliveryContext, PublishMode]]
    ) -> list[BatchResult]:
        """Publish each event (its mode is "fresh" or "resume"), in one round trip where the
        broker allows: per event, its output (``"published": True``) or its error."""
        raise NotImplementedError


def publish_mode(ctx: DeliveryContext) -> PublishMode:
    if ctx.previous and ctx.previous.get("published"):
        return "done"
    return "fresh" if ctx.attempt <= 1 else "resume"


def event_message(ctx: DeliveryContext) -> dict[str, Any]:
    """The event document, each file linked to its best copy."""
    doc = ctx.event.document()
    local = {f.path: f for f in ctx.files}
    files = []
    for view in doc.get("files") or []:
        got = local.get(view.get("path", ""))
        link = best_link(ctx, got) if got is not None else None
        if link and link != view.get("url"):
            view = {**view, "url": link, "fal_url": view.get("url")}
        files.append(view)
    doc["files"] = files
    return doc


def message_headers(ctx: DeliveryContext) -> dict[str, str]:
    """What every queue message carries beside its body: the request id, route and fal
    status, and the propagation headers (``traceparent``) when tracing is on."""
    event = ctx.event
    fixed = {"request_id": event.request_id, "route": event.route, "fal_status": event.fal_status}
    return {**ctx.headers, **fixed}


def encode(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc, enc_hook=str)


def fitted(
    ctx: DeliveryContext, doc: dict[str, Any], limit: int, target: str
) -> tuple[bytes, bool]:
    """The message within `limit` bytes, and whether it is a claim check: the event without
    its payload, which consumers fetch from ``claim_check.event_url`` when a sink in ``after``
    stored the event. Never cut: a claim check still over the limit is Permanent."""
    body = encode(doc)
    if len(body) <= limit:
        return body, False
    reason = f"the event is {len(body)} bytes, over the limit of {limit}"
    return claim_check(ctx, doc, reason, limit, target), True


def claim_check(
    ctx: DeliveryContext, doc: dict[str, Any], reason: str, limit: int, target: str
) -> bytes:
    """The event without its payload, saying why, and where the whole event is stored
    (encoded)."""
    slim = {k: v for k, v in doc.items() if k != "payload"}
    slim["claim_check"] = {
        "reason": reason + ": payload left out",
        "event_url": stored_event_link(ctx),
    }
    body = encode(slim)
    if len(body) > limit:
        raise Permanent(f"{target}: the event is over {limit} bytes even without its payload")
    return body


async def settled(calls: list[Awaitable[T]]) -> list[T | BaseException]:
    """Each call's result or exception, the calls run at once; a lone call is awaited as it
    is (a batch of one, the common case at low load, makes no task)."""
    if len(calls) == 1:
        try:
            return [await calls[0]]
        except Exception as exc:
            return [exc]
    return list(await asyncio.gather(*calls, return_exceptions=True))


# --- secrets in URLs -----------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL with its password (or a lone user part, which NATS reads as a token) hidden;
    comma-separated server lists are redacted one by one."""
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url.strip()
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return parts._replace(netloc=f"{shown}@{host}").geturl()


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL (passwords, tokens), to scrub from library messages."""
    found = []
    for part in url.split(","):
        with contextlib.suppress(ValueError):
            parts = urlsplit(part.strip())
            if parts.password:
                found.append(parts.password)
            elif "@" in parts.netloc and parts.username:
                found.append(parts.username)
    return [s for s in found if s]


class SecretUrl:
    """A broker URL that may hold a password or token: ``shown`` is safe in errors and logs,
    ``scrub`` takes its secrets out of a client library's message."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = redact_url(url)
        self._secrets = url_secrets(url)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


# --- one connection, kept ------------------------------------------------------------------


class Connection(Generic[T]):
    """A client opened on first use and reused; opened again once it is lost (a broker
    restart) or discarded after a failure. Bound to the event loop it was opened on."""

    def __init__(
        self,
        opener: Callable[[], Awaitable[T]],
        closer: Callable[[T], Awaitable[None]],
        usable: Callable[[T], bool],
    ) -> None:
        self._open, self._close, self._usable = opener, closer, usable
        self._client: T | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._lock is None:
            self._client, self._loop, self._lock = None, loop, asyncio.Lock()
        client = self._client
        if client is not None and self._usable(client):
            return client
        async with self._lock:
            if self._client is None or not self._usable(self._client):
                stale, self._client = self._client, None
                if stale is not None:
                    await self._close_quietly(stale)
                self._client = await self._open()
            return self._client

    async def discard(self, client: T) -> None:
        """Forget a client that failed, so the next delivery opens a new one."""
        if self._client is client:
            self._client = None
        await self._close_quietly(client)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await self._close_quietly(client)

    async def _close_quietly(self, client: T) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._close(client)
