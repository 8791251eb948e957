"""The media extra (falhook[media], PyAV): each downloaded video's facts and a poster frame
on the event, delivered like its other files; Slack previews the poster once S3 holds it;
without the extra (or for a file FFmpeg cannot read) delivery goes on unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from falhook.delivery import media
from falhook.testing import FalSigner
from falhook_sinks.slack_blocks import build_message
from tests.support.fileserver import FileServer
from tests.support.inprocess import InProcessFactory
from tests.support.media import tiny_mp4
from tests.support.moto import BUCKET, MotoServer
from tests.support.sink_ctx import local_file, make_ctx


def test_a_video_is_probed_and_its_first_frame_made_a_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(tiny_mp4(seconds=2.0, width=96, height=64))
    facts, jpeg = media.probe(path)
    assert facts == {"duration": 2.0, "width": 96, "height": 64, "codec": "h264"}
    assert jpeg is not None and jpeg[:3] == b"\xff\xd8\xff" and jpeg[-2:] == b"\xff\xd9"


async def test_a_delivered_video_carries_its_facts_and_a_poster_file(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer
) -> None:
    fh = await inprocess()
    files.add("/clip.mp4", data=tiny_mp4(seconds=1.0), content_type="video/mp4")
    files.add("/broken.mp4", data=b"not a video at all" * 10, content_type="video/mp4")
    files.add("/still.png", data=b"\x89PNG fake", content_type="image/png")
    payload = {
        "video": {"url": files.url("/clip.mp4"), "file_name": "clip.mp4"},
        "broken": {"url": files.url("/broken.mp4")},
        "image": {"url": files.url("/still.png")},
    }
    rid = await fh.send(signer, payload)
    doc = await fh.wait_state(rid, "delivered")
    by_path = {f["path"]: f for f in doc["files"]}
    assert by_path["video"]["media"] == {"duration": 1.0, "width": 64, "height": 48,
                                         "codec": "h264"}  # fmt: skip
    poster = by_path["video.poster"]
    assert poster["poster_of"] == "video" and poster["content_type"] == "image/jpeg"
    assert poster["name"] == "clip.poster.jpg" and poster["size"] > 100
    assert "media" not in by_path["broken"] and "broken.poster" not in by_path
    assert "media" not in by_path["image"]
    written = fh.event_dir("default", rid) / "clip.poster.jpg"
    assert written.read_bytes()[:3] == b"\xff\xd8\xff"


async def test_without_the_extra_nothing_is_added(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, monkeypatch: Any
) -> None:
    monkeypatch.setattr(media, "available", lambda: False)
    fh = await inprocess()
    files.add("/clip.mp4", data=tiny_mp4(), content_type="video/mp4")
    rid = await fh.send(signer, {"video": {"url": files.url("/clip.mp4")}})
    doc = await fh.wait_state(rid, "delivered")
    assert [f["path"] for f in doc["files"]] == ["video"] and "media" not in doc["files"][0]


@pytest.mark.parametrize("stored", [True, False])
def test_slack_previews_the_poster_only_once_s3_holds_it(tmp_path: Path, stored: bool) -> None:
    video = local_file(tmp_path, "video", "clip.mp4", tiny_mp4(), "video/mp4")
    poster = local_file(tmp_path, "video.poster", "clip.poster.jpg", b"\xff\xd8\xff",
                        "image/jpeg", poster_of="video")  # fmt: skip
    poster = poster.__class__(**{**poster.__dict__, "url": ""})  # no fal URL: made here
    objects = {"video.poster": {"url": "https://bucket.s3.example/clip.poster.jpg?sig=1"}}
    outputs = {"archive": {"objects": objects}} if stored else {}
    message = build_message(make_ctx([video, poster], outputs=outputs))
    images = [b for b in message["blocks"] if b["type"] == "image"]
    lines = [b["text"]["text"] for b in message["blocks"] if b.get("text", {}).get("type")]
    assert not any("clip.poster.jpg" in line for line in lines)  # not listed as a file
    if stored:
        assert [i["image_url"] for i in images] == [objects["video.poster"]["url"]]
    else:
        assert images == []


async def test_the_s3_sink_that_streamed_a_video_also_stores_its_poster(
    inprocess: InProcessFactory,
    signer: FalSigner,
    files: FileServer,
    moto: MotoServer,
    s3: Any,
    aws_env: None,
) -> None:
    """The poster exists only once the video is whole, after the S3 sink streamed the video:
    the sink then delivers the whole set in the same attempt, and its marker lists both."""
    sink = {"type": "s3", "bucket": BUCKET, "endpoint_url": moto.url, "region": "us-east-1"}
    fh = await inprocess(sinks={"archive": sink}, routes={"default": {"sinks": ["archive"]}})
    files.add("/clip.mp4", data=tiny_mp4(seconds=1.0), content_type="video/mp4")
    rid = await fh.send(signer, {"video": {"url": files.url("/clip.mp4"), "file_name": "clip.mp4"}})
    doc = await fh.wait_state(rid, "delivered")
    assert doc["deliveries"]["archive"]["attempts"] == 1
    assert files.hits("/clip.mp4") == 1
    prefix = f"fal/default/{rid}/"
    marker = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "event.json")["Body"].read())
    assert set(marker["objects"]) == {"video", "video.poster"}
    poster = s3.get_object(Bucket=BUCKET, Key=prefix + "clip.poster.jpg")["Body"].read()
    assert poster[:3] == b"\xff\xd8\xff"


def test_a_file_that_only_claims_to_be_a_video_is_told_by_its_first_bytes(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Random bytes named .mp4 (fal's URLs before anyone looked) never reach FFmpeg: a read
    of their first bytes says they are no container it could read."""
    import os

    real, webm = tmp_path / "real.mp4", tmp_path / "w.webm"
    real.write_bytes(tiny_mp4(seconds=0.5))
    webm.write_bytes(b"\x1aE\xdf\xa3" + os.urandom(64))
    fake = local_file(tmp_path / "f", "video", "fake.mp4", os.urandom(64 * 1024), "video/mp4")
    assert media.looks_like_video(real) and media.looks_like_video(webm)
    assert fake.local_path is not None and not media.looks_like_video(fake.local_path)

    def never(path: Path) -> Any:
        raise AssertionError(f"probed {path}")

    monkeypatch.setattr(media, "probe", never)
    files = [fake]
    assert media.worth_probing(files) is False
    assert media.enrich(files, tmp_path) == files
