"""One route, four sinks, through a real `falhook serve`: disk + S3 (moto on loopback) + Slack
(a loopback stand-in answering as Slack's documented API) + a custom Python handler
(`examples/falhook_example`). Each file is downloaded once for all sinks, every sink delivers,
Slack runs after S3 (`after = ["archive"]`) and links the stored copy, and a replay through
`falhook events replay` posts nothing twice unless forced."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook.testing import FalSigner, JWKSServer, webhook_body
from tests.support.falhook_server import ROOT, Falhook, base_config, wait_for
from tests.support.fileserver import FileServer, generated_sha256
from tests.support.moto import AWS_ENV, BUCKET, MotoServer
from tests.support.slack_stub import SlackStub, block_problems

MIB = 1024 * 1024
VIDEO_SIZE = 6 * MIB  # over part_size: a multipart upload
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
LINK = re.compile(r"\*<([^|>]+)\|([^>]+)>\*")


@pytest.fixture
def slack() -> Iterator[SlackStub]:
    with SlackStub() as stub:
        yield stub


@pytest.fixture
def procs() -> Iterator[list[Falhook]]:
    made: list[Falhook] = []
    yield made
    for proc in made:
        proc.stop()


def start_falhook(
    tmp_path: Path, jwks: JWKSServer, procs: list[Falhook], sinks: dict[str, Any], route: list[str]
) -> Falhook:
    config = base_config(
        tmp_path,
        jwks.url,
        delivery={"backoff_initial": 0.2, "backoff_max": 10.0, "poll_interval": 0.2},
        sinks=sinks,
        routes={"reframe": {"sinks": route}},
    )
    pythonpath = os.pathsep.join(
        p for p in (str(ROOT / "examples"), os.environ.get("PYTHONPATH", "")) if p
    )
    fh = Falhook(tmp_path, config, env={**AWS_ENV, "PYTHONPATH": pythonpath})
    procs.append(fh)
    return fh.start()


def send(fh: Falhook, signer: FalSigner, payload: Any) -> str:
    rid, body = webhook_body(str(uuid.uuid4()), payload=payload)
    headers = signer.headers(body, rid)
    resp = httpx.post(fh.url("/webhooks/reframe"), content=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return rid


def four_sinks(tmp_path: Path, moto: MotoServer, slack: SlackStub) -> dict[str, Any]:
    return {
        "local": {"type": "disk", "root": str(tmp_path / "files")},
        "archive": {
            "type": "s3",
            "bucket": BUCKET,
            "endpoint_url": moto.url,
            "region": "us-east-1",
            "prefix": "fal/{route}/{date}/{request_id}/",
            "part_size": 5 * MIB,
            "connect_timeout": 2,
            "read_timeout": 30,
        },
        "team": {"type": "slack", "webhook_url": slack.webhook_url, "after": ["archive"]},
        "manifest": {
            "type": "python",
            "handler": "falhook_example.handler:record",
            "path": str(tmp_path / "manifest.jsonl"),
        },
    }


def two_files(files: FileServer) -> dict[str, Any]:
    files.add("/out/clip.mp4", size=VIDEO_SIZE, content_type="video/mp4")
    files.add("/out/frame.png", data=PNG, content_type="image/png")
    return {
        "video": {
            "url": files.url("/out/clip.mp4"),
            "content_type": "video/mp4",
            "file_name": "clip.mp4",
            "file_size": VIDEO_SIZE,
        },
        "images": [{"url": files.url("/out/frame.png"), "content_type": "image/png"}],
    }


def object_sha256(s3: Any, key: str) -> str:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(MIB), b""):
        digest.update(chunk)
    return digest.hexdigest()


def file_links(post: dict[str, Any]) -> dict[str, str]:
    """{label: url} of the file lines of a posted Slack message."""
    links = {}
    for block in post["blocks"]:
        if block["type"] == "section" and "text" in block:
            for url, label in LINK.findall(block["text"]["text"]):
                links[label] = url
    return links


def log_lines(fh: Falhook) -> list[dict[str, Any]]:
    lines = []
    for line in fh.logs().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def test_disk_s3_slack_and_a_custom_handler_on_one_route(
    tmp_path: Path,
    jwks: JWKSServer,
    signer: FalSigner,
    files: FileServer,
    moto: MotoServer,
    s3: Any,
    slack: SlackStub,
    procs: list[Falhook],
) -> None:
    sinks = four_sinks(tmp_path, moto, slack)
    fh = start_falhook(tmp_path, jwks, procs, sinks, ["local", "archive", "team", "manifest"])
    rid = send(fh, signer, two_files(files))
    event = fh.wait_state(rid, "delivered", timeout=120)

    # Every sink delivered, at the first attempt.
    assert {name: (d["state"], d["attempts"]) for name, d in event["deliveries"].items()} == {
        name: ("delivered", 1) for name in ("local", "archive", "team", "manifest")
    }
    # Each file was fetched once, for all four sinks.
    assert files.hits("/out/clip.mp4") == 1
    assert files.hits("/out/frame.png") == 1

    # Disk: both files, byte-identical, and event.json.
    folder = tmp_path / "files" / "reframe" / rid
    assert sorted(p.name for p in folder.iterdir()) == ["clip.mp4", "event.json", "images_0.png"]
    assert hashlib.sha256((folder / "clip.mp4").read_bytes()).hexdigest() == generated_sha256(
        VIDEO_SIZE
    )
    assert (folder / "images_0.png").read_bytes() == PNG

    # S3: both objects under the rendered prefix, with their type and metadata; event.json.
    date = event["received_at"][:10]
    prefix = f"fal/reframe/{date}/{rid}/"
    video_key, png_key = prefix + "clip.mp4", prefix + "images_0.png"
    head = s3.head_object(Bucket=BUCKET, Key=video_key)
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == VIDEO_SIZE
    assert head["Metadata"] == {
        "sha256": generated_sha256(VIDEO_SIZE),
        "request_id": rid,
        "route": "reframe",
        "path": "video",
    }
    assert object_sha256(s3, video_key) == generated_sha256(VIDEO_SIZE)
    assert s3.get_object(Bucket=BUCKET, Key=png_key)["Body"].read() == PNG
    stored_event = json.loads(
        s3.get_object(Bucket=BUCKET, Key=prefix + "event.json")["Body"].read()
    )
    assert stored_event["request_id"] == rid

    # Slack: one message, within Block Kit's limits, linking the S3 copies (presigned GETs on
    # the moto server), with the PNG previewed from its S3 copy.
    [post] = slack.posts()
    doc = post.json
    assert block_problems(doc, set()) is None
    assert doc["blocks"][0]["text"]["text"] == "fal request done · reframe"
    links = file_links(doc)
    assert set(links) == {"clip.mp4", "images_0.png"}
    for label, key in (("clip.mp4", video_key), ("images_0.png", png_key)):
        url = links[label]
        assert url.startswith(f"{moto.url}/{BUCKET}/{key}?"), url
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=" in url
    assert "stored copy" in str(doc["blocks"])
    assert hashlib.sha256(httpx.get(links["clip.mp4"]).content).hexdigest() == generated_sha256(
        VIDEO_SIZE
    )
    assert httpx.get(links["images_0.png"]).content == PNG
    [image] = [b for b in doc["blocks"] if b["type"] == "image"]
    assert image["image_url"] == links["images_0.png"]
    # Slack ran after S3 had stored everything (the links above could only come from S3's
    # output; the log shows the order too).
    messages = [line.get("event") for line in log_lines(fh) if line.get("request_id") == rid]
    stored = [i for i, m in enumerate(messages) if m == "s3 object stored"]
    posted = [i for i, m in enumerate(messages) if m == "slack message posted"]
    assert len(stored) == 2 and len(posted) == 1 and max(stored) < posted[0]

    # The custom handler wrote its manifest line.
    manifest = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in manifest] == [rid]

    # A replay through the command line: every sink runs again, nothing is duplicated (no
    # second Slack post, no second upload, one manifest line, one copy on disk).
    meta = s3.head_object(Bucket=BUCKET, Key=video_key)["Metadata"]
    s3.copy_object(  # mark the stored object in place: an upload would drop the mark
        Bucket=BUCKET,
        Key=video_key,
        CopySource={"Bucket": BUCKET, "Key": video_key},
        Metadata={**meta, "mark": "first"},
        MetadataDirective="REPLACE",
        ContentType="video/mp4",
    )
    out = fh.cli("events", "replay", rid, "--now")
    assert out.returncode == 0, out.stderr
    event = fh.wait_state(rid, "delivered")
    assert all(d["attempts"] == 1 for d in event["deliveries"].values())
    assert len(slack.posts()) == 1
    assert s3.head_object(Bucket=BUCKET, Key=video_key)["Metadata"]["mark"] == "first"
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["clip.mp4", "event.json", "images_0.png"]

    # Forced, Slack posts again (and still links the S3 copy kept from S3's delivery).
    out = fh.cli("events", "replay", rid, "--sink", "team", "--force", "--now")
    assert out.returncode == 0, out.stderr
    posts = slack.posts()
    assert len(posts) == 2
    assert file_links(posts[1].json)["clip.mp4"].startswith(f"{moto.url}/{BUCKET}/{video_key}?")


def test_s3_down_then_back_delivers_and_slack_waits_for_it(
    tmp_path: Path,
    jwks: JWKSServer,
    signer: FalSigner,
    files: FileServer,
    moto: MotoServer,
    s3: Any,
    slack: SlackStub,
    procs: list[Falhook],
) -> None:
    sinks = four_sinks(tmp_path, moto, slack)
    fh = start_falhook(tmp_path, jwks, procs, sinks, ["archive", "team"])
    moto.stop()  # connection refused until started again
    try:
        rid = send(fh, signer, two_files(files))

        def archive_retried() -> dict[str, Any] | None:
            ev = fh.event(rid)
            archive = ev["deliveries"]["archive"] if ev else None
            return ev if archive and archive["attempts"] >= 2 else None

        event = wait_for(archive_retried, timeout=60, interval=0.2, what="S3 retries")
        assert event["deliveries"]["archive"]["state"] in ("retrying", "delivering")
        assert BUCKET in (event["deliveries"]["archive"]["last_error"] or "")
        assert slack.posts() == []  # Slack waits for S3
    finally:
        moto.start()  # same port, same bucket
    event = fh.wait_state(rid, "delivered", timeout=120)
    assert event["deliveries"]["archive"]["attempts"] >= 3
    # Waiting for S3 spent none of Slack's attempts: it was tried once, when S3 had delivered.
    assert event["deliveries"]["team"]["attempts"] == 1
    [post] = slack.posts()
    video_key = f"fal/reframe/{event['received_at'][:10]}/{rid}/clip.mp4"
    assert file_links(post.json)["clip.mp4"].startswith(f"{moto.url}/{BUCKET}/{video_key}?")
    assert object_sha256(s3, video_key) == generated_sha256(VIDEO_SIZE)


def test_slack_429_retry_after_is_honoured_by_the_worker(
    tmp_path: Path,
    jwks: JWKSServer,
    signer: FalSigner,
    slack: SlackStub,
    procs: list[Falhook],
) -> None:
    sinks = {"team": {"type": "slack", "webhook_url": slack.webhook_url}}
    fh = start_falhook(tmp_path, jwks, procs, sinks, ["team"])
    slack.fail_next(429, "rate_limited", Retry_After="3")
    rid = send(fh, signer, {"text": "no files"})
    event = fh.wait_state(rid, "delivered", timeout=60)
    assert event["deliveries"]["team"]["attempts"] == 2
    refused, accepted = slack.posts()
    assert refused.json == accepted.json
    # Without Retry-After the backoff here is 0.1-0.2 s; Slack asked for 3 s, and the worker
    # must not come back sooner (lower bound only: later is always allowed).
    assert accepted.at - refused.at >= 2.9
