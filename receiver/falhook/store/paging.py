"""Cursors and search text shared by the stores' listings.

A cursor is the sort key of the last event of a page, opaque to callers (base64url of a
JSON list): the next page starts strictly after it, so events arriving meanwhile neither
repeat nor hide others. The search text `q` becomes each engine's full-text query.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import msgspec

_WORD = re.compile(r"[^\W_]+")
MAX_TERMS = 16  # a pasted paragraph searches its first words, not a huge phrase


class InvalidCursor(ValueError):
    """A cursor that no listing of ours made."""


def encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The key a cursor holds; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = msgspec.json.decode(raw)
    except (ValueError, msgspec.DecodeError):
        raise InvalidCursor("malformed cursor") from None
    if not isinstance(key, list) or len(key) != arity:
        raise InvalidCursor("malformed cursor")
    return key


def search_terms(q: str) -> list[str]:
    """The words of a search, as the full-text indexes split text (letters and digits)."""
    return _WORD.findall(q.lower())[:MAX_TERMS]


def fts5_query(q: str) -> str | None:
    """An FTS5 phrase of the search's words, the last one a prefix ("ray v3" finds
    "ray v3.2"); None when the search has no word."""
    terms = search_terms(q)
    return f'"{" ".join(terms)}" *' if terms else None


def like_pattern(q: str) -> str:
    """A LIKE pattern finding `q` anywhere, its own % and _ taken literally (ESCAPE '\\')."""
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
