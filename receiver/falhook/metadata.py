"""Submission metadata: the user's own labels for a job ("customer 42, order 9001"), stored
with the submission, never sent to fal, and carried by the event it becomes
(`submission.metadata`). Pure checks, shared by `falhook submit --meta`, `submit(...,
metadata=...)` and the `--meta` / `meta.KEY` filters.

The rules (docs/submit.md): at most MAX_KEYS keys, each a plain name (a letter or `_`,
then letters, digits, `_` or `-`; at most MAX_KEY characters); each value a string of at
most MAX_VALUE characters without control characters; at most MAX_BYTES bytes in all, as
JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

MAX_KEYS = 32
MAX_KEY = 64
MAX_VALUE = 512
MAX_BYTES = 4096
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MetadataError(ValueError):
    """Metadata that breaks a rule; the message names the key."""


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not KEY.match(key) or len(key) > MAX_KEY:
        raise MetadataError(
            f"metadata key {key!r} is not a plain name (a letter or _, then letters, digits, "
            f"_ or -; at most {MAX_KEY} characters)"
        )
    return key


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """The metadata as stored (a dict of strings), or MetadataError naming what is wrong."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise MetadataError("metadata must be an object of strings")
    if len(metadata) > MAX_KEYS:
        raise MetadataError(f"metadata has {len(metadata)} keys; at most {MAX_KEYS}")
    checked: dict[str, str] = {}
    for key, value in metadata.items():
        check_key(key)
        if not isinstance(value, str):
            raise MetadataError(f"metadata {key!r}: the value must be a string")
        if len(value) > MAX_VALUE:
            raise MetadataError(f"metadata {key!r}: the value is over {MAX_VALUE} characters")
        if _CONTROL.search(value):
            raise MetadataError(f"metadata {key!r}: the value holds a control character")
        checked[key] = value
    size = len(json.dumps(checked, ensure_ascii=False).encode())
    if size > MAX_BYTES:
        raise MetadataError(f"metadata is {size} bytes as JSON; at most {MAX_BYTES}")
    return checked


def parse_pairs(pairs: Iterable[str], option: str = "--meta") -> dict[str, str]:
    """`KEY=VALUE` items (a key given twice: the last wins), checked like metadata."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise MetadataError(f"{option} {pair!r}: expected KEY=VALUE")
        found[check_key(key)] = value
    return check_metadata(found)
