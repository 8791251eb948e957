"""Verification of a fal webhook as a library call, for a route of the user's own:

    verifier = falhook.WebhookVerifier(jwks_url=..., tolerance=300)
    webhook = await verifier.averify(request.headers, body)   # or verifier.verify(...)
    webhook.request_id, webhook.status, webhook.payload, webhook.files

`WebhookChecks` is the one implementation of the checks: the webhook endpoint runs it on
the server's loop with the runtime's key cache, `WebhookVerifier` on a loop of its own (so
`verify` works in synchronous code and `averify` from any event loop), each with a FalKeys
cache: loaded on first use, refreshed on a timer, refetched at most once per
`refetch_interval` when no cached key verifies a signature, and served from cache while
fal's endpoint fails. A failed check raises VerificationError with the endpoint's `code`
and HTTP `status` (401, 400 or 503).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from falhook.config import DEFAULT_JWKS_URL
from falhook.intake.envelope import Envelope, EnvelopeError, FileProblem, FileRef, parse_envelope
from falhook.intake.events import FAL_HEADERS, files_of
from falhook.intake.keys import FalKeys
from falhook.intake.offload import off_loop
from falhook.intake.verify import (
    SignedRequest,
    VerificationError,
    check_headers,
    check_user,
    verify_signature,
)

T = TypeVar("T")
_TIMEOUT = 60.0  # seconds a synchronous verify waits at most (a JWKS fetch takes at most 10)


class WebhookChecks:
    """The contract's checks after the body is read, first failure wins: the headers
    (401), keys to check against (503 when none can be had), the signature (401, one
    refetch for a rotated key), the user (401), then the envelope (400)."""

    def __init__(
        self, keys: FalKeys, *, tolerance: int, allowed_user_ids: Collection[str] = ()
    ) -> None:
        self.keys = keys
        self.tolerance = tolerance
        self.allowed = frozenset(allowed_user_ids)

    async def signed(
        self, headers: Mapping[str, str], body: bytes, *, big: bool = False
    ) -> SignedRequest:
        """The verified signed request; `big`: hash the body in a thread."""
        signed = await off_loop(big, self._headers, headers, body)
        keys = self.keys
        if not keys.keys() and not await keys.ensure_loaded():
            raise VerificationError(
                "keys_unavailable", "no signing keys could be loaded; retry later", status=503
            )
        verified = verify_signature(signed, keys.keys())
        if not verified and await keys.refetch_for_unknown():
            verified = verify_signature(signed, keys.keys())  # fal rotated its keys
        if not verified:
            raise VerificationError("bad_signature", "no fal key verifies the signature")
        check_user(signed, self.allowed)
        return signed

    def _headers(self, headers: Mapping[str, str], body: bytes) -> SignedRequest:
        return check_headers(headers, body, now=time.time(), tolerance=self.tolerance)

    @staticmethod
    def envelope(signed: SignedRequest, body: bytes) -> Envelope:
        """The envelope of a verified body: a JSON object whose request_id is the header's."""
        try:
            envelope = parse_envelope(body)
        except EnvelopeError as exc:
            raise VerificationError("bad_envelope", str(exc), status=400) from None
        if envelope.request_id != signed.request_id:
            raise VerificationError(
                "request_id_mismatch", "body request_id differs from the header's", status=400
            )
        return envelope


@dataclass(frozen=True)
class Webhook:
    """A verified fal webhook: the envelope's fields, every File found in an OK payload
    (`files`, and the malformed ones in `file_problems`), who signed it and when, and the
    raw body and fal's headers (what falhook stores, for audit and replay)."""

    request_id: str
    gateway_request_id: str | None
    status: str  # "OK" or "ERROR"
    payload: Any
    error: str | None
    payload_error: str | None
    files: list[FileRef]
    file_problems: list[FileProblem]
    user_id: str
    timestamp: int
    body: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def envelope(self) -> Envelope:
        return Envelope(
            request_id=self.request_id,
            gateway_request_id=self.gateway_request_id,
            status=self.status,
            payload=self.payload,
            error=self.error,
            payload_error=self.payload_error,
        )


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers under lower-case names (any mapping: Starlette's, Flask's, a dict)."""
    return {str(name).lower(): value for name, value in headers.items()}


def parsed_webhook(signed: SignedRequest, envelope: Envelope, body: bytes,
                   headers: Mapping[str, str]) -> Webhook:  # fmt: skip
    files, problems = files_of(envelope)
    return Webhook(
        request_id=envelope.request_id,
        gateway_request_id=envelope.gateway_request_id,
        status=envelope.status,
        payload=envelope.payload,
        error=envelope.error,
        payload_error=envelope.payload_error,
        files=files,
        file_problems=problems,
        user_id=signed.user_id,
        timestamp=signed.timestamp,
        body=body,
        headers={name: headers[name] for name in FAL_HEADERS if name in headers},
    )


class WebhookVerifier:
    """Verifies fal webhooks in the user's own route, as falhook's endpoint does.

    `verify(headers, body)` (synchronous code) and `await averify(headers, body)` (any
    event loop) return the Webhook or raise VerificationError (`.code`, `.detail`,
    `.status`). Thread-safe; one per process is enough. The keys live on a small loop of
    the verifier's own, in a daemon thread started on first use; `close()` (or a `with`
    block) stops it."""

    def __init__(
        self,
        jwks_url: str = DEFAULT_JWKS_URL,
        *,
        tolerance: int = 300,
        allowed_user_ids: Collection[str] = (),
        refetch_interval: float = 60.0,
        refresh_interval: float = 3600.0,
    ) -> None:
        self.jwks_url = jwks_url
        self._settings = (tolerance, tuple(allowed_user_ids), refetch_interval, refresh_interval)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._checks: WebhookChecks | None = None
        self._started: asyncio.Task[None] | None = None

    def verify(self, headers: Mapping[str, str], body: bytes) -> Webhook:
        """Verify and parse one webhook (blocks while keys are fetched, 10 s at most)."""
        return self._submit(self._verify(lower_headers(headers), body)).result(_TIMEOUT)

    async def averify(self, headers: Mapping[str, str], body: bytes) -> Webhook:
        """Verify and parse one webhook without blocking the caller's event loop."""
        return await asyncio.wrap_future(self._submit(self._verify(lower_headers(headers), body)))

    def close(self) -> None:
        """Stop the key refresh and the verifier's thread (idempotent)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if self._checks is not None:
            asyncio.run_coroutine_threadsafe(self._checks.keys.aclose(), loop).result(_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_TIMEOUT)
        loop.close()
        self._checks = self._started = None

    def __enter__(self) -> WebhookVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> WebhookVerifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="falhook-verifier", daemon=True
                )
                self._thread.start()
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _verify(self, headers: dict[str, str], body: bytes) -> Webhook:
        checks = await self._ready()
        signed = await checks.signed(headers, body)
        return parsed_webhook(signed, checks.envelope(signed, body), body, headers)

    async def _ready(self) -> WebhookChecks:
        """The checks, their keys loaded (or tried) on first use and refreshed after."""
        if self._checks is None:
            tolerance, allowed, refetch, refresh = self._settings
            keys = FalKeys(self.jwks_url, refetch_interval=refetch, refresh_interval=refresh)
            self._checks = WebhookChecks(keys, tolerance=tolerance, allowed_user_ids=allowed)
            self._started = asyncio.create_task(keys.start())
        assert self._started is not None
        await asyncio.shield(self._started)  # concurrent first calls share one first fetch
        return self._checks
