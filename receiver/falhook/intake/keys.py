"""fal's signing keys: a JWKS cache fetched with httpx.

Loaded at start-up, refreshed on a timer (fal says keys may be cached up to 24 h), refetched at
most once per `refetch_interval` when a signature matches no cached key (rotation), and served
from cache, however old, while fal's endpoint fails. A failed timer fetch is retried sooner
(`retry_interval`, doubling up to `refresh_interval`), so a receiver that started without keys
becomes ready on its own, even when no webhook arrives to trigger a fetch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog
from nacl.signing import VerifyKey

from falhook_sinks.httpcommon import trust

log = structlog.get_logger("falhook.keys")
MAX_CACHE_SECONDS = 24 * 3600
MIN_TIMER_SECONDS = 0.01
MAX_JWKS_BYTES = 1 << 20  # a JWKS is a few hundred bytes; never buffer an endless answer
# 32 bytes in base64url without padding: 43 characters of the URL-safe alphabet.
_X = re.compile(r"[A-Za-z0-9_-]{43}")


def parse_jwks(doc: Any) -> tuple[VerifyKey, ...]:
    """Ed25519 keys of a JWKS document (kty OKP, crv Ed25519, base64url x of 32 bytes).

    Anything else (RSA, other curves, a malformed x) is skipped; a key listed twice is kept
    once, so an unknown signature costs one verify per distinct key."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        return ()
    seen: dict[bytes, VerifyKey] = {}
    for jwk in doc["keys"]:
        raw = _ed25519_x(jwk)
        if raw is not None and raw not in seen:
            seen[raw] = VerifyKey(raw)
    return tuple(seen.values())


def _ed25519_x(jwk: Any) -> bytes | None:
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        return None
    x = jwk.get("x")
    # The stdlib decoder silently drops characters outside the alphabet: match first.
    if not isinstance(x, str) or not _X.fullmatch(x.rstrip("=")):
        return None
    return base64.urlsafe_b64decode(x.rstrip("=") + "=")


def _listed(doc: Any) -> int:
    """How many entries the document lists (for the skipped-keys count in the log)."""
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        return len(doc["keys"])
    return 0


def _loggable(url: str) -> str:
    """The URL without credentials or query (either could hold a secret from ${ENV})."""
    try:
        u = httpx.URL(url)
    except Exception:
        return "<unparsable url>"
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.host}{port}{u.path}"


def _host(url: str) -> str:
    try:
        u = httpx.URL(url)
    except Exception:
        return "<unparsable url>"
    return f"{u.host}:{u.port}" if u.port else u.host


def failure_reason(exc: BaseException) -> str:
    """Why a JWKS fetch failed, in words an operator can act on: DNS, refused, TLS, a
    timeout, an HTTP status, or a bad document."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from the JWKS endpoint"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, ValueError) and not isinstance(exc, httpx.HTTPError):
        return f"not a JWKS document ({exc})"
    chain = _causes(exc)
    for cause in chain:
        if isinstance(cause, socket.gaierror):
            return f"DNS lookup failed ({cause.strerror or cause})"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate check failed ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error ({cause.reason or cause})"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
    text = " ".join(str(c) for c in chain).lower()
    # httpx/httpcore keep only the message of some errors: recognise them by it.
    for needle, reason in _REASON_WORDS:
        if needle in text:
            return reason
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_REASON_WORDS = (
    ("name or service not known", "DNS lookup failed"),
    ("temporary failure in name resolution", "DNS lookup failed"),
    ("nodename nor servname", "DNS lookup failed"),
    ("getaddrinfo", "DNS lookup failed"),
    ("connection refused", "connection refused"),
    ("certificate verify failed", "TLS certificate check failed"),
    ("ssl", "TLS error"),
)


def _causes(exc: BaseException) -> list[BaseException]:
    """exc and what it was raised from, bounded (a cycle of causes is possible)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


