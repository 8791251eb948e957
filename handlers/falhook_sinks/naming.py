"""Safe, unique names for an event's files and folders: pure functions, no I/O.

Names come from the payload, so they are hostile until proven otherwise.

- Identifiers (request ids, routes, endpoint segments) become path and key components
  injectively: an identifier made only of ``[A-Za-z0-9._-]`` (not starting with a dot,
  at most 128 characters) is its own component; any other becomes a readable sanitised prefix,
  ``~`` and 16 hex digits of the SHA-256 of the exact identifier. A clean identifier never
  holds ``~``, so two different identifiers never share a folder or an S3 key.
- File names: only the last path component of `file_name` is kept; control characters and
  characters reserved on common file systems are replaced, format characters (bidirectional
  overrides, zero-width spaces, a BOM) and other invisible ones are removed, leading dots are
  dropped (no hidden files, no `..`), and the length is capped, keeping the extension. A name
  with nothing visible left gives way to one made from the JSON path.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import urlsplit

RESERVED = ("event.json",)
_MAX_BYTES = 200
_MAX_ID = 128  # characters of a clean identifier kept as it is
_ID_PREFIX = 96  # characters of the readable prefix of a changed identifier
_ID_HASH = 16  # hex digits of the identifier's SHA-256 after `~`
_CLEAN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\Z")
_NOT_ID = re.compile(r"[^A-Za-z0-9._-]")
_UNSAFE = re.compile(r'[<>:"|?*\\/]')
_MAX_NAME_INPUT = 4096  # characters of a file_name looked at (the result is capped anyway)
_DROPPED = frozenset({"Cf", "Cs", "Co", "Cn", "Zl", "Zp"})  # invisible: format, unassigned, ...
_EXTRA_TYPES = {
    "video/mp4": ".mp4",
    "image/jpeg": ".jpg",
    "image/x-exr": ".exr",
    "audio/mpeg": ".mp3",
}


def id_component(value: str, *, argument: bool = False) -> str:
    """A path or key component for an identifier, different for every different identifier
    (see the module's docstring); never empty, `.` or `..`, never holds a separator.
    `argument`: also never starts with `-`, so a command cannot take it for an option."""
    clean = len(value) <= _MAX_ID and _CLEAN_ID.match(value)
    if clean and not (argument and value.startswith("-")):
        return value
    strip = ".-" if argument else "."
    readable = _NOT_ID.sub("_", value[: _ID_PREFIX * 2])[:_ID_PREFIX].lstrip(strip) or "id"
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_ID_HASH]
    return f"{readable}~{digest}"


def sanitise_file_name(name: str | None) -> str | None:
    """The payload's file_name made safe, or None when nothing visible and usable is left."""
    if not name:
        return None
    name = re.split(r"[/\\]", name)[-1][-_MAX_NAME_INPUT:]  # the last component: no `..`
    name = _visible(unicodedata.normalize("NFC", name))
    name = _UNSAFE.sub("_", name).strip().lstrip(".").rstrip(". ")
    if not name:
        return None
    return _cap(name)


def _visible(name: str) -> str:
    """Control characters replaced (they show as `_`), invisible ones removed (a name must
    not show what it is not: `exe.png` that is `gnp.exe`), odd spaces made plain."""
    out = []
    for ch in name:
        category = unicodedata.category(ch)
        if category == "Cc":
            out.append("_")
        elif category in _DROPPED:
            continue
        elif category == "Zs":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


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
    same event always gets the same names: `a.mp4`, `a-2.mp4`, ...

    Linear in the number of names: each stem remembers the next number to try, so 8,000
    files called `frame.png` cost 8,000 steps, not 32 million."""
    taken = {r.lower() for r in RESERVED}
    next_number: dict[tuple[str, str], int] = {}
    result: list[str] = []
    for name in candidates:
        chosen = name
        if chosen.lower() in taken:
            stem, dot, ext = name.rpartition(".")
            if not dot or not stem:
                stem, dot, ext = name, "", ""
            key = (stem.lower(), ext.lower())
            n = next_number.get(key, 2)
            chosen = f"{stem}-{n}{dot}{ext}"
            while chosen.lower() in taken:
                n += 1
                chosen = f"{stem}-{n}{dot}{ext}"
            next_number[key] = n + 1
        taken.add(chosen.lower())
        result.append(chosen)
    return result


def file_names(files: Iterable[tuple[str, str | None, str | None, str | None]]) -> list[str]:
    """Names for (json_path, file_name, content_type, url) tuples, unique within the event."""
    return unique_names(
        sanitise_file_name(file_name) or name_from_path(path, content_type, url)
        for path, file_name, content_type, url in files
    )
