"""fal's signing keys: a JWKS cache fetched with httpx.

Loaded at start-up, refreshed on a timer (fal says keys may be cached up to 24 h), refetched at
most once per `refetch_interval` when a signature matches no cached key (rotation), and served
from cache, however old, while fal's endpoint fails.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog
from nacl.signing import VerifyKey

log = structlog.get_logger("falhook.keys")
MAX_CACHE_SECONDS = 24 * 3600


def parse_jwks(doc: Any) -> tuple[VerifyKey, ...]:
    """Ed25519 keys of a JWKS document (kty OKP, crv Ed25519, base64url x of 32 bytes)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        return ()
    keys: list[VerifyKey] = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        x = jwk.get("x")
        if not isinstance(x, str):
            continue
        try:
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            keys.append(VerifyKey(raw))
    return tuple(keys)


class FalKeys:
    def __init__(
        self,
        jwks_url: str,
        *,
        refetch_interval: float = 60.0,
        refresh_interval: float = 3600.0,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jwks_url = jwks_url
        self.refetch_interval = refetch_interval
        self.refresh_interval = min(refresh_interval, MAX_CACHE_SECONDS)
        self._client = client
        self._own_client = client is None
        self._clock = clock
        self._keys: tuple[VerifyKey, ...] = ()
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._timer: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    def keys(self) -> tuple[VerifyKey, ...]:
        return self._keys

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0)
        await self._fetch_shared()
        self._timer = asyncio.create_task(self._refresh_loop(), name="falhook-jwks-refresh")

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def refresh(self) -> bool:
        """Fetch now, whatever the rate limit (the timer's refresh). True if keys changed."""
        return await self._fetch_shared()

    async def refetch_for_unknown(self) -> bool:
        """A signature matched no cached key: refetch, at most once per interval; concurrent
        callers share one fetch. True when the key set changed."""
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
        if self._inflight is None:
            self._last_attempt = self._clock()
            self._inflight = asyncio.create_task(self._fetch())
            self._inflight.add_done_callback(lambda _: setattr(self, "_inflight", None))
        return await asyncio.shield(self._inflight)

    async def _fetch(self) -> bool:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10.0)
        try:
            resp = await self._client.get(self.jwks_url)
            resp.raise_for_status()
            keys = parse_jwks(resp.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.warning(
                "jwks fetch failed",
                url=self.jwks_url,
                error=type(exc).__name__,
                cached_keys=len(self._keys),
            )
            return False
        if not keys:
            log.warning(
                "jwks had no usable Ed25519 key", url=self.jwks_url, cached_keys=len(self._keys)
            )
            return False
        changed = {k.encode() for k in keys} != {k.encode() for k in self._keys}
        self._keys = keys
        log.info("jwks loaded", url=self.jwks_url, keys=len(keys), changed=changed)
        return changed

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self._fetch_shared()
