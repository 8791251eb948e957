"""The JWKS key cache: start-up load, rotation, rate-limited refetch, serving from cache."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from falhook.intake import keys as keys_module
from falhook.intake.keys import MAX_CACHE_SECONDS, MAX_JWKS_BYTES, FalKeys, parse_jwks
from falhook.testing import FalSigner, JWKSServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def wait_for(condition: Callable[[], bool], deadline: float = 10.0) -> None:
    """Yield to the loop until condition() holds; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not met before the deadline"
        await asyncio.sleep(0.01)


def key_bytes(cache: FalKeys) -> list[bytes]:
    return [bytes(k) for k in cache.keys()]  # noqa: SIM118 - FalKeys.keys(), not a dict


@pytest.fixture
def server() -> Iterator[JWKSServer]:
    with JWKSServer() as s:
        yield s


async def test_keys_load_at_start(server: JWKSServer) -> None:
    signer = FalSigner()
    server.set_jwks(signer.jwks())
    cache = FalKeys(server.url)
    await cache.start()
    try:
        loaded = [bytes(k) for k in cache.keys()]  # noqa: SIM118 - FalKeys.keys(), not a dict
        assert cache.loaded and loaded == [bytes(signer.signing_key.verify_key)]
    finally:
        await cache.aclose()


async def test_rotation_is_picked_up_by_a_refetch(server: JWKSServer) -> None:
    old, new = FalSigner(), FalSigner()
    server.set_jwks(old.jwks())
    clock = Clock()
    cache = FalKeys(server.url, refetch_interval=60, clock=clock)
    await cache.start()
    try:
        server.set_jwks(new.jwks())
        clock.now += 60  # the start-up fetch counts against the interval
        assert await cache.refetch_for_unknown() is True
        assert bytes(cache.keys()[0]) == bytes(new.signing_key.verify_key)
    finally:
        await cache.aclose()


async def test_refetches_are_rate_limited(server: JWKSServer) -> None:
    server.set_jwks(FalSigner().jwks())
    clock = Clock()
    cache = FalKeys(server.url, refetch_interval=60, clock=clock)
    await cache.start()
    try:
        hits = server.hits
        clock.now += 10
        assert await cache.refetch_for_unknown() is False  # within the interval: no request
        assert server.hits == hits
        clock.now += 60
        await cache.refetch_for_unknown()
        assert server.hits == hits + 1
    finally:
        await cache.aclose()


async def test_concurrent_unknown_keys_share_one_fetch(server: JWKSServer) -> None:
    server.set_jwks(FalSigner().jwks())
    clock = Clock()
    cache = FalKeys(server.url, refetch_interval=60, clock=clock)
    await cache.start()
    try:
        hits = server.hits
        clock.now += 61
        await asyncio.gather(*(cache.refetch_for_unknown() for _ in range(20)))
        assert server.hits == hits + 1
    finally:
        await cache.aclose()


