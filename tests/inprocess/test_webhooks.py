"""The contract's HTTP section, through the ASGI app in this process (`httpx.ASGITransport`):
every response code with its JSON error body, and nothing stored for a rejected request."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from falhook.store.sqlite import SQLiteStore
from falhook.testing import FalSigner, JWKSServer, webhook_body
from tests.support.inprocess import InProcess, InProcessFactory, wait_until
from tests.support.stores import PG_URL
from tests.support.tcp_relay import TCPRelay


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


async def stored(fh: InProcess, request_id: str) -> bool:
    return await fh.event(request_id) is not None


@pytest.fixture
async def fh(inprocess: InProcessFactory) -> InProcess:
    return await inprocess()


async def test_signed_webhook_is_accepted_and_stored(fh: InProcess, signer: FalSigner) -> None:
    rid, body, headers = signed(signer)
    resp = await fh.post(body, headers)
    assert resp.status_code == 200
    assert resp.json() == {"status": "accepted", "request_id": rid}
    event = await fh.wait_state(rid, "delivered")
    assert event["route"] == "default" and event["fal_status"] == "OK"


async def test_a_replayed_request_id_is_a_duplicate_on_any_route(
    fh: InProcess, signer: FalSigner
) -> None:
    rid, body, headers = signed(signer)
    assert (await fh.post(body, headers)).json()["status"] == "accepted"
    again = await fh.post(body, headers)
    assert again.status_code == 200 and again.json() == {"status": "duplicate", "request_id": rid}
    other_route = await fh.post(body, headers, route="reframe")
    assert other_route.json() == {"status": "duplicate", "request_id": rid}
    assert (await fh.event(rid))["route"] == "default"  # type: ignore[index]


@pytest.mark.one_store("verification answers before the store is touched")
async def test_unknown_route_is_404_before_method_and_signature(fh: InProcess) -> None:
    assert_error(await fh.post(b"{}", {}, route="nope"), 404, "unknown_route")
    assert_error(await fh.post(b"", {}, route="nope", method="GET"), 404)


@pytest.mark.one_store("verification answers before the store is touched")
async def test_other_methods_on_a_known_route_are_405(fh: InProcess) -> None:
    resp = await fh.post(b"", {}, method="GET")
    assert_error(resp, 405)
    assert resp.headers["allow"] == "POST"
    assert_error(await fh.post(b"{}", {}, method="PUT"), 405)


@pytest.mark.one_store("verification answers before the store is touched")
async def test_body_over_the_limit_is_413_with_content_length(
    inprocess: InProcessFactory, signer: FalSigner
) -> None:
    fh = await inprocess(receiver={"max_body_bytes": 1024})
    rid, body, headers = signed(signer, payload={"pad": "x" * 2000})
    resp = await fh.post(body, headers)
    assert resp.request.headers["content-length"] == str(len(body))
    assert_error(resp, 413, "body_too_large")
    assert not await stored(fh, rid)


@pytest.mark.one_store("verification answers before the store is touched")
async def test_body_over_the_limit_is_413_without_content_length(
    inprocess: InProcessFactory, signer: FalSigner
) -> None:
    fh = await inprocess(receiver={"max_body_bytes": 1024})
    rid, body, headers = signed(signer)

    async def chunks() -> AsyncIterator[bytes]:  # chunked transfer: the size is not declared
        for _ in range(64):
            yield b" " * 256
        yield body

    resp = await fh.post(chunks(), headers)
    assert "content-length" not in {k.lower() for k in resp.request.headers}
    assert_error(resp, 413, "body_too_large")
    assert not await stored(fh, rid)


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
async def test_bad_signature_headers_are_401(
    fh: InProcess, signer: FalSigner, mutate: Callable[[dict[str, str]], object]
) -> None:
    rid, body, headers = signed(signer)
    signature = headers["X-Fal-Webhook-Signature"]
    mutate(headers)
    resp = await fh.post(body, headers)
    assert_error(resp, 401)
    assert signature not in resp.text and signature.upper() not in resp.text
    assert not await stored(fh, rid)


@pytest.mark.one_store("verification answers before the store is touched")
async def test_timestamp_tolerance_is_inclusive(fh: InProcess, signer: FalSigner) -> None:
    now = int(time.time())
    for offset, status in ((-290, 200), (290, 200), (-400, 401), (400, 401)):
        rid, body = webhook_body(str(uuid.uuid4()), payload=None)
        resp = await fh.post(body, signer.headers(body, rid, timestamp=now + offset))
        assert resp.status_code == status, (offset, resp.text)


@pytest.mark.one_store("verification answers before the store is touched")
async def test_a_tampered_body_is_401(fh: InProcess, signer: FalSigner) -> None:
    rid, body, headers = signed(signer)
    tampered = body.replace(b"no files", b"evil file")
    assert_error(await fh.post(tampered, headers), 401)
    assert not await stored(fh, rid)


@pytest.mark.one_store("verification answers before the store is touched")
async def test_a_request_signed_by_another_key_is_401(fh: InProcess) -> None:
    rid, body, headers = signed(FalSigner(user_id="user-1"))
    assert_error(await fh.post(body, headers), 401, "bad_signature")
    assert not await stored(fh, rid)


@pytest.mark.one_store("verification answers before the store is touched")
async def test_users_outside_allowed_user_ids_are_401(
    inprocess: InProcessFactory, signer: FalSigner
) -> None:
    fh = await inprocess(receiver={"allowed_user_ids": ["someone-else"]})
    rid, body, headers = signed(signer)
    assert_error(await fh.post(body, headers), 401, "user_not_allowed")
    assert not await stored(fh, rid)


@pytest.mark.one_store("verification answers before the store is touched")
async def test_valid_signature_but_bad_body_is_400(fh: InProcess, signer: FalSigner) -> None:
    cases = [b"not json", b"[1, 2]", b'{"status": "OK"}', b'{"request_id": 7}']
    for body in cases:
        rid = str(uuid.uuid4())
        assert_error(await fh.post(body, signer.headers(body, rid)), 400, "bad_envelope")
        assert not await stored(fh, rid)


@pytest.mark.one_store("verification answers before the store is touched")
async def test_body_request_id_must_match_the_header(fh: InProcess, signer: FalSigner) -> None:
    rid, body = webhook_body(str(uuid.uuid4()), payload=None)
    other = str(uuid.uuid4())
    resp = await fh.post(body, signer.headers(body, other))
    assert_error(resp, 400, "request_id_mismatch")
    assert not await stored(fh, rid) and not await stored(fh, other)


@pytest.mark.one_store("verification answers before the store is touched")
async def test_no_keys_at_all_is_503_for_a_well_formed_request(
    inprocess: InProcessFactory, jwks: JWKSServer, signer: FalSigner
) -> None:
    jwks.fail(500)
    fh = await inprocess()
    _, body, headers = signed(signer)
    assert_error(await fh.post(body, headers), 503, "keys_unavailable")
    headers["X-Fal-Webhook-Signature"] = "nothex"
    assert_error(await fh.post(body, headers), 401)  # malformed stays 401
    assert (await fh.get("/readyz")).status_code == 503
    jwks.fail(None)  # fal's JWKS is back: fal's retry now succeeds
    _rid, body, headers = signed(signer)
    assert (await fh.post(body, headers)).status_code == 200
    assert (await fh.get("/readyz")).status_code == 200


@pytest.mark.one_store("verification answers before the store is touched")
async def test_rotated_keys_are_fetched_and_accepted(
    fh: InProcess, jwks: JWKSServer, signer: FalSigner
) -> None:
    rotated = signer.rotate()
    jwks.set_jwks(rotated.jwks())
    rid, body, headers = signed(rotated)
    assert (await fh.post(body, headers)).json() == {"status": "accepted", "request_id": rid}


@pytest.mark.one_store("verification answers before the store is touched")
async def test_cached_keys_keep_working_while_the_jwks_endpoint_fails(
    fh: InProcess, jwks: JWKSServer, signer: FalSigner
) -> None:
    jwks.fail(500)
    _rid, body, headers = signed(signer)
    assert (await fh.post(body, headers)).status_code == 200
    _, body, headers = signed(signer.rotate())  # a key we cannot fetch: 401, not 503
    assert_error(await fh.post(body, headers), 401)


@contextlib.contextmanager
def sqlite_outage(fh: InProcess) -> Iterator[None]:
    """Another writer holds the database past busy_timeout."""
    db = fh.settings.sqlite_path()
    assert db is not None
    blocker = sqlite3.connect(db, timeout=1, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


@contextlib.contextmanager
def pg_relay() -> Iterator[tuple[TCPRelay, str]]:
    """A relay to the test PostgreSQL that can be cut, and the store URL through it."""
    pg = urlsplit(PG_URL)
    relay = TCPRelay((pg.hostname or "127.0.0.1", pg.port or 5432)).start()
    user = pg.netloc.rpartition("@")[0]
    try:
        yield relay, urlunsplit(pg._replace(netloc=f"{user}@127.0.0.1:{relay.port}".lstrip("@")))
    finally:
        relay.stop()


async def test_store_that_cannot_take_the_event_is_503(
    inprocess: InProcessFactory, signer: FalSigner, store_backend: str
) -> None:
    rid, body, headers = signed(signer)
    if store_backend == "postgres":  # falhook reaches PostgreSQL through a relay we can cut
        with pg_relay() as (relay, url):
            fh = await inprocess(store={"url": url})
            try:
                relay.cut()  # the database is away: connections reset, new ones refused
                assert_error(await fh.post(body, headers), 503, "store_unavailable")
                assert (await fh.get("/readyz")).status_code == 503
                relay.restore()

                async def ready() -> bool:
                    return (await fh.get("/readyz")).status_code == 200

                await wait_until(ready, interval=0.05, what="readiness once the database is back")
                assert not await stored(fh, rid)
                assert (await fh.post(body, headers)).json()["status"] == "accepted"
            finally:
                await fh.aclose()  # before the relay goes
        return
    app = inprocess.build()
    path = app.settings.sqlite_path()
    assert path is not None
    # A short busy_timeout (5 s by default) keeps the outage short; the path is the same.
    fh = await app.start(store=SQLiteStore(path, busy_timeout=0.2))
    with sqlite_outage(fh):
        assert_error(await fh.post(body, headers), 503, "store_unavailable")
    assert not await stored(fh, rid)
    assert (await fh.post(body, headers)).json()["status"] == "accepted"  # fal's retry works


async def test_health_readiness_and_metrics(fh: InProcess, signer: FalSigner) -> None:
    assert (await fh.get("/healthz")).json() == {"status": "ok"}
    ready = await fh.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    _rid, body, headers = signed(signer)
    await fh.post(body, headers)
    await fh.post(b"{}", {})
    text = (await fh.get("/metrics")).text
    assert 'falhook_webhooks_total{outcome="accepted",reason="",route="default"} 1.0' in text
    assert 'outcome="rejected",reason="missing_header"' in text
    assert "falhook_deliveries_in_state{" in text


async def test_concurrent_duplicates_store_one_event(fh: InProcess, signer: FalSigner) -> None:
    rid, body, headers = signed(signer)
    answers = await asyncio.gather(*(fh.post(body, headers) for _ in range(5)))
    statuses = sorted(r.json()["status"] for r in answers)
    assert statuses == ["accepted"] + ["duplicate"] * 4
    listed = await fh.store.list_events(limit=1000)
    assert [e.request_id for e in listed].count(rid) == 1
