"""From webhook to file on disk, through a real `falhook serve`, a real file server and the
disk sink: the delivery promises of the contract."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import Falhook
from tests.support.fileserver import FileServer


def send(fh: Falhook, signer: FalSigner, payload: Any, route: str = "default", **kw: Any) -> str:
    rid, body = webhook_body(str(uuid.uuid4()), payload=payload, **kw)
    resp = httpx.post(
        fh.url(f"/webhooks/{route}"), content=body, headers=signer.headers(body, rid), timeout=30
    )
    assert resp.status_code == 200, resp.text
    return rid


def event_dir(fh: Falhook, route: str, rid: str) -> Path:
    return Path(fh.config["sinks"]["local"]["root"]) / route / rid


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_a_video_lands_on_disk_with_its_event_json(
    falhook: Falhook, signer: FalSigner, files: FileServer
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
    rid = send(falhook, signer, payload, route="reframe")
    event = falhook.wait_state(rid, "delivered")
    folder = event_dir(falhook, "reframe", rid)
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


def test_files_anywhere_in_the_payload_are_delivered(
    falhook: Falhook, signer: FalSigner, files: FileServer
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
    rid = send(falhook, signer, payload)
    falhook.wait_state(rid, "delivered")
    folder = event_dir(falhook, "default", rid)
    assert (folder / "images_0.png").read_bytes() == b"png-a"
    assert (folder / "images_1.png").read_bytes() == b"png-b"
    assert (folder / "t.txt").read_bytes() == b"hello"


def test_the_same_webhook_five_times_at_once_gives_one_event_and_one_file(
    falhook: Falhook, signer: FalSigner, files: FileServer
) -> None:
    files.add("/v.mp4", data=b"v" * 100_000, content_type="video/mp4")
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/v.mp4")}})
    headers = signer.headers(body, rid)
    answers: list[str] = []
    barrier = threading.Barrier(5)

    def post() -> None:
        barrier.wait(timeout=10)
        r = httpx.post(falhook.url("/webhooks/default"), content=body, headers=headers, timeout=30)
        answers.append(r.json()["status"])

    threads = [threading.Thread(target=post) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(answers) == ["accepted"] + ["duplicate"] * 4
    falhook.wait_state(rid, "delivered")
    assert [p.name for p in all_files(event_dir(falhook, "default", rid))] == [
        "event.json",
        "video.mp4",  # no file_name: the JSON path plus an extension from the type
    ]
    assert files.hits("/v.mp4") == 1


def test_error_and_payload_error_events_are_delivered_without_files(
    falhook: Falhook, signer: FalSigner
) -> None:
    detail = [{"loc": ["body", "video_url"], "msg": "field required", "type": "value_error"}]
    err = send(falhook, signer, {"detail": detail}, status="ERROR", error="Invalid input")
    perr = send(falhook, signer, None, payload_error="Output could not be serialised")
    for rid in (err, perr):
        event = falhook.wait_state(rid, "delivered")
        assert event["files"] == []
        assert [p.name for p in all_files(event_dir(falhook, "default", rid))] == ["event.json"]
    error_event = json.loads((event_dir(falhook, "default", err) / "event.json").read_text())
    assert error_event["fal_status"] == "ERROR" and error_event["error"] == "Invalid input"
    assert error_event["payload"] == {"detail": detail}
    assert falhook.event(perr)["payload_error"] == "Output could not be serialised"  # type: ignore[index]


def test_a_file_server_failing_three_times_then_succeeding_ends_delivered(
    falhook: Falhook, signer: FalSigner, files: FileServer
) -> None:
    files.add("/flaky.mp4", data=b"f" * 5000, fail_times=3, fail_status=503)
    rid = send(falhook, signer, {"video": {"url": files.url("/flaky.mp4")}})
    event = falhook.wait_state(rid, "delivered")
    assert event["deliveries"]["local"]["attempts"] == 4
    assert files.hits("/flaky.mp4") == 4
    assert (event_dir(falhook, "default", rid) / "video.mp4").read_bytes() == b"f" * 5000


def test_a_lying_content_length_never_leaves_a_final_file(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, files: FileServer
) -> None:
    fh = falhook_factory(delivery={"max_attempts": 3}).start()
    files.add("/short.mp4", data=b"s" * 50_000, short_by=10_000, content_type="video/mp4")
    rid = send(fh, signer, {"video": {"url": files.url("/short.mp4"), "file_name": "s.mp4"}})
    event = fh.wait_state(rid, "dead")
    assert event["deliveries"]["local"]["attempts"] == 3
    assert "short" in event["deliveries"]["local"]["last_error"].lower()
    assert all_files(event_dir(fh, "default", rid)) == []
    spool = Path(fh.config["downloads"]["spool_dir"])
    assert all_files(spool) == []


def test_a_private_address_is_refused_and_the_event_says_why(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, files: FileServer
) -> None:
    fh = falhook_factory(downloads={"allow_private_hosts": False}).start()
    files.add("/internal.mp4", data=b"secret")
    rid = send(fh, signer, {"video": {"url": files.url("/internal.mp4")}})
    event = fh.wait_state(rid, "dead")
    assert "127.0.0.1" in event["deliveries"]["local"]["last_error"]
    assert event["deliveries"]["local"]["attempts"] == 1  # permanent: dead at once
    assert files.hits("/internal.mp4") == 0
    listed = json.loads(fh.cli("events", "list", "--state", "dead", "--json").stdout)["events"]
    assert [e["request_id"] for e in listed] == [rid]


@pytest.mark.one_store("the disk sink's naming, not the store")
def test_a_traversing_file_name_stays_inside_root(
    falhook: Falhook, signer: FalSigner, files: FileServer
) -> None:
    files.add("/x", data=b"payload")
    rid = send(falhook, signer, {"video": {"url": files.url("/x"), "file_name": "../../x"}})
    falhook.wait_state(rid, "delivered")
    root = Path(falhook.config["sinks"]["local"]["root"])
    assert (event_dir(falhook, "default", rid) / "x").read_bytes() == b"payload"
    assert all(root in p.parents for p in all_files(root))
    assert not (root.parent / "x").exists() and not (root / "x").exists()


def test_a_malformed_file_is_recorded_and_the_rest_delivered(
    falhook: Falhook, signer: FalSigner, files: FileServer
) -> None:
    files.add("/ok.png", data=b"ok", content_type="image/png")
    payload = {"good": {"url": files.url("/ok.png")}, "bad": {"url": "", "file_size": -3}}
    rid = send(falhook, signer, payload)
    event = falhook.wait_state(rid, "delivered")
    by_path = {f["path"]: f for f in event["files"]}
    assert by_path["bad"]["error"].startswith("malformed File")
    assert by_path["good"]["sha256"] == hashlib.sha256(b"ok").hexdigest()


def test_a_dead_event_is_replayed_and_delivered(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, files: FileServer
) -> None:
    fh = falhook_factory().start()
    files.add("/gone.mp4", data=b"late", status=404)
    rid = send(fh, signer, {"video": {"url": files.url("/gone.mp4"), "file_name": "g.mp4"}})
    assert "404" in fh.wait_state(rid, "dead")["deliveries"]["local"]["last_error"]
    files.add("/gone.mp4", data=b"late")  # fal's file is back
    done = fh.cli("events", "replay", rid)
    assert done.returncode == 0, done.stderr
    event = fh.wait_state(rid, "delivered")
    assert event["deliveries"]["local"]["attempts"] == 1
    assert (event_dir(fh, "default", rid) / "g.mp4").read_bytes() == b"late"


def test_replay_now_delivers_in_the_command_and_leaves_one_copy(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, files: FileServer
) -> None:
    fh = falhook_factory(command=("serve",)).start()
    files.add("/r.mp4", data=b"r" * 1000)
    rid = send(fh, signer, {"video": {"url": files.url("/r.mp4"), "file_name": "r.mp4"}})
    fh.wait_state(rid, "delivered")
    fh.stop()
    done = fh.cli("events", "replay", rid, "--sink", "local", "--now")
    assert done.returncode == 0, done.stderr
    assert "local: delivered" in done.stdout
    assert [p.name for p in all_files(event_dir(fh, "default", rid))] == ["event.json", "r.mp4"]
    assert files.hits("/r.mp4") == 2
