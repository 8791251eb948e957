"""The contract's HTTP section, through a real `falhook serve` on loopback: every response code
with its JSON error body, and nothing stored for a rejected request."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from falhook.testing import FalSigner, JWKSServer, webhook_body
from tests.support.falhook_server import Falhook, wait_for
from tests.support.stores import PG_URL
from tests.support.tcp_relay import TCPRelay


def post(
    fh: Falhook,
    body: bytes,
    headers: dict[str, str],
    route: str = "default",
    method: str = "POST",
) -> httpx.Response:
    return httpx.request(
        method, fh.url(f"/webhooks/{route}"), content=body, headers=headers, timeout=30
    )


def signed(signer: FalSigner, **kwargs: object) -> tuple[str, bytes, dict[str, str]]:
    kwargs.setdefault("payload", {"note": "no files"})
    request_id, body = webhook_body(str(uuid.uuid4()), **kwargs)  # type: ignore[arg-type]
    return request_id, body, signer.headers(body, request_id)


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    doc = resp.json()
    assert set(doc) == {"error", "detail"}
    assert isinstance(doc["detail"], str) and doc["detail"]
    if code:
        assert doc["error"] == code
    return doc


def stored(fh: Falhook, request_id: str) -> bool:
    return fh.event(request_id) is not None


def test_signed_webhook_is_accepted_and_stored(falhook: Falhook, signer: FalSigner) -> None:
    rid, body, headers = signed(signer)
    resp = post(falhook, body, headers)
    assert resp.status_code == 200
    assert resp.json() == {"status": "accepted", "request_id": rid}
    event = falhook.wait_state(rid, "delivered")
    assert event["route"] == "default" and event["fal_status"] == "OK"


def test_a_replayed_request_id_is_a_duplicate_on_any_route(
    falhook: Falhook, signer: FalSigner
) -> None:
    rid, body, headers = signed(signer)
    assert post(falhook, body, headers).json()["status"] == "accepted"
    again = post(falhook, body, headers)
    assert again.status_code == 200 and again.json() == {"status": "duplicate", "request_id": rid}
    other_route = post(falhook, body, headers, route="reframe")
    assert other_route.json() == {"status": "duplicate", "request_id": rid}
    assert falhook.event(rid)["route"] == "default"  # type: ignore[index]


@pytest.mark.one_store("verification answers before the store is touched")
def test_unknown_route_is_404_before_method_and_signature(falhook: Falhook) -> None:
    assert_error(post(falhook, b"{}", {}, route="nope"), 404, "unknown_route")
    assert_error(post(falhook, b"", {}, route="nope", method="GET"), 404)


@pytest.mark.one_store("verification answers before the store is touched")
def test_other_methods_on_a_known_route_are_405(falhook: Falhook) -> None:
    resp = post(falhook, b"", {}, method="GET")
    assert_error(resp, 405)
    assert resp.headers["allow"] == "POST"
    assert_error(post(falhook, b"{}", {}, method="PUT"), 405)


@pytest.mark.one_store("verification answers before the store is touched")
def test_body_over_the_limit_is_413_with_content_length(
    falhook_factory: Callable[..., Falhook], signer: FalSigner
) -> None:
    fh = falhook_factory(receiver={"max_body_bytes": 1024}).start()
    rid, body, headers = signed(signer, payload={"pad": "x" * 2000})
    assert_error(post(fh, body, headers), 413, "body_too_large")
    assert not stored(fh, rid)


@pytest.mark.one_store("verification answers before the store is touched")
def test_body_over_the_limit_is_413_without_content_length(
    falhook_factory: Callable[..., Falhook], signer: FalSigner
) -> None:
    fh = falhook_factory(receiver={"max_body_bytes": 1024}).start()
    rid, body, headers = signed(signer)
    sent = 0

    def chunks() -> Iterator[bytes]:  # chunked transfer: the server cannot know the size
        nonlocal sent
        for _ in range(64):
            sent += 1
            yield b" " * 256
        yield body

    resp = httpx.post(fh.url("/webhooks/default"), content=chunks(), headers=headers, timeout=30)
    assert "content-length" not in {k.lower() for k in resp.request.headers}
    assert_error(resp, 413, "body_too_large")
    assert not stored(fh, rid)


@pytest.mark.one_store("verification answers before the store is touched")
@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda h: h.pop("X-Fal-Webhook-Signature"), id="no-signature"),
        pytest.param(lambda h: h.pop("X-Fal-Webhook-Timestamp"), id="no-timestamp"),
        pytest.param(lambda h: h.pop("X-Fal-Webhook-User-Id"), id="no-user"),
        pytest.param(lambda h: h.pop("X-Fal-Webhook-Request-Id"), id="no-request-id"),
        pytest.param(lambda h: h.update({"X-Fal-Webhook-Timestamp": "12a"}), id="ts-not-int"),
        pytest.param(lambda h: h.update({"X-Fal-Webhook-Timestamp": "1.5"}), id="ts-float"),
        pytest.param(
            lambda h: h.update({"X-Fal-Webhook-Signature": h["X-Fal-Webhook-Signature"][:127]}),
            id="sig-127-hex",
        ),
        pytest.param(
            lambda h: h.update({"X-Fal-Webhook-Signature": h["X-Fal-Webhook-Signature"] + "0"}),
            id="sig-129-hex",
        ),
        pytest.param(lambda h: h.update({"X-Fal-Webhook-Signature": "zz" * 64}), id="sig-not-hex"),
        pytest.param(lambda h: h.update({"X-Fal-Webhook-Signature": "00" * 64}), id="sig-wrong"),
        pytest.param(
            lambda h: h.update({"X-Fal-Webhook-User-Id": "someone-else"}), id="user-changed"
        ),
    ],
)
def test_bad_signature_headers_are_401(
    falhook: Falhook, signer: FalSigner, mutate: Callable[[dict[str, str]], object]
) -> None:
    rid, body, headers = signed(signer)
    signature = headers["X-Fal-Webhook-Signature"]
    mutate(headers)
    resp = post(falhook, body, headers)
    assert_error(resp, 401)
    assert signature not in resp.text and signature.upper() not in resp.text
    assert not stored(falhook, rid)


@pytest.mark.one_store("verification answers before the store is touched")
def test_timestamp_tolerance_is_inclusive(falhook: Falhook, signer: FalSigner) -> None:
    now = int(time.time())
    for offset, status in ((-290, 200), (290, 200), (-400, 401), (400, 401)):
        rid, body = webhook_body(str(uuid.uuid4()), payload=None)
        resp = post(falhook, body, signer.headers(body, rid, timestamp=now + offset))
        assert resp.status_code == status, (offset, resp.text)


@pytest.mark.one_store("verification answers before the store is touched")
def test_a_tampered_body_is_401(falhook: Falhook, signer: FalSigner) -> None:
    rid, body, headers = signed(signer)
    tampered = body.replace(b"no files", b"evil file")
    assert_error(post(falhook, tampered, headers), 401)
    assert not stored(falhook, rid)


@pytest.mark.one_store("verification answers before the store is touched")
def test_a_request_signed_by_another_key_is_401(falhook: Falhook) -> None:
    rid, body, headers = signed(FalSigner(user_id="user-1"))
    assert_error(post(falhook, body, headers), 401, "bad_signature")
    assert not stored(falhook, rid)


@pytest.mark.one_store("verification answers before the store is touched")
def test_users_outside_allowed_user_ids_are_401(
    falhook_factory: Callable[..., Falhook], signer: FalSigner
) -> None:
    fh = falhook_factory(receiver={"allowed_user_ids": ["someone-else"]}).start()
    rid, body, headers = signed(signer)
    assert_error(post(fh, body, headers), 401, "user_not_allowed")
    assert not stored(fh, rid)


@pytest.mark.one_store("verification answers before the store is touched")
def test_valid_signature_but_bad_body_is_400(falhook: Falhook, signer: FalSigner) -> None:
    cases = [b"not json", b"[1, 2]", b'{"status": "OK"}', b'{"request_id": 7}']
    for body in cases:
        rid = str(uuid.uuid4())
        assert_error(post(falhook, body, signer.headers(body, rid)), 400, "bad_envelope")
        assert not stored(falhook, rid)


@pytest.mark.one_store("verification answers before the store is touched")
def test_body_request_id_must_match_the_header(falhook: Falhook, signer: FalSigner) -> None:
    rid, body = webhook_body(str(uuid.uuid4()), payload=None)
    other = str(uuid.uuid4())
    assert_error(post(falhook, body, signer.headers(body, other)), 400, "request_id_mismatch")
    assert not stored(falhook, rid) and not stored(falhook, other)


@pytest.mark.one_store("verification answers before the store is touched")
def test_no_keys_at_all_is_503_for_a_well_formed_request(
    falhook_factory: Callable[..., Falhook], jwks: JWKSServer, signer: FalSigner
) -> None:
    jwks.fail(500)
    fh = falhook_factory().start()
    _, body, headers = signed(signer)
    assert_error(post(fh, body, headers), 503, "keys_unavailable")
    headers["X-Fal-Webhook-Signature"] = "nothex"
    assert_error(post(fh, body, headers), 401)  # malformed stays 401
    assert httpx.get(fh.url("/readyz")).status_code == 503
    jwks.fail(None)  # fal's JWKS is back: fal's retry now succeeds
    _rid, body, headers = signed(signer)
    assert post(fh, body, headers).status_code == 200
    assert httpx.get(fh.url("/readyz")).status_code == 200


@pytest.mark.one_store("verification answers before the store is touched")
def test_rotated_keys_are_fetched_and_accepted(
    falhook: Falhook, jwks: JWKSServer, signer: FalSigner
) -> None:
    rotated = signer.rotate()
    jwks.set_jwks(rotated.jwks())
    rid, body, headers = signed(rotated)
    assert post(falhook, body, headers).json() == {"status": "accepted", "request_id": rid}


@pytest.mark.one_store("verification answers before the store is touched")
def test_cached_keys_keep_working_while_the_jwks_endpoint_fails(
    falhook: Falhook, jwks: JWKSServer, signer: FalSigner
) -> None:
    jwks.fail(500)
    _rid, body, headers = signed(signer)
    assert post(falhook, body, headers).status_code == 200
    _, body, headers = signed(signer.rotate())  # a key we cannot fetch: 401, not 503
    assert_error(post(falhook, body, headers), 401)


@contextlib.contextmanager
def sqlite_outage(fh: Falhook) -> Iterator[None]:
    """Another writer holds the database past busy_timeout."""
    db = fh.tmp_path / "data" / "events.db"
    blocker = sqlite3.connect(db, timeout=1, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


def test_store_that_cannot_take_the_event_is_503(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, store_backend: str
) -> None:
    relay: TCPRelay | None = None
    if store_backend == "postgres":  # falhook reaches PostgreSQL through a relay we can cut
        pg = urlsplit(PG_URL)
        relay = TCPRelay((pg.hostname or "127.0.0.1", pg.port or 5432)).start()
        user = pg.netloc.rpartition("@")[0]
        url = urlunsplit(pg._replace(netloc=f"{user}@127.0.0.1:{relay.port}".lstrip("@")))
        fh = falhook_factory(store={"url": url}).start()
    else:
        fh = falhook_factory().start()
    try:
        rid, body, headers = signed(signer)
        if relay is not None:
            relay.cut()  # the database is away: connections reset, new ones refused
            assert_error(post(fh, body, headers), 503, "store_unavailable")
            assert httpx.get(fh.url("/readyz")).status_code == 503
            relay.restore()
            wait_for(
                lambda: httpx.get(fh.url("/readyz")).status_code == 200,
                what="readiness once the database is back",
            )
        else:
            with sqlite_outage(fh):
                assert_error(post(fh, body, headers), 503, "store_unavailable")
        assert not stored(fh, rid)
        assert post(fh, body, headers).json()["status"] == "accepted"  # fal's retry works
    finally:
        if relay is not None:
            fh.stop()
            relay.stop()


def test_health_readiness_and_metrics(falhook: Falhook, signer: FalSigner) -> None:
    assert httpx.get(falhook.url("/healthz")).json() == {"status": "ok"}
    ready = httpx.get(falhook.url("/readyz"))
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    _rid, body, headers = signed(signer)
    post(falhook, body, headers)
    post(falhook, b"{}", {})
    text = httpx.get(falhook.url("/metrics")).text
    assert 'falhook_webhooks_total{outcome="accepted",reason="",route="default"} 1.0' in text
    assert 'outcome="rejected",reason="missing_header"' in text
    assert "falhook_deliveries_in_state{" in text


def test_concurrent_duplicates_store_one_event(falhook: Falhook, signer: FalSigner) -> None:
    rid, body, headers = signed(signer)
    answers: list[str] = []
    barrier = threading.Barrier(5)

    def send() -> None:
        barrier.wait(timeout=10)
        answers.append(post(falhook, body, headers).json()["status"])

    threads = [threading.Thread(target=send) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(answers) == ["accepted"] + ["duplicate"] * 4
    listed = json.loads(falhook.cli("events", "list", "--json").stdout)["events"]
    assert [e["request_id"] for e in listed].count(rid) == 1