class FalKeys:
    """The JWKS cache. One per process; all methods run on one event loop."""

    def __init__(
        self,
        jwks_url: str,
        *,
        refetch_interval: float = 60.0,
        refresh_interval: float = 3600.0,
        retry_interval: float = 5.0,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jwks_url = jwks_url
        self.refetch_interval = refetch_interval
        self.refresh_interval = min(refresh_interval, MAX_CACHE_SECONDS)
        self.retry_interval = min(retry_interval, self.refresh_interval)
        self._client = client
        self._own_client = client is None
        self._clock = clock
        self._log_url = _loggable(jwks_url)
        self._host = _host(jwks_url)
        self._loaded = asyncio.Event()
        self._keys: tuple[VerifyKey, ...] = ()
        self._failures = 0  # consecutive failed fetches, for the timer's backoff
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._timer: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    @property
    def log_url(self) -> str:
        """The JWKS URL as it may be logged (no credentials, no query)."""
        return self._log_url

    async def wait_loaded(self) -> None:
        """Return once keys are loaded (at once if they are)."""
        await self._loaded.wait()

    def keys(self) -> tuple[VerifyKey, ...]:
        """The cached keys, however old (empty until a fetch succeeds)."""
        return self._keys

    async def start(self) -> None:
        """First load (a failure is logged, not raised) and the refresh timer."""
        await self._fetch_shared()
        if self._timer is None:
            self._timer = asyncio.create_task(self._refresh_loop(), name="falhook-jwks-refresh")

    async def aclose(self) -> None:
        """Stop the timer and any fetch in flight; close the client if we made it."""
        for task in (self._timer, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._timer = self._inflight = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def refresh(self) -> bool:
        """Fetch now, whatever the rate limit (the timer's refresh). True if keys changed."""
        return await self._fetch_shared()

    async def refetch_for_unknown(self) -> bool:
        """A signature matched no cached key: refetch, at most once per interval; concurrent
        callers share one fetch. True when the key set changed (verify again)."""
        if self._inflight is None and not self._may_fetch():
            return False
        return await self._fetch_shared()

    async def ensure_loaded(self) -> bool:
        """No keys yet: try a (rate-limited) fetch. True when keys are there now."""
        if self._keys:
            return True
        if self._inflight is not None or self._may_fetch():
            await self._fetch_shared()
        return bool(self._keys)

    def _may_fetch(self) -> bool:
        last = self._last_attempt
        return last is None or self._clock() - last >= self.refetch_interval

    async def _fetch_shared(self) -> bool:
        # Every caller awaits the same task; shield keeps one caller's cancellation (a client
        # hanging up) from cancelling the fetch the others wait for.
        if self._inflight is None:
            self._last_attempt = self._clock()
            task = asyncio.create_task(self._fetch(), name="falhook-jwks-fetch")
            self._inflight = task
            task.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> bool:
        """One GET of the JWKS. True when the key set changed; never raises (but on cancel)."""
        try:
            doc = await self._get()
        except Exception as exc:  # the cache must survive any failure of fal's endpoint
            self._failures += 1
            log.warning(
                "jwks fetch failed",
                host=self._host,
                reason=failure_reason(exc),
                error=type(exc).__name__,
                url=self._log_url,
                cached_keys=len(self._keys),
            )
            return False
        keys = parse_jwks(doc)
        listed = _listed(doc)
        if not keys:
            self._failures += 1
            log.warning(
                "jwks had no usable Ed25519 key",
                url=self._log_url,
                listed=listed,
                cached_keys=len(self._keys),
            )
            return False
        self._failures = 0
        changed = {bytes(k) for k in keys} != {bytes(k) for k in self._keys}
        self._keys = keys
        self._loaded.set()
        log.info(
            "jwks loaded",
            url=self._log_url,
            keys=len(keys),
            skipped=listed - len(keys),
            changed=changed,
        )
        return changed

    async def _get(self) -> Any:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0, verify=trust())
        async with self._client.stream("GET", self.jwks_url, follow_redirects=True) as resp:
            resp.raise_for_status()
            data = bytearray()
            async for chunk in resp.aiter_bytes():
                data += chunk
                if len(data) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        return json.loads(data)

    def _next_delay(self) -> float:
        if self._failures == 0:
            delay = self.refresh_interval
        else:
            delay = min(
                self.retry_interval * 2 ** min(self._failures - 1, 30), self.refresh_interval
            )
        return max(delay, MIN_TIMER_SECONDS)  # a zero interval must not spin the loop

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._next_delay())
            await self._fetch_shared()
