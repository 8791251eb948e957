"""What the HTTP-speaking sinks share: status classification and Retry-After."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from falhook.sinks.base import Permanent, Retryable

RETRYABLE_STATUS = frozenset({408, 429})
MAX_RETRY_AFTER = 3600.0  # a hostile or broken header must not park a delivery for days


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
