"""Signature verification: a pure function of (headers, body, keys, now)."""

from __future__ import annotations

import uuid

import pytest

from falhook.intake.keys import parse_jwks
from falhook.intake.verify import VerificationError, check_headers, verify
from falhook.testing import FalSigner, webhook_body

NOW = 1_800_000_000


@pytest.fixture
def signer() -> FalSigner:
    return FalSigner(user_id="u-1")


def request(signer: FalSigner, ts: int = NOW) -> tuple[dict[str, str], bytes]:
    rid, body = webhook_body(str(uuid.uuid4()))
    return {k.lower(): v for k, v in signer.headers(body, rid, timestamp=ts).items()}, body


def code_of(headers: dict[str, str], body: bytes, keys: tuple, **kw: object) -> str:
    with pytest.raises(VerificationError) as err:
        verify(headers, body, keys, now=NOW, **kw)  # type: ignore[arg-type]
    signature = headers.get("x-fal-webhook-signature")
    assert not signature or signature not in err.value.detail
    return err.value.code


def test_a_correctly_signed_request_verifies(signer: FalSigner) -> None:
    headers, body = request(signer)
    signed = verify(headers, body, parse_jwks(signer.jwks()), now=NOW)
    assert signed.user_id == "u-1" and signed.timestamp == NOW
    assert signed.request_id == headers["x-fal-webhook-request-id"]


@pytest.mark.parametrize(
    "name",
    [
        "x-fal-webhook-request-id",
        "x-fal-webhook-user-id",
        "x-fal-webhook-timestamp",
        "x-fal-webhook-signature",
    ],
)
def test_each_missing_or_empty_header_is_refused(signer: FalSigner, name: str) -> None:
    headers, body = request(signer)
    keys = parse_jwks(signer.jwks())
    assert code_of({k: v for k, v in headers.items() if k != name}, body, keys) == "missing_header"
    assert code_of({**headers, name: ""}, body, keys) == "missing_header"


@pytest.mark.parametrize("ts", ["12a", "-5", " 12", "1.5", "+12", "\uff11\uff12"])
def test_a_timestamp_that_is_not_an_integer_is_refused(signer: FalSigner, ts: str) -> None:
    headers, body = request(signer)
    assert code_of({**headers, "x-fal-webhook-timestamp": ts}, body, ()) == "bad_timestamp"


@pytest.mark.parametrize("offset", [-300, 300, 0])
def test_the_tolerance_itself_is_inside(signer: FalSigner, offset: int) -> None:
    headers, body = request(signer, NOW + offset)
    verify(headers, body, parse_jwks(signer.jwks()), now=NOW, tolerance=300)


@pytest.mark.parametrize("offset", [-301, 301])
def test_beyond_the_tolerance_either_way_is_refused(signer: FalSigner, offset: int) -> None:
    headers, body = request(signer, NOW + offset)
    keys = parse_jwks(signer.jwks())
    assert code_of(headers, body, keys, tolerance=300) == "stale_timestamp"


def test_signature_must_be_exactly_128_hex_digits(signer: FalSigner) -> None:
    headers, body = request(signer)
    keys = parse_jwks(signer.jwks())
    sig = headers["x-fal-webhook-signature"]
    # Whitespace at a byte boundary and non-ASCII digits: what a lenient hex decoder takes.
    spaced, arabic = sig[:64] + "\t\n" + sig[66:], "\u0660" * 128
    for bad in (sig[:127], sig + "0", "g" + sig[1:], sig[:126] + "  ", spaced, arabic):
        assert code_of({**headers, "x-fal-webhook-signature": bad}, body, keys) == "bad_signature"
    verify({**headers, "x-fal-webhook-signature": sig.upper()}, body, keys, now=NOW)


def test_a_tampered_body_or_header_does_not_verify(signer: FalSigner) -> None:
    headers, body = request(signer)
    keys = parse_jwks(signer.jwks())
    assert code_of(headers, body + b" ", keys) == "bad_signature"
    other_id = {**headers, "x-fal-webhook-request-id": str(uuid.uuid4())}
    assert code_of(other_id, body, keys) == "bad_signature"
    assert code_of({**headers, "x-fal-webhook-user-id": "u-2"}, body, keys) == "bad_signature"


def test_any_key_of_the_set_may_verify(signer: FalSigner) -> None:
    headers, body = request(signer)
    keys = parse_jwks(FalSigner().jwks()) + parse_jwks(signer.jwks())
    verify(headers, body, keys, now=NOW)
    assert code_of(headers, body, parse_jwks(FalSigner().jwks())) == "bad_signature"


def test_users_outside_the_allowlist_are_refused(signer: FalSigner) -> None:
    headers, body = request(signer)
    keys = parse_jwks(signer.jwks())
    verify(headers, body, keys, now=NOW, allowed_user_ids={"u-1"})
    assert code_of(headers, body, keys, allowed_user_ids={"u-2"}) == "user_not_allowed"


def test_the_signed_message_is_fals_format(signer: FalSigner) -> None:
    import hashlib

    headers, body = request(signer)
    signed = check_headers(headers, body, now=NOW, tolerance=300)
    expected = "\n".join(
        [headers["x-fal-webhook-request-id"], "u-1", str(NOW), hashlib.sha256(body).hexdigest()]
    ).encode()
    assert signed.message == expected


@pytest.mark.parametrize("digits", [16, 400, 5000])
def test_an_absurdly_long_timestamp_is_stale_not_a_crash(signer: FalSigner, digits: int) -> None:
    headers, body = request(signer)
    huge = {**headers, "x-fal-webhook-timestamp": "9" * digits}
    assert code_of(huge, body, parse_jwks(signer.jwks())) == "stale_timestamp"


def test_leading_zeros_are_an_integer_and_signed_as_sent(signer: FalSigner) -> None:
    headers, body = request(signer)
    padded = {**headers, "x-fal-webhook-timestamp": "0" * 30 + str(NOW)}
    signed = check_headers(padded, body, now=NOW, tolerance=300)
    assert signed.timestamp == NOW
    assert signed.message.split(b"\n")[2] == ("0" * 30 + str(NOW)).encode()
    # The signature covered the unpadded string, so the padded one does not verify.
    assert code_of(padded, body, parse_jwks(signer.jwks())) == "bad_signature"


def test_no_keys_at_all_is_a_bad_signature(signer: FalSigner) -> None:
    headers, body = request(signer)
    assert code_of(headers, body, ()) == "bad_signature"


def test_the_allowlist_is_checked_only_after_the_signature(signer: FalSigner) -> None:
    headers, body = request(signer)
    forged = {**headers, "x-fal-webhook-user-id": "u-2"}
    keys = parse_jwks(signer.jwks())
    assert code_of(forged, body, keys, allowed_user_ids={"u-1"}) == "bad_signature"
