"""The JWKS key cache: start-up load, rotation, rate-limited refetch, serving from cache."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from receiver.keys import FalKeys, parse_jwks
from receiver.testing import FalSigner, JWKSServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
