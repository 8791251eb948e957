"""One route, four sinks, through the app and its worker in this process: disk + S3 (moto on
loopback) + Slack (a loopback stand-in answering as Slack's documented API) + a custom Python
handler (`examples/falhook_example`). Each file is downloaded once for all sinks, every sink
delivers, Slack runs after S3 (`after = ["archive"]`) and links the stored copy, and a replay
posts nothing twice unless forced (`falhook events replay` itself: tests/process/test_cli.py)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook.runtime import make_sinks
from falhook.sinks import DeliveryContext, Sink
from falhook.testing import FalSigner
from tests.support.falhook_server import ROOT
from tests.support.fileserver import FileServer, generated_sha256
from tests.support.inprocess import InProcess, InProcessFactory
from tests.support.moto import BUCKET, MotoServer, object_sha256
from tests.support.slack_stub import SlackStub, block_problems

MIB = 1024 * 1024
VIDEO_SIZE = 6 * MIB  # over part_size: a multipart upload
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
LINK = re.compile(r"\*<([^|>]+)\|([^>]+)>\*")
ROUTE = ["local", "archive", "team", "manifest"]
# As before: these are the sinks' promises; the worker's, on each store, are test_worker.py's.
pytestmark = pytest.mark.one_store("the sinks of one route, not the store")


@pytest.fixture
def aws_and_examples(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's fake credentials, and `examples/` importable (the custom handler's package)."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))


class Journaled(Sink):
    """A built sink, unchanged, whose attempts are written to a shared journal."""

    def __init__(self, name: str, inner: Sink, journal: list[tuple[str, str]]) -> None:
        self.name, self.inner, self.journal = name, inner, journal
        self.keeps_files = inner.keeps_files

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any] | None:
        self.journal.append(("start", self.name))
        try:
            return await self.inner.deliver(ctx)
        finally:
            self.journal.append(("end", self.name))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def start_falhook(
    inprocess: InProcessFactory,
    sinks: dict[str, Any],
    route: list[str],
    journal: list[tuple[str, str]] | None = None,
    **delivery: Any,
) -> InProcess:
    """The app on route `reframe` with these sinks (the real ones, journaled if asked)."""
    app = inprocess.build(sinks=sinks, routes={"reframe": {"sinks": route}}, delivery=delivery)
    built = make_sinks(app.settings)
    if journal is not None:
        built = {name: Journaled(name, sink, journal) for name, sink in built.items()}
    return await app.start(sinks=built)


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


def file_links(post: dict[str, Any]) -> dict[str, str]:
    """{label: url} of the file lines of a posted Slack message."""
    links = {}
    for block in post["blocks"]:
        if block["type"] == "section" and "text" in block:
            for url, label in LINK.findall(block["text"]["text"]):
                links[label] = url
    return links


@pytest.mark.usefixtures("aws_and_examples")
async def test_disk_s3_slack_and_a_custom_handler_on_one_route(
    tmp_path: Path,
    inprocess: InProcessFactory,
    signer: FalSigner,
    files: FileServer,
    moto: MotoServer,
    s3: Any,
    slack: SlackStub,
) -> None:
    journal: list[tuple[str, str]] = []
    fh = await start_falhook(inprocess, four_sinks(tmp_path, moto, slack), ROUTE, journal)
    rid = await fh.send(signer, two_files(files), route="reframe")
    event = await fh.wait_state(rid, "delivered", timeout=120)

    # Every sink delivered, at the first attempt.
    assert {name: (d["state"], d["attempts"]) for name, d in event["deliveries"].items()} == {
        name: ("delivered", 1) for name in ROUTE
    }
    # Each file was fetched once, for all four sinks.
    assert files.hits("/out/clip.mp4") == 1
    assert files.hits("/out/frame.png") == 1

    # Disk: both files, byte-identical, and event.json.
    folder = fh.event_dir("reframe", rid)
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
    # output; the journal shows the order too).
    assert journal.index(("end", "archive")) < journal.index(("start", "team"))

    # The custom handler wrote its manifest line.
    manifest = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in manifest] == [rid]

    # A replay: every sink runs again, nothing is duplicated (no second Slack post, no second
    # upload, one manifest line, one copy on disk).
    meta = s3.head_object(Bucket=BUCKET, Key=video_key)["Metadata"]
    s3.copy_object(  # mark the stored object in place: an upload would drop the mark
        Bucket=BUCKET,
        Key=video_key,
        CopySource={"Bucket": BUCKET, "Key": video_key},
        Metadata={**meta, "mark": "first"},
        MetadataDirective="REPLACE",
        ContentType="video/mp4",
    )
    assert await fh.store.replay(rid) == len(ROUTE)
    event = await fh.wait_state(rid, "delivered")
    assert all(d["attempts"] == 1 for d in event["deliveries"].values())
    assert sorted(name for step, name in journal if step == "end") == sorted(ROUTE * 2)
    assert len(slack.posts()) == 1
    assert s3.head_object(Bucket=BUCKET, Key=video_key)["Metadata"]["mark"] == "first"
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["clip.mp4", "event.json", "images_0.png"]

    # Forced, Slack posts again (and still links the S3 copy kept from S3's delivery).
    assert await fh.store.replay(rid, "team", force=True) == 1
    await fh.wait_state(rid, "delivered")
    posts = slack.posts()
    assert len(posts) == 2
    assert file_links(posts[1].json)["clip.mp4"].startswith(f"{moto.url}/{BUCKET}/{video_key}?")


@pytest.mark.usefixtures("aws_and_examples")
async def test_s3_down_then_back_delivers_and_slack_waits_for_it(
    tmp_path: Path,
    inprocess: InProcessFactory,
    signer: FalSigner,
    files: FileServer,
    moto: MotoServer,
    s3: Any,
    slack: SlackStub,
) -> None:
    sinks = four_sinks(tmp_path, moto, slack)
    fh = await start_falhook(inprocess, sinks, ["archive", "team"], backoff_max=1.0)
    moto.stop()  # connection refused until started again
    try:
        rid = await fh.send(signer, two_files(files), route="reframe")
        event = await fh.wait_event(
            rid, lambda doc: doc["deliveries"]["archive"]["attempts"] >= 2, what="S3 retries"
        )
        assert event["deliveries"]["archive"]["state"] in ("retrying", "delivering")
        assert BUCKET in (event["deliveries"]["archive"]["last_error"] or "")
        assert slack.posts() == []  # Slack waits for S3
    finally:
        moto.start()  # same port, same bucket
    event = await fh.wait_state(rid, "delivered", timeout=120)
    assert event["deliveries"]["archive"]["attempts"] >= 3
    # Waiting for S3 spent none of Slack's attempts: it was tried once, when S3 had delivered.
    assert event["deliveries"]["team"]["attempts"] == 1
    [post] = slack.posts()
    video_key = f"fal/reframe/{event['received_at'][:10]}/{rid}/clip.mp4"
    assert file_links(post.json)["clip.mp4"].startswith(f"{moto.url}/{BUCKET}/{video_key}?")
    assert object_sha256(s3, video_key) == generated_sha256(VIDEO_SIZE)


async def test_slack_429_retry_after_is_honoured_by_the_worker(
    inprocess: InProcessFactory, signer: FalSigner, slack: SlackStub
) -> None:
    sinks = {"team": {"type": "slack", "webhook_url": slack.webhook_url}}
    # backoff_max caps Retry-After too: here it is above what Slack asks for.
    fh = await start_falhook(inprocess, sinks, ["team"], backoff_max=5.0)
    slack.fail_next(429, "rate_limited", Retry_After="1")
    rid = await fh.send(signer, {"text": "no files"}, route="reframe")
    event = await fh.wait_state(rid, "delivered")
    assert event["deliveries"]["team"]["attempts"] == 2
    refused, accepted = slack.posts()
    assert refused.json == accepted.json
    # Without Retry-After the backoff here is 0.025-0.05 s; Slack asked for 1 s, and the worker
    # must not come back sooner (lower bound only: later is always allowed).
    assert accepted.at - refused.at >= 0.9