async def test_cached_keys_are_kept_while_the_endpoint_fails(server: JWKSServer) -> None:
    signer = FalSigner()
    server.set_jwks(signer.jwks())
    clock = Clock()
    cache = FalKeys(server.url, refetch_interval=0, clock=clock)
    await cache.start()
    try:
        server.fail(500)
        assert await cache.refetch_for_unknown() is False
        assert await cache.refresh() is False
        assert cache.loaded and bytes(cache.keys()[0]) == bytes(signer.signing_key.verify_key)
        server.fail(None)
        server.set_jwks({"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]})  # nothing usable
        assert await cache.refresh() is False and cache.loaded
    finally:
        await cache.aclose()


async def test_no_keys_at_start_then_loaded_when_the_endpoint_recovers(server: JWKSServer) -> None:
    server.fail(503)
    clock = Clock()
    cache = FalKeys(server.url, refetch_interval=60, clock=clock)
    await cache.start()
    try:
        assert not cache.loaded and cache.keys() == ()
        server.fail(None)
        server.set_jwks(FalSigner().jwks())
        assert await cache.ensure_loaded() is False  # rate limit still applies
        clock.now += 60
        assert await cache.ensure_loaded() is True
    finally:
        await cache.aclose()


def test_parse_jwks_keeps_only_ed25519_okp_keys() -> None:
    good = FalSigner().jwks()["keys"][0]
    doc = {
        "keys": [
            good,
            {"kty": "RSA", "n": "abc", "e": "AQAB"},
            {"kty": "OKP", "crv": "X25519", "x": good["x"]},
            {"kty": "OKP", "crv": "Ed25519", "x": "not base64!"},
            {"kty": "OKP", "crv": "Ed25519", "x": good["x"][:20]},
            {"kty": "OKP", "crv": "Ed25519"},
            "junk",
        ]
    }
    assert len(parse_jwks(doc)) == 1
    assert parse_jwks({"nokeys": []}) == () and parse_jwks([1]) == ()


def test_parse_jwks_is_strict_about_base64url() -> None:
    good = FalSigner().jwks()["keys"][0]
    x = good["x"]
    okp = {"kty": "OKP", "crv": "Ed25519"}
    # The stdlib decoder would drop "!" and take "+"/"/": neither is base64url.
    assert parse_jwks({"keys": [{**okp, "x": x[:20] + "!" + x[20:]}]}) == ()
    assert parse_jwks({"keys": [{**okp, "x": "+" * 43}, {**okp, "x": "/" * 43}]}) == ()
    assert parse_jwks({"keys": [{**okp, "x": x + "AA"}]}) == ()  # 33 bytes
    # Padding is tolerated; a key listed twice counts once.
    assert len(parse_jwks({"keys": [{**okp, "x": x + "="}, good]})) == 1


def test_refresh_interval_is_capped_at_fals_24_hours() -> None:
    assert FalKeys("http://127.0.0.1:9/", refresh_interval=10**7).refresh_interval == (
        MAX_CACHE_SECONDS
    )


async def test_the_timer_loads_keys_after_a_failed_start(server: JWKSServer) -> None:
    """With no webhook to trigger a fetch (readiness gating traffic), keys still arrive."""
    server.fail(503)
    cache = FalKeys(server.url, refresh_interval=3600, retry_interval=0.02)
    await cache.start()
    try:
        assert not cache.loaded
        signer = FalSigner()
        server.set_jwks(signer.jwks())
        server.fail(None)
        await wait_for(lambda: cache.loaded)
        assert key_bytes(cache) == [bytes(signer.signing_key.verify_key)]
    finally:
        await cache.aclose()


async def test_the_timer_picks_up_a_new_key_set(server: JWKSServer) -> None:
    old, new = FalSigner(), FalSigner()
    server.set_jwks(old.jwks())
    cache = FalKeys(server.url, refresh_interval=0.02)
    await cache.start()
    try:
        server.set_jwks(new.jwks())
        await wait_for(lambda: key_bytes(cache) == [bytes(new.signing_key.verify_key)])
    finally:
        await cache.aclose()


async def test_an_oversized_document_is_a_failed_fetch(server: JWKSServer) -> None:
    signer = FalSigner()
    server.set_jwks(signer.jwks())
    cache = FalKeys(server.url, refetch_interval=0)
    await cache.start()
    try:
        server.set_jwks({**FalSigner().jwks(), "pad": "x" * MAX_JWKS_BYTES})
        assert await cache.refresh() is False
        assert key_bytes(cache) == [bytes(signer.signing_key.verify_key)]
    finally:
        await cache.aclose()


async def test_logs_name_the_outcome_never_key_material_or_url_secrets(
    server: JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh logger proxy: falhook's logging config caches loggers on first use, which
    # would bypass capture_logs when another test already logged through this module.
    monkeypatch.setattr(keys_module, "log", structlog.get_logger("falhook.keys"))
    signer = FalSigner()
    server.set_jwks(signer.jwks())
    cache = FalKeys(server.url + "?token=hush", refetch_interval=0)
    with capture_logs() as logs:
        await cache.start()
        server.fail(500)
        await cache.refresh()
        await cache.aclose()
    assert [e["event"] for e in logs] == ["jwks loaded", "jwks fetch failed"]
    assert logs[0]["keys"] == 1 and logs[1]["error"] == "HTTPStatusError"
    text = repr(logs)
    assert signer.jwks()["keys"][0]["x"] not in text and "hush" not in text


async def test_aclose_stops_a_fetch_in_flight() -> None:
    """A JWKS endpoint that accepts and never answers must not hold up shutdown."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()
    held: list[socket.socket] = []

    def accept_one() -> None:
        conn, _ = listener.accept()
        held.append(conn)
        accepted.set()

    thread = threading.Thread(target=accept_one, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    cache = FalKeys(f"http://127.0.0.1:{port}/jwks.json")
    try:
        fetch = asyncio.create_task(cache.refresh())
        assert await asyncio.to_thread(accepted.wait, 10)
        await asyncio.wait_for(cache.aclose(), 5)
        with pytest.raises(asyncio.CancelledError):
            await fetch
        assert not cache.loaded
    finally:
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
