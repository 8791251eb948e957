"""The disk sink: atomic, idempotent writes that never leave root."""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from handlers.base import DeliveryContext, EventInfo, LocalFile, SinkEnv
from handlers.disk import DiskSink
from receiver.config import ConfigError, embedded_defaults


def context(tmp_path: Path, request_id: str = "req-1", data: bytes = b"video") -> DeliveryContext:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    local = spool / "dl-1"
    local.write_bytes(data)
    info = EventInfo(
        request_id=request_id,
        route="reframe",
        fal_status="OK",
        error=None,
        payload_error=None,
        payload={"video": {"url": "https://f/v.mp4"}},
        gateway_request_id=None,
        received_at=datetime(2026, 11, 24, tzinfo=UTC),
        files=[],
        file_problems=[],
        document={"request_id": request_id, "route": "reframe"},
    )
    file = LocalFile(
        path="video",
        name="clip.mp4",
        url="https://f/v.mp4",
        local_path=local,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="video/mp4",
    )
    return DeliveryContext(
        event=info,
        files=[file],
        route="reframe",
        sink="local",
        attempt=1,
        log=structlog.get_logger(),
    )


def sink(tmp_path: Path, **options: object) -> DiskSink:
    env = SinkEnv(base_dir=tmp_path, settings=embedded_defaults(tmp_path))
    return DiskSink("local", {"root": "files", **options}, env)


def test_files_and_event_json_land_under_route_and_request_id(tmp_path: Path) -> None:
    out = asyncio.run(sink(tmp_path).deliver(context(tmp_path)))
    folder = tmp_path / "files" / "reframe" / "req-1"
    assert (folder / "clip.mp4").read_bytes() == b"video"
    assert b'"request_id": "req-1"' in (folder / "event.json").read_bytes()
    assert out == {"folder": str(folder), "files": {"video": str(folder / "clip.mp4")}}


def test_redelivery_leaves_one_copy_and_no_temporaries(tmp_path: Path) -> None:
    s = sink(tmp_path)
    for _ in range(3):
        asyncio.run(s.deliver(context(tmp_path)))
    folder = tmp_path / "files" / "reframe" / "req-1"
    assert sorted(p.name for p in folder.iterdir()) == ["clip.mp4", "event.json"]


def test_a_hostile_request_id_stays_inside_root(tmp_path: Path) -> None:
    asyncio.run(sink(tmp_path).deliver(context(tmp_path, request_id="../../../etc")))
    root = (tmp_path / "files").resolve()
    written = [p for p in tmp_path.rglob("clip.mp4")]
    assert len(written) == 1 and root in written[0].resolve().parents


def test_the_spool_file_is_linked_not_copied_and_survives_its_removal(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    asyncio.run(sink(tmp_path).deliver(ctx))
    final = tmp_path / "files" / "reframe" / "req-1" / "clip.mp4"
    assert os.stat(final).st_ino == os.stat(ctx.files[0].local_path).st_ino
    ctx.files[0].local_path.unlink()
    assert final.read_bytes() == b"video"


def test_unknown_options_fail_at_start_up_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[sinks\.local\]\.rooot"):
        sink(tmp_path, rooot="x")
