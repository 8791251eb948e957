"""The helpers users test with: what FalSigner signs, falhook verifies; what JWKSServer
serves, falhook's key cache loads."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from falhook.intake.keys import FalKeys, parse_jwks
from falhook.intake.verify import VerificationError, verify
from falhook.testing import FalSigner, JWKSServer, sign_request, webhook_body

FAL_HEADERS = {
    "X-Fal-Webhook-Request-Id",
    "X-Fal-Webhook-User-Id",
    "X-Fal-Webhook-Timestamp",
    "X-Fal-Webhook-Signature",
}


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def test_the_signers_headers_verify_against_its_jwks() -> None:
    signer = FalSigner(user_id="me")
    request_id, body = webhook_body()
    headers = signer.headers(body, request_id)
    assert set(headers) >= FAL_HEADERS
    assert len(headers["X-Fal-Webhook-Signature"]) == 128
    signed = verify(lower(headers), body, parse_jwks(signer.jwks()), now=time.time())
    assert (signed.request_id, signed.user_id) == (request_id, "me")


def test_the_jwks_is_one_ed25519_signing_key() -> None:
    signer = FalSigner(kid="k1")
    (jwk,) = signer.jwks()["keys"]
    assert {k: jwk[k] for k in ("kty", "crv", "alg", "use", "kid")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": "k1",
    }
    assert "=" not in jwk["x"] and "d" not in jwk  # base64url, public part only
    (key,) = parse_jwks(signer.jwks())
    assert bytes(key) == bytes(signer.signing_key.verify_key)


def test_an_explicit_timestamp_is_signed() -> None:
    signer = FalSigner()
    request_id, body = webhook_body()
    headers = lower(signer.headers(body, request_id, timestamp=1_700_000_000))
    assert headers["x-fal-webhook-timestamp"] == "1700000000"
    verify(headers, body, parse_jwks(signer.jwks()), now=1_700_000_000)


def test_a_rotated_signer_has_a_new_key_for_the_same_user() -> None:
    old = FalSigner(user_id="me")
    new = old.rotate()
    assert new.user_id == "me" and bytes(new.signing_key) != bytes(old.signing_key)
    assert new.jwks()["keys"][0]["kid"] != old.jwks()["keys"][0]["kid"]
    request_id, body = webhook_body()
    headers = lower(new.headers(body, request_id))
    with pytest.raises(VerificationError):
        verify(headers, body, parse_jwks(old.jwks()), now=time.time())
    verify(headers, body, parse_jwks(new.jwks()), now=time.time())


def test_webhook_body_is_fals_envelope() -> None:
    request_id, body = webhook_body()
    doc = json.loads(body)
    assert str(uuid.UUID(request_id)) == request_id
    assert doc["request_id"] == request_id and doc["status"] == "OK"
    assert set(doc) == {"request_id", "gateway_request_id", "status", "payload"}
    assert doc["payload"]["video"]["url"]

    _, body = webhook_body("r-1", status="ERROR", payload={"detail": []}, error="boom")
    doc = json.loads(body)
    assert (doc["request_id"], doc["status"], doc["error"]) == ("r-1", "ERROR", "boom")

    _, body = webhook_body("r-2", payload=None, payload_error="too big", gateway_request_id="g")
    doc = json.loads(body)
    assert doc["payload"] is None and doc["payload_error"] == "too big"
    assert doc["gateway_request_id"] == "g"


def test_sign_request_returns_a_postable_signed_webhook() -> None:
    signer = FalSigner()
    request_id, body, headers = sign_request(signer, "r-9", status="ERROR", error="x")
    assert json.loads(body)["error"] == "x"
    assert headers["X-Fal-Webhook-Request-Id"] == "r-9" == request_id
    verify(lower(headers), body, parse_jwks(signer.jwks()), now=time.time())


def test_jwks_server_serves_fails_recovers_and_counts() -> None:
    signer = FalSigner()
    with JWKSServer() as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(server.url, timeout=5).json() == {"keys": []}
        server.set_jwks(signer.jwks())
        assert httpx.get(server.url, timeout=5).json() == signer.jwks()
        server.fail(500)
        assert httpx.get(server.url, timeout=5).status_code == 500
        server.fail(None)
        assert httpx.get(server.url, timeout=5).status_code == 200
        assert server.hits == 4
        url = server.url
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=5)  # stopped: nothing listens any more


async def test_falhooks_key_cache_loads_from_the_jwks_server() -> None:
    signer = FalSigner()
    with JWKSServer() as server:
        server.set_jwks(signer.jwks())
        cache = FalKeys(server.url)
        await cache.start()
        try:
            _, body, headers = sign_request(signer)
            verify(lower(headers), body, cache.keys(), now=time.time())
        finally:
            await cache.aclose()
