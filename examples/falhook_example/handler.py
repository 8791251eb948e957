"""A custom falhook sink: one JSON line per event in a manifest file.

Configure it with::

    [sinks.manifest]
    type = "python"
    handler = "falhook_example.handler:record"
    path = "manifest.jsonl"          # required
    include_urls = false             # optional

Options become keyword-only arguments; falhook checks them at start-up. The handler is
idempotent (an event already in the manifest is not written twice), so redeliveries and
replays leave one line, and it raises ``Permanent`` or ``Retryable`` on failure.
"""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path
from typing import Any

from falhook.sinks import DeliveryContext, Permanent, Retryable


async def record(ctx: DeliveryContext, *, path: str, include_urls: bool = False) -> dict[str, Any]:
    line = {
        "request_id": ctx.event.request_id,
        "route": ctx.event.route,
        "status": ctx.event.fal_status,
        "error": ctx.event.error,
        "files": [
            {"path": f.path, "name": f.name, "size": f.size, "sha256": f.sha256}
            | ({"url": f.url} if include_urls else {})
            for f in ctx.files
        ],
    }
    try:
        written = await asyncio.to_thread(_append_once, Path(path), line)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise Permanent(f"cannot write the manifest: {exc.strerror}") from exc
        raise Retryable(f"manifest write failed: {exc.strerror or exc}") from exc
    ctx.log.info("manifest updated", written=written)
    return {"manifest": str(path), "written": written}


def _append_once(path: Path, line: dict[str, Any]) -> bool:
    if path.exists():
        with path.open(encoding="utf-8") as fh:
            for existing in fh:
                try:
                    if json.loads(existing).get("request_id") == line["request_id"]:
                        return False
                except ValueError:
                    continue  # a torn last line from a crash: ignore it
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, sort_keys=True) + "\n")
    return True
