"""falhook.WebhookVerifier: verification as a library call for a route of the user's own,
the same checks as the endpoint (one implementation), its keys cached and refetched as the
endpoint's are, and a verified webhook handed to falhook's store (`Falhook.accept`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import falhook
from falhook.testing import FalSigner, JWKSServer, sign_request, webhook_body
from tests.support.fileserver import FileServer
from tests.support.inprocess import InProcessFactory


@pytest.fixture
def verifier(jwks: JWKSServer) -> Iterator[falhook.WebhookVerifier]:
    with falhook.WebhookVerifier(jwks_url=jwks.url, tolerance=300, refetch_interval=60) as v:
        yield v


def test_verify_returns_the_parsed_webhook(
    verifier: falhook.WebhookVerifier, signer: FalSigner
) -> None:
    payload = {
        "video": {"url": "https://v3.fal.media/files/x/out.mp4", "content_type": "video/mp4"},
        "images": [{"url": "https://v3.fal.media/files/x/a.png", "width": 8}],
    }
    rid, body, headers = sign_request(signer, payload=payload, gateway_request_id="gw-1")
    webhook = verifier.verify(headers, body)
    assert (webhook.request_id, webhook.gateway_request_id, webhook.status) == (rid, "gw-1", "OK")
    assert webhook.payload == payload and webhook.error is None and webhook.payload_error is None
    assert [(f.path, f.url) for f in webhook.files] == [
        ("video", "https://v3.fal.media/files/x/out.mp4"),
        ("images[0]", "https://v3.fal.media/files/x/a.png"),
    ]
    assert webhook.files[1].extras == {"width": 8}
    assert webhook.user_id == signer.user_id and webhook.body == body


async def test_averify_works_from_any_event_loop(
    verifier: falhook.WebhookVerifier, signer: FalSigner
) -> None:
    _, body, headers = sign_request(signer, status="ERROR", payload={"detail": []}, error="boom")
    webhook = await verifier.averify(headers, body)
    assert (webhook.status, webhook.error, webhook.files) == ("ERROR", "boom", [])

    def in_another_loop() -> str:
        return asyncio.run(verifier.averify(headers, body)).status

    assert await asyncio.to_thread(in_another_loop) == "ERROR"


def _bad_requests(signer: FalSigner) -> list[tuple[str, bytes, dict[str, str]]]:
    """(expected code, body, headers): one of each of the endpoint's refusals."""
    rid, body, headers = sign_request(signer)
    other_rid, other_body = webhook_body()
    stale = signer.headers(body, rid, timestamp=int(time.time()) - 301)
    not_json = b"not json"
    _, mismatch = webhook_body()
    return [
        ("missing_header", body, {k: v for k, v in headers.items() if "Signature" not in k}),
        ("bad_timestamp", body, {**headers, "X-Fal-Webhook-Timestamp": "12.5"}),
        ("stale_timestamp", body, stale),
        ("bad_signature", body, {**headers, "X-Fal-Webhook-Signature": "ab" * 10}),
        ("bad_signature", other_body, headers),  # the body was changed
        ("bad_signature", body, FalSigner(signer.user_id).headers(body, rid)),  # another key
        ("bad_envelope", not_json, signer.headers(not_json, other_rid)),
        ("request_id_mismatch", mismatch, signer.headers(mismatch, rid)),
    ]


async def test_the_verifier_refuses_what_the_endpoint_refuses_with_its_codes(
    inprocess: InProcessFactory, verifier: falhook.WebhookVerifier, signer: FalSigner
) -> None:
    fh = await inprocess()
    for code, body, headers in _bad_requests(signer):
        answer = await fh.post(body, headers)
        with pytest.raises(falhook.VerificationError) as caught:
            await verifier.averify(headers, body)
        assert (caught.value.code, caught.value.status) == (code, answer.status_code)
        assert answer.json() == {"error": code, "detail": caught.value.detail}


