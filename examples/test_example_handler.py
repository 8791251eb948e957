"""The example handler, built the way falhook builds it from a config, and delivered to."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from falhook.sinks import DeliveryContext, EventInfo, LocalFile, OptionError, SinkEnv
from falhook_sinks.python import python_sink


def _ctx(tmp_path: Path, request_id: str = "req-1") -> DeliveryContext:
    data = b"frame data"
    local = tmp_path / "spool" / "clip.mp4"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    file = LocalFile(
        path="video",
        name="clip.mp4",
        url="https://fal.media/files/clip.mp4",
        local_path=local,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type="video/mp4",
    )
    event = EventInfo(
        request_id=request_id,
        route="reframe",
        fal_status="OK",
        error=None,
        payload_error=None,
        payload={"video": {"url": file.url}},
        gateway_request_id=None,
        received_at=datetime(2026, 1, 2, tzinfo=UTC),
        files=[],
        file_problems=[],
    )
    return DeliveryContext(
        event=event,
        files=[file],
        sink="manifest",
        attempt=1,
        log=structlog.get_logger(),
    )


def _env(tmp_path: Path) -> SinkEnv:
    return SinkEnv(base_dir=tmp_path)


HANDLER = "falhook_example.handler:record"


async def test_writes_one_line_per_event_even_when_redelivered(tmp_path: Path) -> None:
    manifest = tmp_path / "out" / "manifest.jsonl"
    sink = python_sink("manifest", {"handler": HANDLER, "path": str(manifest)}, _env(tmp_path))
    first = await sink.deliver(_ctx(tmp_path))
    again = await sink.deliver(_ctx(tmp_path))
    assert first == {"manifest": str(manifest), "written": True}
    assert again is not None and again["written"] is False
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert [x["request_id"] for x in lines] == ["req-1"]
    assert lines[0]["files"][0]["sha256"] == hashlib.sha256(b"frame data").hexdigest()
    assert "url" not in lines[0]["files"][0]


async def test_include_urls_option(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    options = {"handler": HANDLER, "path": str(manifest), "include_urls": True}
    sink = python_sink("manifest", options, _env(tmp_path))
    await sink.deliver(_ctx(tmp_path))
    line = json.loads(manifest.read_text())
    assert line["files"][0]["url"] == "https://fal.media/files/clip.mp4"


def test_missing_option_is_named_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(OptionError) as err:
        python_sink("manifest", {"handler": HANDLER}, _env(tmp_path))
    assert "[sinks.manifest].path" in str(err.value)


async def test_packaged_factory_takes_the_same_options(tmp_path: Path) -> None:
    from falhook_example.sink import factory

    manifest = tmp_path / "m.jsonl"
    sink = factory("manifest", {"path": str(manifest)}, _env(tmp_path))
    assert (await sink.deliver(_ctx(tmp_path)))["written"] is True
    with pytest.raises(OptionError) as err:
        factory("manifest", {"path": str(manifest), "pth": "x"}, _env(tmp_path))
    assert "[sinks.manifest].pth" in str(err.value)
