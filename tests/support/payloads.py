"""Hostile JSON bodies shared by the envelope-parser and intake tests."""

from __future__ import annotations


def nested(levels: int, kind: str) -> str:
    """JSON nested `levels` deep: arrays (`[[1]]`) for kind "array", else objects
    (`{"a":{"a":1}}`). Built as text, because json.dumps would itself recurse too deep."""
    if kind == "array":
        return "[" * levels + "1" + "]" * levels
    return '{"a":' * levels + "1" + "}" * levels
