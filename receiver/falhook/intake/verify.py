"""fal webhook signature verification: pure functions of (headers, body, keys, now).

The signed message is ``request_id \\n user_id \\n timestamp \\n sha256_hex(body)`` (UTF-8),
signed with Ed25519; the signature travels hex-encoded in X-Fal-Webhook-Signature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

H_REQUEST_ID = "x-fal-webhook-request-id"
H_USER_ID = "x-fal-webhook-user-id"
H_TIMESTAMP = "x-fal-webhook-timestamp"
H_SIGNATURE = "x-fal-webhook-signature"
# Significant digits beyond this put a timestamp millions of years away; capping them keeps
# int() under Python's digit limit and the float subtraction from overflowing (a 500, not a 401).
_MAX_TS_DIGITS = 15


class VerificationError(Exception):
    """A webhook that fails verification: ``code`` as in the endpoint's error body,
    ``detail`` a sentence (never the signature or key material), ``status`` the endpoint's
    answer: 401 (headers, signature, user), 400 (a signed body that is not a fal envelope),
    503 (no keys could be had: fal will retry)."""

    def __init__(self, code: str, detail: str, *, status: int = 401) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class SignedRequest:
    request_id: str
    user_id: str
    timestamp: int
    signature: bytes
    message: bytes


def check_headers(
    headers: Mapping[str, str], body: bytes, *, now: float, tolerance: int
) -> SignedRequest:
    """The four headers, well formed and fresh, and the message they sign."""
    request_id, user_id, timestamp, ts, raw = check_header_form(
        headers, now=now, tolerance=tolerance
    )
    digest = hashlib.sha256(body).hexdigest()
    # The timestamp goes in as sent (leading zeros and all): that string is what fal signed.
    message = f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()
    return SignedRequest(request_id, user_id, ts, raw, message)


def check_header_form(
    headers: Mapping[str, str], *, now: float, tolerance: int
) -> tuple[str, str, str, int, bytes]:
    """(request_id, user_id, timestamp as sent, timestamp, signature bytes) when the four
    headers are present, well formed and fresh; VerificationError otherwise. Needs no body,
    so it can run before the body is read."""
    request_id = headers.get(H_REQUEST_ID)
    user_id = headers.get(H_USER_ID)
    timestamp = headers.get(H_TIMESTAMP)
    signature = headers.get(H_SIGNATURE)
    for name, value in (
        (H_REQUEST_ID, request_id),
        (H_USER_ID, user_id),
        (H_TIMESTAMP, timestamp),
        (H_SIGNATURE, signature),
    ):
        if not value:
            raise VerificationError("missing_header", f"header {name} is missing or empty")
    assert request_id and user_id and timestamp and signature  # narrowed above
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise VerificationError("bad_timestamp", "the timestamp is not an integer of seconds")
    significant = timestamp.lstrip("0") or "0"
    ts = int(significant) if len(significant) <= _MAX_TS_DIGITS else None
    if ts is None or abs(now - ts) > tolerance:
        raise VerificationError(
            "stale_timestamp", f"the timestamp is more than {tolerance} s from the server's clock"
        )
    try:
        raw = bytes.fromhex(signature) if len(signature) == 128 else b""
    except ValueError:
        raw = b""
    # fromhex skips whitespace: 64 bytes from 128 characters means 128 hex digits exactly.
    if len(raw) != 64:
        raise VerificationError("bad_signature", "the signature is not 128 hexadecimal digits")
    return request_id, user_id, timestamp, ts, raw


def verify_signature(signed: SignedRequest, keys: Sequence[VerifyKey]) -> bool:
    """True when any key verifies the signature.

    VerifyKey.verify costs the same as the lower-level binding (bench/verify_bench.py), so
    the public API is used."""
    for key in keys:
        try:
            key.verify(signed.message, signed.signature)
            return True
        except BadSignatureError:
            continue
    return False


def check_user(signed: SignedRequest, allowed_user_ids: Collection[str]) -> None:
    """Refuse a user outside a non-empty allowlist (empty: any fal user)."""
    if allowed_user_ids and signed.user_id not in allowed_user_ids:
        raise VerificationError("user_not_allowed", "this fal user is not in allowed_user_ids")


def verify(
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[VerifyKey],
    *,
    now: float,
    tolerance: int = 300,
    allowed_user_ids: Collection[str] = (),
) -> SignedRequest:
    """All checks at once (the receiver splits them to refetch keys on an unknown key)."""
    signed = check_headers(headers, body, now=now, tolerance=tolerance)
    if not verify_signature(signed, keys):
        raise VerificationError("bad_signature", "no fal key verifies the signature")
    check_user(signed, allowed_user_ids)
    return signed
