"""Build a DeliveryContext by hand, as the worker would, for calling a sink's `deliver`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from falhook.sinks.base import DeliveryContext, EventInfo, LocalFile

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
        submission={"endpoint": endpoint} if endpoint else None,
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
