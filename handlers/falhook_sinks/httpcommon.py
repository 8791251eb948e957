"""What falhook's HTTP clients share: one TLS trust per process, status classification and
Retry-After."""

from __future__ import annotations

import os
import ssl
import threading
import time
from email.utils import parsedate_to_datetime

import httpx

from falhook_sinks.base import Permanent, Retryable

RETRYABLE_STATUS = frozenset({408, 429})
MAX_RETRY_AFTER = 3600.0  # a hostile or broken header must not park a delivery for days

_trusts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}
_trusts_lock = threading.Lock()


def trust() -> ssl.SSLContext:
    """The TLS context for `verify=` of every client falhook makes: certifi's CAs, or
    SSL_CERT_FILE / SSL_CERT_DIR as httpx reads them. Built once per trust and shared, since
    each build parses the whole CA bundle (tens of milliseconds) and clients are made per
    sink, per event loop and per command."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _trusts_lock:
        if key not in _trusts:
            _trusts[key] = httpx.create_ssl_context()
        return _trusts[key]


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def error_for_status(
    what: str, status: int, detail: str = "", retry_after_header: str | None = None
) -> Retryable | Permanent:
    message = f"{what} answered {status}" + (f": {detail}" if detail else "")
    if is_retryable_status(status):
        return Retryable(message, retry_after=retry_after(retry_after_header))
    return Permanent(message)


def short(text: str, limit: int = 200) -> str:
    """An error body fit for last_error: one line, bounded."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