def test_users_outside_the_allowlist_are_refused(jwks: JWKSServer, signer: FalSigner) -> None:
    _, body, headers = sign_request(signer)
    v = falhook.WebhookVerifier(jwks_url=jwks.url, allowed_user_ids=["someone-else"])
    with v, pytest.raises(falhook.VerificationError) as caught:
        v.verify(headers, body)
    assert (caught.value.code, caught.value.status) == ("user_not_allowed", 401)


def test_no_keys_at_all_is_a_503_the_caller_can_pass_on(signer: FalSigner) -> None:
    with JWKSServer() as down:
        down.fail(500)
        _, body, headers = sign_request(signer)
        v = falhook.WebhookVerifier(jwks_url=down.url)
        with v, pytest.raises(falhook.VerificationError) as caught:
            v.verify(headers, body)
    assert (caught.value.code, caught.value.status) == ("keys_unavailable", 503)


def test_keys_are_fetched_once_and_refetched_for_a_rotated_key(
    jwks: JWKSServer, signer: FalSigner
) -> None:
    with falhook.WebhookVerifier(jwks_url=jwks.url, refetch_interval=0) as v:
        for _ in range(5):
            _, body, headers = sign_request(signer)
            v.verify(headers, body)
        assert jwks.hits == 1  # cached
        rotated = signer.rotate()
        jwks.set_jwks(rotated.jwks())
        _, body, headers = sign_request(rotated)
        assert v.verify(headers, body).user_id == rotated.user_id  # one refetch found it
        assert jwks.hits == 2


def test_refetches_for_unknown_keys_are_rate_limited(jwks: JWKSServer, signer: FalSigner) -> None:
    with falhook.WebhookVerifier(jwks_url=jwks.url, refetch_interval=3600) as v:
        _, body, headers = sign_request(signer)
        v.verify(headers, body)
        stranger = FalSigner(signer.user_id)
        for _ in range(3):  # within the interval of the first fetch: no refetch at all
            _, body, headers = sign_request(stranger)
            with pytest.raises(falhook.VerificationError, match="no fal key"):
                v.verify(headers, body)
        assert jwks.hits == 1


def test_cached_keys_keep_verifying_while_the_jwks_endpoint_fails(
    jwks: JWKSServer, signer: FalSigner
) -> None:
    with falhook.WebhookVerifier(jwks_url=jwks.url, refetch_interval=0) as v:
        _, body, headers = sign_request(signer)
        v.verify(headers, body)
        jwks.fail(503)
        _, body, headers = sign_request(signer)
        assert v.verify(headers, body).status == "OK"


async def test_a_fastapi_route_of_the_users_own_hands_the_event_to_falhooks_store(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, tmp_path: Path
) -> None:
    """docs/embedding.md's "Your own route" example: verify, then accept into falhook's store,
    so the route's events are stored durably, deduplicated and delivered like falhook's own."""
    fh = await inprocess()
    app = fh.app
    assert app is not None
    verifier = falhook.WebhookVerifier(jwks_url=fh.settings.receiver.jwks_url)
    api = FastAPI()

    @api.post("/hooks/fal")
    async def fal_hook(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            webhook = await verifier.averify(request.headers, body)
        except falhook.VerificationError as exc:
            error = {"error": exc.code, "detail": exc.detail}
            return JSONResponse(error, status_code=exc.status)
        fresh = await app.accept(webhook, route="reframe")
        status = "accepted" if fresh else "duplicate"
        return JSONResponse({"status": status, "request_id": webhook.request_id})

    files.add("/out.mp4", data=b"frames", content_type="video/mp4")
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/out.mp4")}})
    headers = signer.headers(body, rid)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
        first = await client.post("/hooks/fal", content=body, headers=headers)
        again = await client.post("/hooks/fal", content=body, headers=headers)
        forged = await client.post("/hooks/fal", content=body + b" ", headers=headers)
    assert first.json() == {"status": "accepted", "request_id": rid}
    assert again.json() == {"status": "duplicate", "request_id": rid}
    assert forged.status_code == 401 and forged.json()["error"] == "bad_signature"
    event = await fh.wait_state(rid, "delivered")
    assert event["route"] == "reframe"
    assert (tmp_path / "files" / "reframe" / rid).is_dir()
    await asyncio.to_thread(verifier.close)
