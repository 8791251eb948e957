"""HTTP sink: forward the event as JSON to another URL, signed the Standard Webhooks way.

Headers ``webhook-id`` (stable per event: the same across retries and replays, so the
receiver can deduplicate), ``webhook-timestamp`` (unix seconds of this attempt) and
``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body`` keyed with the
secret's bytes). Any Standard Webhooks library verifies it with the same secret.

2xx is delivered; 408, 429 and 5xx are retried (honouring Retry-After); any other status,
redirects included, is permanent. The URL is treated as a secret: never logged or echoed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Annotated, Any

import httpx
from msgspec import Meta

from falhook_sinks.base import DeliveryContext, Permanent, Retryable, Sink, SinkEnv, iso_utc
from falhook_sinks.httpcommon import error_for_status, short, trust
from falhook_sinks.links import fal_link, stored_link
from falhook_sinks.options import Invalid, SinkOptions

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


def decode_secret(secret: str) -> bytes:
    """A Standard Webhooks secret: base64, optionally prefixed ``whsec_``."""
    raw = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(raw, validate=True)


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class HttpOptions(SinkOptions):
    url: str
    secret: str  # whsec_... (base64 of at least 24 bytes)
    timeout: Annotated[float, Meta(gt=0)] = 30.0
    include_payload: bool = True
    headers: dict[str, str] = {}

    def check(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise Invalid("url", "must be an http:// or https:// URL")
        try:
            key = decode_secret(self.secret)
        except (binascii.Error, ValueError):
            raise Invalid("secret", "must be base64 (optionally prefixed whsec_)") from None
        if len(key) < 24:
            raise Invalid("secret", "must decode to at least 24 bytes")


class HttpSink(Sink):
    reads_files = False  # links the files (a stored copy, else fal's URL), never reads them
    options_type = HttpOptions

    def __init__(self, name: str, opts: HttpOptions, env: SinkEnv) -> None:
        self.name = name
        self.url = opts.url
        self.key = decode_secret(opts.secret)
        self.timeout = opts.timeout
        self.include_payload = opts.include_payload
        # Lower-cased, so the signing headers set per request replace a same-named extra.
        self.extra_headers = {k.lower(): v for k, v in opts.headers.items()}
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                follow_redirects=False,
                verify=trust(),
                trust_env=False,  # a forwarded event goes where configured, not via a proxy
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

    def message(self, ctx: DeliveryContext) -> dict[str, Any]:
        """The body: Standard Webhooks' {type, timestamp, data} with links to every file."""
        ev = ctx.event
        files = []
        for f in ctx.files:
            stored = stored_link(ctx, f)
            files.append(
                {
                    "path": f.path,
                    "name": f.name,
                    "url": stored or fal_link(f),
                    "fal_url": fal_link(f),
                    "stored": stored is not None,
                    "content_type": f.content_type,
                    "size": f.size,
                    "sha256": f.sha256,
                }
            )
        data: dict[str, Any] = {
            "request_id": ev.request_id,
            "gateway_request_id": ev.gateway_request_id,
            "route": ev.route,
            "endpoint": ev.endpoint,
            "metadata": ev.metadata,
            "fal_status": ev.fal_status,
            "error": ev.error,
            "payload_error": ev.payload_error,
            "received_at": iso_utc(ev.received_at),
            "files": files,
        }
        if self.include_payload:
            data["payload"] = ev.payload
        return {"type": ctx.event.event_type, "timestamp": iso_utc(ev.received_at), "data": data}

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any]:
        body = json.dumps(self.message(ctx), separators=(",", ":"), default=str).encode()
        msg_id = f"msg_{ctx.event.request_id}"
        timestamp = int(time.time())
        headers = {
            **self.extra_headers,
            **ctx.headers,  # W3C traceparent when tracing is on
            "content-type": "application/json",
            "user-agent": "falhook",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.key, msg_id, timestamp, body),
        }
        try:
            response = await self._get_client().post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise Retryable(f"HTTP target timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise Retryable(f"HTTP target unreachable ({type(exc).__name__})") from None
        status = response.status_code
        if 200 <= status < 300:
            ctx.log.info("http event forwarded", status=status)
            return {"status": status, "webhook_id": msg_id}
        if 300 <= status < 400:
            raise Permanent(f"HTTP target redirected ({status}): configure the final URL")
        raise error_for_status(
            "HTTP target", status, short(response.text), response.headers.get("retry-after")
        )
