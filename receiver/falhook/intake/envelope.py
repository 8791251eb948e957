"""fal's webhook envelope, and every `File` object found anywhere in its payload.

Pure functions: bytes in, typed values out. A malformed File never raises; it becomes a
FileProblem recorded on the event.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec

_json_decoder = msgspec.json.Decoder()
# fal's envelopes nest a few levels (a FastAPI `detail` list, a File in an object in a list);
# anything deeper than this is refused before any code walks it.
MAX_DEPTH = 64
_FILE_KEYS = ("content_type", "file_name", "file_size")
_NOT_EXTRAS = frozenset(("url", *_FILE_KEYS))
_DATA_URI = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*?)(?P<b64>;base64)?,", re.I)


class EnvelopeError(ValueError):
    """The body is not a fal webhook envelope (answered 400)."""


@dataclass(frozen=True)
class FileRef:
    """One fal `File` in the payload, named by its JSON path (`video`, `images[0]`)."""

    path: str
    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_data_uri(self) -> bool:
        return self.url[:5].lower() == "data:"


@dataclass(frozen=True)
class FileProblem:
    """A File-like object that could not be used, and why."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Envelope:
    request_id: str
    gateway_request_id: str | None
    status: str
    payload: Any
    error: str | None
    payload_error: str | None

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def has_result(self) -> bool:
        """Only an OK envelope with a payload has files worth downloading."""
        return self.ok and self.payload is not None


def parse_envelope(body: bytes) -> Envelope:
    """The envelope of a webhook body; EnvelopeError (and nothing else) when it is not one."""
    try:
        doc = _json_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"body is not valid JSON ({exc})") from None
    except RecursionError:  # the decoder's own bound, well past MAX_DEPTH
        raise EnvelopeError(f"body nests more than {MAX_DEPTH} levels") from None
    if not isinstance(doc, dict):
        raise EnvelopeError("body must be a JSON object")
    if nests_deeper(doc, MAX_DEPTH):
        raise EnvelopeError(f"body nests more than {MAX_DEPTH} levels")
    request_id = doc.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise EnvelopeError("body must have a non-empty string request_id")
    status = doc.get("status")
    return Envelope(
        request_id=request_id,
        gateway_request_id=_opt_str(doc.get("gateway_request_id")),
        status=status if isinstance(status, str) else "UNKNOWN",
        payload=doc.get("payload"),
        error=_as_message(doc.get("error")),
        payload_error=_as_message(doc.get("payload_error")),
    )


def nests_deeper(doc: Any, limit: int) -> bool:
    """True when arrays and objects nest more than `limit` levels. Iterative: a hostile body
    cannot make it recurse, and it stops at the first path that is too deep."""
    stack: list[tuple[Any, int]] = [(doc, 1)] if isinstance(doc, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _as_message(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


# --- files -----------------------------------------------------------------------------------


def find_files(payload: Any) -> tuple[list[FileRef], list[FileProblem]]:
    """Walk the payload depth-first; a dict with a `url` key is a File."""
    files: list[FileRef] = []
    problems: list[FileProblem] = []
    stack: list[tuple[str, Any]] = [("", payload)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            if "url" in node and _looks_like_file(node):
                ref, problem = _file_from(path or "payload", node)
                if ref is not None:
                    files.append(ref)
                else:
                    problems.append(problem)  # type: ignore[arg-type]
                continue
            for key in reversed(list(node)):
                stack.append((f"{path}.{key}" if path else str(key), node[key]))
        elif isinstance(node, list):
            for index in range(len(node) - 1, -1, -1):
                stack.append((f"{path}[{index}]", node[index]))
    return files, problems


def _looks_like_file(node: dict[str, Any]) -> bool:
    # A `url` string alone is how fal writes a minimal File; a non-string url only counts
    # (as a malformed File) when the object also carries a File field.
    return isinstance(node["url"], str) or any(k in node for k in _FILE_KEYS)


def _file_from(path: str, node: dict[str, Any]) -> tuple[FileRef | None, FileProblem | None]:
    url = node.get("url")
    if not isinstance(url, str):
        return None, FileProblem(path, "url is not a string")
    if not url.strip():
        return None, FileProblem(path, "url is empty")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https", "data"):
        shown = scheme or "(none)"
        return None, FileProblem(path, f"url scheme {shown!r} is not http, https or data")
    if scheme == "data" and not _DATA_URI.match(url):
        return None, FileProblem(path, "data URI is malformed")
    content_type = node.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        return None, FileProblem(path, "content_type is not a string")
    file_name = node.get("file_name")
    if file_name is not None and not isinstance(file_name, str):
        return None, FileProblem(path, "file_name is not a string")
    file_size = node.get("file_size")
    if file_size is not None and (
        isinstance(file_size, bool) or not isinstance(file_size, int) or file_size < 0
    ):
        return None, FileProblem(path, "file_size is not a non-negative integer")
    extras = {k: v for k, v in node.items() if k not in _NOT_EXTRAS}
    return (
        FileRef(
            path=path,
            url=url,
            content_type=content_type,
            file_name=file_name,
            file_size=file_size,
            extras=extras,
        ),
        None,
    )


def decode_data_uri(url: str) -> tuple[bytes, str | None]:
    """The bytes and media type of a `data:` URI; ValueError when it cannot be decoded."""
    match = _DATA_URI.match(url)
    if not match:
        raise ValueError("data URI is malformed")
    data = url[match.end() :]
    mime = match.group("mime") or None
    if match.group("b64"):
        try:
            return base64.b64decode(data, validate=True), mime
        except (binascii.Error, ValueError):
            try:  # the URL-safe alphabet, validated too (a bad character is an error)
                padded = data + "=" * (-len(data) % 4)
                return base64.b64decode(padded, altchars=b"-_", validate=True), mime
            except (binascii.Error, ValueError):
                raise ValueError("data URI has invalid base64") from None
    return unquote_to_bytes(data), mime
