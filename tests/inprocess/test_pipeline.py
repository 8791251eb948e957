"""From webhook to file on disk, through the app and its worker in this process, a real file
server and the disk sink: the delivery promises of the contract."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path

import pytest

from falhook.testing import FalSigner, webhook_body
from tests.support.fileserver import FileServer
from tests.support.inprocess import InProcess, InProcessFactory


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
async def fh(inprocess: InProcessFactory) -> InProcess:
    return await inprocess()


async def test_a_video_lands_on_disk_with_its_event_json(
    fh: InProcess, signer: FalSigner, files: FileServer
) -> None:
    data = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 400
    files.add("/out/video.mp4", data=data, content_type="video/mp4")
    payload = {
        "video": {
            "url": files.url("/out/video.mp4"),
            "content_type": "video/mp4",
            "file_name": "reframed.mp4",
            "file_size": len(data),
        },
    }
    rid = await fh.send(signer, payload, route="reframe")
    event = await fh.wait_state(rid, "delivered")
    folder = fh.event_dir("reframe", rid)
    assert (folder / "reframed.mp4").read_bytes() == data
    on_disk = json.loads((folder / "event.json").read_text())
    assert on_disk["request_id"] == rid and on_disk["payload"] == payload
    [f] = event["files"]
    assert f["path"] == "video" and f["size"] == len(data)
    assert f["sha256"] == hashlib.sha256(data).hexdigest()
    delivery = event["deliveries"]["local"]
    history = delivery.pop("history")
    assert delivery == {
        "state": "delivered",
        "attempts": 1,
        "last_error": None,
        "next_attempt_at": None,
    }
    assert [(h["outcome"], h["error"]) for h in history] == [("delivered", None)]


async def test_files_anywhere_in_the_payload_are_delivered(
    fh: InProcess, signer: FalSigner, files: FileServer
) -> None:
    files.add("/a.png", data=b"png-a", content_type="image/png")
    files.add("/b.png", data=b"png-b", content_type="image/png")
    payload = {
        "images": [
            {"url": files.url("/a.png"), "content_type": "image/png"},
            {"url": files.url("/b.png"), "content_type": "image/png"},
        ],
        "thumb": {"url": "data:text/plain;base64,aGVsbG8=", "file_name": "t.txt"},
    }
    rid = await fh.send(signer, payload)
    await fh.wait_state(rid, "delivered")
    folder = fh.event_dir("default", rid)
    assert (folder / "images_0.png").read_bytes() == b"png-a"
    assert (folder / "images_1.png").read_bytes() == b"png-b"
    assert (folder / "t.txt").read_bytes() == b"hello"


async def test_the_same_webhook_five_times_at_once_gives_one_event_and_one_file(
    fh: InProcess, signer: FalSigner, files: FileServer
) -> None:
    files.add("/v.mp4", data=b"v" * 100_000, content_type="video/mp4")
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/v.mp4")}})
    headers = signer.headers(body, rid)
    answers = await asyncio.gather(*(fh.post(body, headers) for _ in range(5)))
    assert sorted(r.json()["status"] for r in answers) == ["accepted"] + ["duplicate"] * 4
    await fh.wait_state(rid, "delivered")
    assert [p.name for p in all_files(fh.event_dir("default", rid))] == [
        "event.json",
        "video.mp4",  # no file_name: the JSON path plus an extension from the type
    ]
    assert files.hits("/v.mp4") == 1


async def test_error_and_payload_error_events_are_delivered_without_files(
    fh: InProcess, signer: FalSigner
) -> None:
    detail = [{"loc": ["body", "video_url"], "msg": "field required", "type": "value_error"}]
    err = await fh.send(signer, {"detail": detail}, status="ERROR", error="Invalid input")
    perr = await fh.send(signer, None, payload_error="Output could not be serialised")
    for rid in (err, perr):
        event = await fh.wait_state(rid, "delivered")
        assert event["files"] == []
        assert [p.name for p in all_files(fh.event_dir("default", rid))] == ["event.json"]
    error_event = json.loads((fh.event_dir("default", err) / "event.json").read_text())
    assert error_event["fal_status"] == "ERROR" and error_event["error"] == "Invalid input"
    assert error_event["payload"] == {"detail": detail}
    assert (await fh.event(perr))["payload_error"] == "Output could not be serialised"  # type: ignore[index]


async def test_a_file_server_failing_three_times_then_succeeding_ends_delivered(
    fh: InProcess, signer: FalSigner, files: FileServer
) -> None:
    files.add("/flaky.mp4", data=b"f" * 5000, fail_times=3, fail_status=503)
    rid = await fh.send(signer, {"video": {"url": files.url("/flaky.mp4")}})
    event = await fh.wait_state(rid, "delivered")
    assert event["deliveries"]["local"]["attempts"] == 4
    assert files.hits("/flaky.mp4") == 4
    assert (fh.event_dir("default", rid) / "video.mp4").read_bytes() == b"f" * 5000


async def test_a_lying_content_length_never_leaves_a_final_file(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer
) -> None:
    fh = await inprocess(delivery={"max_attempts": 3})
    files.add("/short.mp4", data=b"s" * 50_000, short_by=10_000, content_type="video/mp4")
    rid = await fh.send(signer, {"video": {"url": files.url("/short.mp4"), "file_name": "s.mp4"}})
    event = await fh.wait_state(rid, "dead")
    assert event["deliveries"]["local"]["attempts"] == 3
    assert "short" in event["deliveries"]["local"]["last_error"].lower()
    assert all_files(fh.event_dir("default", rid)) == []
    assert all_files(fh.settings.spool_path) == []


async def test_a_private_address_is_refused_and_the_event_says_why(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer
) -> None:
    fh = await inprocess(downloads={"allow_private_hosts": False})
    files.add("/internal.mp4", data=b"secret")
    rid = await fh.send(signer, {"video": {"url": files.url("/internal.mp4")}})
    event = await fh.wait_state(rid, "dead")
    assert "127.0.0.1" in event["deliveries"]["local"]["last_error"]
    assert event["deliveries"]["local"]["attempts"] == 1  # permanent: dead at once
    assert files.hits("/internal.mp4") == 0
    dead = await fh.store.list_events(state="dead")
    assert [e.request_id for e in dead] == [rid]


@pytest.mark.one_store("the disk sink's naming, not the store")
async def test_a_traversing_file_name_stays_inside_root(
    fh: InProcess, signer: FalSigner, files: FileServer
) -> None:
    files.add("/x", data=b"payload")
    rid = await fh.send(signer, {"video": {"url": files.url("/x"), "file_name": "../../x"}})
    await fh.wait_state(rid, "delivered")
    root = fh.sink_root()
    assert (fh.event_dir("default", rid) / "x").read_bytes() == b"payload"
    assert all(root in p.parents for p in all_files(root))
    assert not (root.parent / "x").exists() and not (root / "x").exists()


async def test_a_malformed_file_is_recorded_and_the_rest_delivered(
    fh: InProcess, signer: FalSigner, files: FileServer
) -> None:
    files.add("/ok.png", data=b"ok", content_type="image/png")
    payload = {"good": {"url": files.url("/ok.png")}, "bad": {"url": "", "file_size": -3}}
    rid = await fh.send(signer, payload)
    event = await fh.wait_state(rid, "delivered")
    by_path = {f["path"]: f for f in event["files"]}
    assert by_path["bad"]["error"].startswith("malformed File")
    assert by_path["good"]["sha256"] == hashlib.sha256(b"ok").hexdigest()


async def test_a_dead_event_is_replayed_and_delivered(
    fh: InProcess, signer: FalSigner, files: FileServer
) -> None:
    files.add("/gone.mp4", data=b"late", status=404)
    rid = await fh.send(signer, {"video": {"url": files.url("/gone.mp4"), "file_name": "g.mp4"}})
    assert "404" in (await fh.wait_state(rid, "dead"))["deliveries"]["local"]["last_error"]
    files.add("/gone.mp4", data=b"late")  # fal's file is back
    assert await fh.store.replay(rid) == 1  # what `falhook events replay` does (test_cli.py)
    event = await fh.wait_state(rid, "delivered")
    assert event["deliveries"]["local"]["attempts"] == 1
    assert (fh.event_dir("default", rid) / "g.mp4").read_bytes() == b"late"
