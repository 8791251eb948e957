"""The folder of one run of the exec sink, made before the command starts, removed after:

    <tmp>/falhook-exec-XXXXXXXX/     private (0700)
      event.json                     {event_json}: the event document, as on stdin
      files/<name>                   {file:PATH}: each downloaded file under its safe name

Files are hard links to the worker's spool copies (symbolic links when the temporary folder
is on another file system): no bytes are copied, and a tool that looks at extensions sees
``clip.mp4``, not a spool name. Names are the sanitised ones of ``LocalFile.name``. The
document is the event as received plus, per file, ``local_path`` and (when a sink this one
runs after stored a copy) ``stored_url``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falhook_sinks.base import DeliveryContext, LocalFile, Permanent, json_document, on_disk
from falhook_sinks.links import stored_link


@dataclass(frozen=True)
class RunDir:
    root: Path
    event_json: Path
    files_dir: Path
    files: dict[str, str]  # JSON path -> local path of the file, for {file:PATH}
    document: bytes  # what event.json holds, and stdin gets


def prepare(ctx: DeliveryContext) -> RunDir:
    """Make the run's folder (blocking: call it in a thread)."""
    root = Path(tempfile.mkdtemp(prefix="falhook-exec-"))
    try:
        files_dir = root / "files"
        files_dir.mkdir()
        local = {f.path: str(_link(f, files_dir)) for f in ctx.files}
        document = _document(ctx, local)
        event_json = root / "event.json"
        event_json.write_bytes(document)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return RunDir(root, event_json, files_dir, local, document)


def remove(run_dir: RunDir) -> None:
    shutil.rmtree(run_dir.root, ignore_errors=True)


def _link(file: LocalFile, files_dir: Path) -> Path:
    target = files_dir / file.name
    if target.parent != files_dir or file.name in ("", ".", ".."):  # sanitised upstream
        raise Permanent(f"unsafe file name {file.name!r}")
    source = on_disk(file)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed there
        target.symlink_to(source)
    return target


def _document(ctx: DeliveryContext, local: dict[str, str]) -> bytes:
    doc = ctx.event.document()
    by_path = {f.path: f for f in ctx.files}
    files: list[dict[str, Any]] = []
    for view in doc.get("files") or []:
        entry = dict(view)
        path = entry.get("path")
        if isinstance(path, str) and path in local:
            entry["local_path"] = local[path]
            stored = stored_link(ctx, by_path[path])
            if stored:
                entry["stored_url"] = stored
        files.append(entry)
    doc["files"] = files
    return json_document(doc)
