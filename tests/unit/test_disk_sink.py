"""The disk sink: `<root>/<route>/<request_id>/<name>` plus event.json, atomic, idempotent,
never outside root."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from falhook_sinks.base import (
    DeliveryContext,
    OptionError,
    Permanent,
    Retryable,
    SinkEnv,
)
from falhook_sinks.disk import DiskSink
from falhook_sinks.naming import id_component
from falhook_sinks.registry import construct
from tests.support.sink_ctx import spooled_ctx


def sink(tmp_path: Path, name: str = "local", **options: Any) -> DiskSink:
    env = SinkEnv(base_dir=tmp_path)
    return construct(DiskSink, name, {"root": "files", **options}, env)


def deliver(s: DiskSink, ctx: DeliveryContext) -> Any:
    return asyncio.run(s.deliver(ctx))


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_files_land_at_root_route_request_id_name(tmp_path: Path) -> None:
    deliver(sink(tmp_path), spooled_ctx(tmp_path, files={"clip.mp4": b"video", "e.zip": b"exr"}))
    folder = tmp_path / "files" / "reframe" / "req-1"
    assert (folder / "clip.mp4").read_bytes() == b"video"
    assert (folder / "e.zip").read_bytes() == b"exr"


def test_event_json_lands_beside_the_files(tmp_path: Path) -> None:
    ctx = spooled_ctx(tmp_path)
    deliver(sink(tmp_path), ctx)
    written = tmp_path / "files" / "reframe" / "req-1" / "event.json"
    assert json.loads(written.read_bytes()) == json.loads(json.dumps(ctx.event.document()))


def test_the_output_says_where_each_file_went(tmp_path: Path) -> None:
    out = deliver(sink(tmp_path), spooled_ctx(tmp_path))
    folder = tmp_path / "files" / "reframe" / "req-1"
    assert out == {"folder": str(folder), "files": {"out[0]": str(folder / "clip.mp4")}}


def test_an_error_event_writes_its_event_json_alone(tmp_path: Path) -> None:
    deliver(sink(tmp_path), spooled_ctx(tmp_path, status="ERROR", files={}))
    assert all_files(tmp_path / "files") == ["reframe/req-1/event.json"]


def test_a_second_delivery_leaves_one_file_with_the_same_bytes_and_no_temporaries(
    tmp_path: Path,
) -> None:
    s = sink(tmp_path)
    for _ in range(3):  # each a fresh download, as after a replay
        deliver(s, spooled_ctx(tmp_path, files={"clip.mp4": b"video bytes"}))
    folder = tmp_path / "files" / "reframe" / "req-1"
    assert sorted(p.name for p in folder.iterdir()) == ["clip.mp4", "event.json"]
    assert (folder / "clip.mp4").read_bytes() == b"video bytes"


def test_temporaries_left_by_a_crash_are_cleared_by_the_next_delivery(tmp_path: Path) -> None:
    folder = tmp_path / "files" / "reframe" / "req-1"
    folder.mkdir(parents=True)
    (folder / ".clip.mp4.0123456789ab.tmp").write_bytes(b"vid")  # half a copy
    deliver(sink(tmp_path), spooled_ctx(tmp_path))
    assert sorted(p.name for p in folder.iterdir()) == ["clip.mp4", "event.json"]


def test_a_failed_write_leaves_no_final_name_and_no_temporary(tmp_path: Path) -> None:
    ctx = spooled_ctx(tmp_path)
    ctx.files[0].local_path.unlink()  # the spool file vanished
    with pytest.raises(Retryable):
        deliver(sink(tmp_path), ctx)
    folder = tmp_path / "files" / "reframe" / "req-1"
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("request_id", ["../../etc", "../../../../tmp/x", "..", "/abs/path"])
def test_a_hostile_request_id_stays_inside_root(tmp_path: Path, request_id: str) -> None:
    deliver(sink(tmp_path), spooled_ctx(tmp_path, request_id=request_id))
    root = (tmp_path / "files").resolve()
    written = [p for p in tmp_path.rglob("*") if p.name in ("clip.mp4", "event.json")]
    assert len(written) == 2
    assert all(p.resolve().parent.parent.parent == root for p in written)


def test_a_file_name_with_a_directory_is_refused(tmp_path: Path) -> None:
    ctx = spooled_ctx(tmp_path, files={"../escape.mp4": b"x"})
    with pytest.raises(Permanent):
        deliver(sink(tmp_path), ctx)
    assert not (tmp_path / "files" / "reframe" / "escape.mp4").exists()


def test_a_relative_root_resolves_against_the_config_folder(tmp_path: Path) -> None:
    s = sink(tmp_path, root="data/out")
    assert s.root == (tmp_path / "data" / "out").resolve()
    deliver(s, spooled_ctx(tmp_path))
    assert (tmp_path / "data" / "out" / "reframe" / "req-1" / "clip.mp4").is_file()


def test_an_absolute_root_is_used_as_is(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    assert sink(tmp_path / "conf", root=str(elsewhere)).root == elsewhere.resolve()


def test_an_unknown_option_names_sinks_name_option(tmp_path: Path) -> None:
    with pytest.raises(OptionError) as err:
        sink(tmp_path, "archive_disk", rooot="x")
    assert err.value.key == "[sinks.archive_disk].rooot"


def test_a_mistyped_option_names_sinks_name_option(tmp_path: Path) -> None:
    with pytest.raises(OptionError) as err:
        sink(tmp_path, fsync="yes")
    assert err.value.key == "[sinks.local].fsync"


def test_a_source_on_the_same_file_system_is_hard_linked(tmp_path: Path) -> None:
    ctx = spooled_ctx(tmp_path)
    deliver(sink(tmp_path), ctx)
    final = tmp_path / "files" / "reframe" / "req-1" / "clip.mp4"
    assert os.stat(final).st_ino == os.stat(ctx.files[0].local_path).st_ino


def test_the_final_file_survives_the_sources_deletion(tmp_path: Path) -> None:
    ctx = spooled_ctx(tmp_path, files={"clip.mp4": b"video bytes"})
    deliver(sink(tmp_path), ctx)
    ctx.files[0].local_path.unlink()
    final = tmp_path / "files" / "reframe" / "req-1" / "clip.mp4"
    assert final.read_bytes() == b"video bytes"


def test_a_source_on_another_file_system_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr("falhook_sinks.disk.os.link", cross_device)
    ctx = spooled_ctx(tmp_path, files={"clip.mp4": b"video bytes"})
    deliver(sink(tmp_path), ctx)
    final = tmp_path / "files" / "reframe" / "req-1" / "clip.mp4"
    assert final.read_bytes() == b"video bytes"
    assert os.stat(final).st_ino != os.stat(ctx.files[0].local_path).st_ino


def test_request_ids_that_sanitise_alike_get_their_own_folders(tmp_path: Path) -> None:
    """`a/b` and `a?b`, `.` and `..`, two long ids cut alike: before, the second event replaced
    the first's files and event.json."""
    ids = ["a/b", "a?b", "a_b", ".", "..", "x" * 200, "x" * 200 + "y"]
    s = sink(tmp_path)
    for rid in ids:
        deliver(s, spooled_ctx(tmp_path, request_id=rid, files={"clip.mp4": rid.encode()}))
    route_dir = tmp_path / "files" / "reframe"
    folders = sorted(p for p in route_dir.iterdir() if p.is_dir())
    assert len(folders) == len(ids)
    for rid in ids:
        folder = route_dir / id_component(rid)
        assert (folder / "clip.mp4").read_bytes() == rid.encode()
        assert json.loads((folder / "event.json").read_bytes())["request_id"] == rid
