"""An event's downloaded files, kept in the spool across its attempts.

Each event has a folder, ``<spool>/<request id as a component>/``, holding its files under
names of their own and an index (``index.jsonl``: one line per finished download, JSON path
-> file, size, sha256, url; appended, so recording a file costs the same whether the event
has one file or thousands, and a line cut by a crash is skipped). A later attempt of any
sink of the event reuses a file after checking its size and sha256 against the index (and
against what the store recorded), so a Slack post that failed twice does not download a
1 GiB video three times.

The worker removes the folder once no delivery that reads files is left to do. Folders also
go when the spool grows past `max_bytes` or a folder has not been used for `max_age` seconds,
the least recently used first (``sweep``), so an event whose sinks keep retrying cannot hold
the disk forever.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Collection
from pathlib import Path

from falhook.downloads.fetch import FetchedFile
from falhook.intake.envelope import FileRef
from falhook_sinks.naming import id_component

INDEX = "index.jsonl"
_HASH_READ = 1024 * 1024


class EventSpool:
    """One event's folder in the spool. Blocking file work: call it from a thread."""

    def __init__(self, root: Path, request_id: str) -> None:
        self.folder = root / id_component(request_id)
        self._entries: dict[str, dict[str, object]] | None = None  # the index, once read

    def prepare(self) -> Path:
        """The folder, made if needed, marked as just used, its index read."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.utime(self.folder)
        self._entries = self._read_index()
        return self.folder

    def lookup(self, ref: FileRef, recorded_sha256: str | None) -> FetchedFile | None:
        """The file kept for `ref`, when it is whole: its size and a fresh sha256 of its
        bytes match the index (and the store's record, when there is one)."""
        entry = self._index().get(ref.path)
        if not entry or entry.get("url") != _url_key(ref):
            return None
        path = self.folder / str(entry.get("file"))
        try:
            size = path.stat().st_size
        except OSError:
            return None
        sha256 = entry.get("sha256")
        if size != entry.get("size") or (recorded_sha256 and recorded_sha256 != sha256):
            return None
        if _sha256_of(path) != sha256:
            return None
        content_type = entry.get("content_type")
        return FetchedFile(
            ref, path, size, str(sha256), str(content_type) if content_type else None
        )

    def keep(self, fetched: FetchedFile) -> Path:
        """Record a finished download (already in this folder) in the index; its path."""
        entry: dict[str, object] = {
            "path": fetched.ref.path,
            "file": fetched.local_path.name,
            "size": fetched.size,
            "sha256": fetched.sha256,
            "content_type": fetched.content_type,
            "url": _url_key(fetched.ref),
        }
        with open(self.folder / INDEX, "a", encoding="utf-8") as index:
            index.write(json.dumps(entry) + "\n")  # one write: whole or cut, never mixed
        self._index()[fetched.ref.path] = entry
        return fetched.local_path

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _index(self) -> dict[str, dict[str, object]]:
        if self._entries is None:
            self._entries = self._read_index()
        return self._entries

    def _read_index(self) -> dict[str, dict[str, object]]:
        """JSON path -> the latest entry recorded for it; unreadable lines are skipped."""
        entries: dict[str, dict[str, object]] = {}
        try:
            lines = (self.folder / INDEX).read_text(encoding="utf-8").splitlines()
        except OSError:
            return entries
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                entries[entry["path"]] = entry
        return entries


def sweep(root: Path, *, max_bytes: int, max_age: float, in_use: Collection[str] = ()) -> int:
    """Remove event folders unused for `max_age` seconds, then the least recently used until
    the spool holds at most `max_bytes`; folders named in `in_use` stay. Returns how many
    went."""
    now = time.time()
    folders: list[tuple[float, int, Path]] = []
    for entry in _listdir(root):
        if entry.is_dir() and entry.name not in in_use:
            folders.append((_mtime(entry), _size_of(entry), entry))
    folders.sort()  # oldest use first
    total = sum(size for _, size, _ in folders)
    removed = 0
    for used, size, folder in folders:
        if now - used <= max_age and total <= max_bytes:
            break
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
        removed += 1
    return removed


def _url_key(ref: FileRef) -> str:
    # data: URIs can be megabytes: the index keeps their digest, not the text.
    if ref.is_data_uri:
        return "data:sha256:" + hashlib.sha256(ref.url.encode()).hexdigest()
    return ref.url


def _sha256_of(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_HASH_READ):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _listdir(root: Path) -> list[Path]:
    try:
        return list(root.iterdir())
    except OSError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size_of(folder: Path) -> int:
    total = 0
    for entry in _listdir(folder):
        with contextlib.suppress(OSError):
            total += entry.stat().st_size
    return total
