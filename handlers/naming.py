"""Safe, unique names for an event's files: pure functions, no I/O.

Names come from the payload, so they are hostile until proven otherwise: only the last path
component of `file_name` is kept, control and reserved characters are replaced, leading dots
are dropped (no hidden files, no `..`), and the length is capped, keeping the extension.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import urlsplit

RESERVED = ("event.json",)
_MAX_BYTES = 200
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\/]')
_COMPONENT = re.compile(r"[^A-Za-z0-9._-]")
_EXTRA_TYPES = {
    "video/mp4": ".mp4",
    "image/jpeg": ".jpg",
    "image/x-exr": ".exr",
    "audio/mpeg": ".mp3",
}


def safe_component(value: str) -> str:
    """A path component from an identifier (request_id): [A-Za-z0-9._-] only, never `.`/`..`."""
    cleaned = _COMPONENT.sub("_", value)[:128].strip(".") or "_"
    return cleaned


def sanitise_file_name(name: str | None) -> str | None:
    """The payload's file_name made safe, or None when nothing usable is left."""
    if not name:
        return None
    name = unicodedata.normalize("NFC", name)
    name = re.split(r"[/\\]", name)[-1]  # only the last component: no directories, no `..`
    name = _UNSAFE.sub("_", name).strip().lstrip(".").rstrip(". ")
    if not name:
        return None
    return _cap(name)


def _cap(name: str) -> str:
    if len(name.encode()) <= _MAX_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext) > 16:
        stem, ext = name, ""
    budget = _MAX_BYTES - len(ext.encode()) - (1 if ext else 0)
    stem = stem.encode()[:budget].decode("utf-8", "ignore")
    return f"{stem}.{ext}" if ext else stem


def extension_for(content_type: str | None, url: str | None = None) -> str:
    if content_type:
        base = content_type.split(";", 1)[0].strip().lower()
        ext = _EXTRA_TYPES.get(base) or mimetypes.guess_extension(base)
        if ext:
            return ext
    if url and url[:5].lower() == "data:":
        media = url[5:].split(",", 1)[0].split(";", 1)[0]  # data:<type>[;...],...
        return extension_for(media) if media else ""
    if url:
        tail = urlsplit(url).path.rsplit("/", 1)[-1]
        _, dot, ext = tail.rpartition(".")
        if dot and 0 < len(ext) <= 8 and ext.isalnum():
            return "." + ext.lower()
    return ""


def name_from_path(json_path: str, content_type: str | None, url: str | None) -> str:
    """`images[0]` -> `images_0.png`."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", json_path).strip("_") or "file"
    return _cap(stem + extension_for(content_type, url))


def unique_names(candidates: Iterable[str]) -> list[str]:
    """Make names unique (case-insensitively, and never a reserved name), in order, so the
    same event always gets the same names: `a.mp4`, `a-2.mp4`, ..."""
    taken = {r.lower() for r in RESERVED}
    result: list[str] = []
    for name in candidates:
        chosen = name
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, dot, ext = name, "", ""
        n = 2
        while chosen.lower() in taken:
            chosen = f"{stem}-{n}{dot}{ext}"
            n += 1
        taken.add(chosen.lower())
        result.append(chosen)
    return result


def file_names(files: Iterable[tuple[str, str | None, str | None, str | None]]) -> list[str]:
    """Names for (json_path, file_name, content_type, url) tuples, unique within the event."""
    return unique_names(
        sanitise_file_name(file_name) or name_from_path(path, content_type, url)
        for path, file_name, content_type, url in files
    )
