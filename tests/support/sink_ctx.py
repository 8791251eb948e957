"""Build a DeliveryContext by hand, as the worker would, for calling a sink's `deliver`:
`make_ctx` from LocalFiles made with `local_file`, or `spooled_ctx` from {name: bytes} in one
call (each file a freshly downloaded spool file, as the disk sink receives it)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from falhook_sinks.base import DeliveryContext, EventInfo, LocalFile

RECEIVED = datetime(2026, 11, 23, 19, 12, 29, tzinfo=UTC)


def local_file(
    folder: Path,
    path: str,
    name: str,
    data: bytes | Iterable[bytes],
    content_type: str | None = "application/octet-stream",
    **extras: Any,
) -> LocalFile:
    """Write `data` (bytes or chunks) to `folder/name` and describe it as the worker does."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as fh:
        for chunk in [data] if isinstance(data, bytes) else data:
            fh.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return LocalFile(
        path=path,
        name=name,
        url=f"https://v3.fal.media/files/abc/{name}",
        local_path=target,
        size=size,
        sha256=digest.hexdigest(),
        content_type=content_type,
        file_name=name,
        extras=extras,
    )


def make_ctx(
    files: list[LocalFile],
    *,
    request_id: str = "req-123",
    route: str = "reframe",
    sink: str = "sink",
    status: str = "OK",
    error: str | None = None,
    payload: Any = None,
    endpoint: str | None = "luma/agent/ray/v3.2/reframe",
    outputs: dict[str, dict[str, Any]] | None = None,
    previous: dict[str, Any] | None = None,
    attempt: int = 1,
    metadata: dict[str, str] | None = None,
) -> DeliveryContext:
    views = [
        {
            "path": f.path,
            "url": f.url,
            "content_type": f.content_type,
            "size": f.size,
            "sha256": f.sha256,
            "name": f.name,
        }
        for f in files
    ]
    event = EventInfo(
        request_id=request_id,
        route=route,
        fal_status=status,
        error=error,
        payload_error=None,
        payload=payload,
        gateway_request_id="gw-1",
        received_at=RECEIVED,
        files=views,
        file_problems=[],
        submission={"endpoint": endpoint, "metadata": metadata or {}} if endpoint else None,
    )
    return DeliveryContext(
        event=event,
        files=files,
        sink=sink,
        attempt=attempt,
        log=structlog.get_logger().bind(request_id=request_id, sink=sink),
        outputs=outputs or {},
        previous=previous,
    )


_spool_names = itertools.count(1)


def _spooled(tmp_path: Path, data: bytes) -> Path:
    """A freshly downloaded file, as the worker leaves it in its spool folder."""
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    path = spool / f"dl-{next(_spool_names)}"
    path.write_bytes(data)
    return path


def _spooled_file(tmp_path: Path, name: str, data: bytes, path: str) -> LocalFile:
    return LocalFile(
        path=path,
        name=name,
        url=f"https://v3.fal.media/{name}",
        local_path=_spooled(tmp_path, data),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="video/mp4",
    )


def spooled_ctx(
    tmp_path: Path,
    *,
    request_id: str = "req-1",
    route: str = "reframe",
    files: dict[str, bytes] | None = None,
    status: str = "OK",
) -> DeliveryContext:
    """A context for sink "local" whose files ({name: bytes}; default one clip.mp4) sit in
    tmp_path/spool under the worker's own names (dl-N), as the disk sink receives them."""
    files = {"clip.mp4": b"video bytes"} if files is None else files
    info = EventInfo(
        request_id=request_id,
        route=route,
        fal_status=status,
        error=None if status == "OK" else "Invalid",
        payload_error=None,
        payload={"video": {"url": "https://v3.fal.media/clip.mp4"}} if status == "OK" else None,
        gateway_request_id=None,
        received_at=RECEIVED,
        files=[],
        file_problems=[],
    )
    return DeliveryContext(
        event=info,
        files=[
            _spooled_file(tmp_path, name, data, path=f"out[{i}]")
            for i, (name, data) in enumerate(files.items())
        ],
        sink="local",
        attempt=1,
        log=structlog.get_logger(),
    )
