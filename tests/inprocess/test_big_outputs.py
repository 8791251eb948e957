"""Big outputs: the S3 sink uploads parts while the file is still arriving, and an event's
files are downloaded once, not once per attempt. In-process falhook (both stores where the
store matters), moto's S3 server, a real loopback file server."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from falhook.downloads.cache import sweep
from falhook.downloads.errors import FetchRetryable
from falhook.downloads.fetch import Fetcher
from falhook.downloads.ranged import RangePlan
from falhook.intake.envelope import FileRef
from falhook.sinks import ArrivingFile, DeliveryContext, Sink
from falhook.testing import FalSigner
from tests.support.fileserver import FileServer, generated_bytes, generated_sha256
from tests.support.inprocess import InProcess, InProcessFactory, sync_condition, wait_until
from tests.support.moto import BUCKET, MotoServer, object_sha256
from tests.support.paths import ROOT
from tests.support.slack_stub import SlackStub

MIB = 1024 * 1024


# S3 sinks read moto's credentials; hundreds of megabytes each: out of the fast loop.
pytestmark = [pytest.mark.usefixtures("aws_env"), pytest.mark.slow]


def s3_sink(moto: MotoServer, **options: Any) -> dict[str, Any]:
    return {
        "type": "s3",
        "bucket": BUCKET,
        "endpoint_url": moto.url,
        "region": "us-east-1",
        "part_size": 5 * MIB,
        "read_timeout": 30,
        **options,
    }


async def start(inprocess: InProcessFactory, sinks: dict[str, Any], **delivery: Any) -> InProcess:
    return await inprocess(
        sinks=sinks, routes={"reframe": {"sinks": list(sinks)}}, delivery=delivery
    )


def video(files: FileServer, path: str, size: int) -> dict[str, Any]:
    return {"video": {"url": files.url(path), "content_type": "video/mp4", "file_size": size}}


def keys_of(s3: Any) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def uploads_of(s3: Any) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    return uploads


# --- streaming to S3 -----------------------------------------------------------------------------


async def test_parts_are_uploaded_while_the_file_is_still_arriving(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, moto: MotoServer, s3: Any
) -> None:
    """The file server stops after 24 MiB of 40: by then S3 already holds parts of it, and no
    event.json (the commit marker comes last)."""
    size = 40 * MIB
    files.add("/big.mp4", size=size, content_type="video/mp4", pause_after=24 * MIB)
    fh = await start(inprocess, {"archive": s3_sink(moto)})
    try:
        rid = await fh.send(signer, video(files, "/big.mp4", size), route="reframe")

        def parts_uploaded() -> int:
            for upload in uploads_of(s3):
                parts = s3.list_parts(
                    Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]
                ).get("Parts", [])
                return len(parts)
            return 0

        assert await wait_until(sync_condition(lambda: parts_uploaded() >= 3), timeout=60)
        assert not any(k.endswith("event.json") for k in keys_of(s3))
    finally:
        files.resume("/big.mp4")
    event = await fh.wait_state(rid, "delivered", timeout=120)
    [key] = [k for k in keys_of(s3) if k.endswith(".mp4")]
    assert object_sha256(s3, key) == generated_sha256(size) == event["files"][0]["sha256"]
    assert uploads_of(s3) == []


@pytest.mark.one_store("the sink and the file server are what is tested")
async def test_a_200MB_file_streams_to_s3_byte_identical_with_its_marker(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, moto: MotoServer, s3: Any
) -> None:
    size = 200 * MIB
    files.add("/out/clip.mp4", size=size, content_type="video/mp4")
    fh = await start(inprocess, {"archive": s3_sink(moto, part_size=8 * MIB)})
    rid = await fh.send(signer, video(files, "/out/clip.mp4", size), route="reframe")
    event = await fh.wait_state(rid, "delivered", timeout=240)
    prefix = f"fal/reframe/{rid}/"
    head = s3.head_object(Bucket=BUCKET, Key=prefix + "video.mp4")
    assert head["ContentLength"] == size and head["ContentType"] == "video/mp4"
    assert head["Metadata"]["request_id"] == rid and head["Metadata"]["path"] == "video"
    assert object_sha256(s3, prefix + "video.mp4") == generated_sha256(size)
    marker = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "event.json")["Body"].read())
    assert marker["objects"] == {
        "video": {"key": prefix + "video.mp4", "size": size, "sha256": generated_sha256(size)}
    }
    assert marker["files"][0]["sha256"] == generated_sha256(size)
    assert event["deliveries"]["archive"]["state"] == "delivered"


async def test_a_download_cut_midway_leaves_no_upload_and_the_retry_completes(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, moto: MotoServer, s3: Any
) -> None:
    size = 30 * MIB
    files.add("/cut.mp4", size=size, content_type="video/mp4", pause_after=18 * MIB)
    fh = await start(inprocess, {"archive": s3_sink(moto)})
    rid = await fh.send(signer, video(files, "/cut.mp4", size), route="reframe")
    await wait_until(sync_condition(lambda: uploads_of(s3)), timeout=60, what="an upload")
    files.add("/cut.mp4", size=size, content_type="video/mp4")  # the retry is served whole
    files.drop_connections()  # the first download is cut in the middle
    files.resume("/cut.mp4")
    event = await fh.wait_state(rid, "delivered", timeout=120)
    archive = event["deliveries"]["archive"]
    assert archive["attempts"] == 2 and archive["history"][0]["outcome"] == "retry"
    assert uploads_of(s3) == []  # the interrupted one was aborted
    [key] = [k for k in keys_of(s3) if k.endswith(".mp4")]
    assert object_sha256(s3, key) == generated_sha256(size)


async def test_a_replay_uploads_nothing(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, moto: MotoServer, s3: Any
) -> None:
    size = 12 * MIB
    files.add("/r.mp4", size=size, content_type="video/mp4")
    fh = await start(inprocess, {"archive": s3_sink(moto)})
    rid = await fh.send(signer, video(files, "/r.mp4", size), route="reframe")
    await fh.wait_state(rid, "delivered", timeout=60)
    stored = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert await fh.store.replay(rid) == 1

    def replayed(e: dict[str, Any]) -> bool:
        archive = e["deliveries"]["archive"]
        return archive["state"] == "delivered" and len(archive["history"]) == 2

    await fh.wait_event(rid, replayed)
    again = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert again == stored
    view = await fh.store.get_event(rid)
    assert view is not None
    output = view.deliveries["archive"].output or {}
    assert output["objects"]["video"]["uploaded"] is False


# --- one download per event ----------------------------------------------------------------------


async def test_slack_failing_twice_then_succeeding_downloads_the_file_once(
    inprocess: InProcessFactory,
    signer: FalSigner,
    files: FileServer,
    moto: MotoServer,
    s3: Any,
    slack: SlackStub,
) -> None:
    files.add("/s.mp4", size=6 * MIB, content_type="video/mp4")
    slack.fail_next(500, "oops")
    slack.fail_next(500, "oops")
    sinks = {
        "archive": s3_sink(moto),
        "team": {"type": "slack", "webhook_url": slack.webhook_url, "after": ["archive"]},
    }
    fh = await start(inprocess, sinks)
    rid = await fh.send(signer, video(files, "/s.mp4", 6 * MIB), route="reframe")
    event = await fh.wait_state(rid, "delivered", timeout=60)
    assert event["deliveries"]["team"]["attempts"] == 3
    assert files.hits("/s.mp4") == 1


async def test_a_sink_retrying_reuses_the_files_kept_in_the_spool(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, tmp_path: Path
) -> None:
    """A disk sink that fails twice (its root is a file) reads the video downloaded by the
    first attempt; the spool keeps it only until the event is done."""
    files.add("/v.mp4", data=b"v" * 100_000, content_type="video/mp4")
    root = tmp_path / "files"
    fh = await start(inprocess, {"local": {"type": "disk", "root": str(root)}})
    root.rename(tmp_path / "moved")  # checked at start; now the sink's writes fail
    root.write_text("not a folder")
    rid = await fh.send(signer, video(files, "/v.mp4", 100_000), route="reframe")
    await fh.wait_event(rid, lambda e: e["deliveries"]["local"]["attempts"] >= 2)
    root.unlink()
    (tmp_path / "moved").rename(root)
    event = await fh.wait_state(rid, "delivered", timeout=60)
    assert files.hits("/v.mp4") == 1
    assert (fh.event_dir("reframe", rid) / "video.mp4").read_bytes() == b"v" * 100_000
    spool = Path(fh.settings.spool_path)
    assert await wait_until(sync_condition(lambda: not any(spool.iterdir())), timeout=10)
    assert event["deliveries"]["local"]["attempts"] >= 3


async def test_a_kept_file_that_changed_is_downloaded_again(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, tmp_path: Path
) -> None:
    files.add("/c.mp4", data=b"c" * 50_000, content_type="video/mp4")
    root = tmp_path / "files"
    # The retry an hour away: no attempt reads the spool while the test changes it (a retry
    # that checked the kept file just before the change would link the changed bytes).
    sinks = {"local": {"type": "disk", "root": str(root)}}
    fh = await start(inprocess, sinks, backoff_initial=3600, backoff_max=3600)
    root.rename(tmp_path / "moved")
    root.write_text("not a folder")
    rid = await fh.send(signer, video(files, "/c.mp4", 50_000), route="reframe")
    await fh.wait_event(rid, lambda e: e["deliveries"]["local"]["state"] == "retrying")
    kept = list(Path(fh.settings.spool_path).rglob("dl-*"))
    assert kept, "the first attempt's download was not kept in the spool"
    for file in kept:
        file.write_bytes(b"x" * 50_000)  # same size, other bytes: the sha256 check sees it
    root.unlink()
    (tmp_path / "moved").rename(root)
    assert await fh.store.replay(rid, "local") == 1  # due now
    await fh.wait_state(rid, "delivered", timeout=60)
    assert files.hits("/c.mp4") == 2
    assert (fh.event_dir("reframe", rid) / "video.mp4").read_bytes() == b"c" * 50_000


async def test_a_route_of_sinks_that_only_link_files_downloads_nothing(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, slack: SlackStub
) -> None:
    files.add("/l.mp4", data=b"l" * 1000, content_type="video/mp4")
    fh = await start(inprocess, {"team": {"type": "slack", "webhook_url": slack.webhook_url}})
    rid = await fh.send(signer, video(files, "/l.mp4", 1000), route="reframe")
    await fh.wait_state(rid, "delivered")
    assert files.hits("/l.mp4") == 0
    [post] = slack.posts()
    assert files.url("/l.mp4") in json.dumps(post.json)


# --- the spool's bounds -------------------------------------------------------------------------


def kept(root: Path, name: str, size: int, age: float) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "dl-1").write_bytes(os.urandom(size))
    then = time.time() - age
    os.utime(folder, (then, then))
    return folder


def test_the_spool_sweep_removes_old_folders_then_the_least_recently_used(tmp_path: Path) -> None:
    old = kept(tmp_path, "old", 10, age=3600)
    a = kept(tmp_path, "a", 1000, age=30)
    b = kept(tmp_path, "b", 1000, age=20)
    busy = kept(tmp_path, "busy", 1000, age=4000)
    c = kept(tmp_path, "c", 1000, age=10)
    removed = sweep(tmp_path, max_bytes=2500, max_age=600, in_use={"busy"})
    assert removed == 2
    assert not old.exists() and not a.exists()  # too old; then the least recently used
    assert b.exists() and c.exists() and busy.exists()


def test_a_sweep_within_bounds_removes_nothing(tmp_path: Path) -> None:
    kept(tmp_path, "x", 100, age=1)
    assert sweep(tmp_path, max_bytes=10_000, max_age=600) == 0
    assert sweep(tmp_path / "missing", max_bytes=1, max_age=1) == 0


def test_generated_bytes_are_what_the_server_sends() -> None:
    assert sum(len(b) for b in generated_bytes(3 * MIB)) == 3 * MIB


# --- parallel ranges ----------------------------------------------------------------------------


def ranged_fetcher(**plan: int) -> Fetcher:
    values = {"threshold": 4 * MIB, "size": 1 * MIB, "parts": 3, **plan}
    return Fetcher(
        max_file_bytes=1 << 30, timeout=10, allow_private_hosts=True, ranges=RangePlan(**values)
    )


async def test_a_server_that_honours_ranges_gets_several_at_once(
    files: FileServer, tmp_path: Path
) -> None:
    size = 10 * MIB + 12345
    files.add("/r.bin", size=size, ranges="honour")
    f = ranged_fetcher()
    written: list[int] = []
    try:
        got = await f.fetch(
            FileRef("video", files.url("/r.bin")), tmp_path, on_written=written.append
        )
    finally:
        await f.aclose()
    assert got.size == size and got.sha256 == generated_sha256(size)
    assert hashlib.sha256(got.local_path.read_bytes()).hexdigest() == generated_sha256(size)
    asked = files.ranges_asked("/r.bin")
    assert len(asked) == 11 and asked[0] == "bytes=0-1048575"  # the first, then ten more
    assert files.connections >= 3  # parts on connections of their own, at once
    assert written == sorted(written) and written[-1] == size  # in place in order


async def test_a_server_that_ignores_ranges_gets_one_stream(
    files: FileServer, tmp_path: Path
) -> None:
    size = 6 * MIB
    files.add("/i.bin", size=size, ranges="ignore")
    f = ranged_fetcher()
    try:
        got = await f.fetch(FileRef("video", files.url("/i.bin")), tmp_path)
    finally:
        await f.aclose()
    assert got.sha256 == generated_sha256(size)
    assert files.hits("/i.bin") == 1 and files.ranges_asked("/i.bin") == ["bytes=0-1048575"]


@pytest.mark.parametrize("lie", ["lie_total", "short"])
async def test_a_server_that_lies_about_ranges_is_a_retryable_error(
    files: FileServer, tmp_path: Path, lie: str
) -> None:

    files.add("/l.bin", size=6 * MIB, ranges=lie)
    f = ranged_fetcher()
    try:
        with pytest.raises(FetchRetryable):
            await f.fetch(FileRef("video", files.url("/l.bin")), tmp_path)
    finally:
        await f.aclose()
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


async def test_a_small_file_of_known_size_is_asked_for_whole(
    files: FileServer, tmp_path: Path
) -> None:

    files.add("/s.bin", data=b"small", ranges="honour")
    f = ranged_fetcher()
    try:
        got = await f.fetch(FileRef("video", files.url("/s.bin"), file_size=5), tmp_path)
    finally:
        await f.aclose()
    assert got.local_path.read_bytes() == b"small" and files.ranges_asked("/s.bin") == []


async def test_a_file_of_unknown_size_that_fits_the_first_range_is_one_request(
    files: FileServer, tmp_path: Path
) -> None:

    files.add("/u.bin", data=b"u" * 1000, ranges="honour")
    f = ranged_fetcher()
    try:
        got = await f.fetch(FileRef("video", files.url("/u.bin")), tmp_path)
    finally:
        await f.aclose()
    assert got.local_path.read_bytes() == b"u" * 1000 and files.hits("/u.bin") == 1


@pytest.mark.one_store("the download and the sink are what is tested")
async def test_a_file_fetched_in_ranges_streams_to_s3_byte_identical(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer, moto: MotoServer, s3: Any
) -> None:
    size = 40 * MIB + 777
    files.add("/ranged.mp4", size=size, content_type="video/mp4", ranges="honour")
    fh = await inprocess(
        sinks={"archive": s3_sink(moto)},
        routes={"reframe": {"sinks": ["archive"]}},
        downloads={"range_threshold": 8 * MIB, "range_size": 4 * MIB, "range_parts": 3},
    )
    rid = await fh.send(signer, video(files, "/ranged.mp4", size), route="reframe")
    event = await fh.wait_state(rid, "delivered", timeout=120)
    assert len(files.ranges_asked("/ranged.mp4")) == 11
    [key] = [k for k in keys_of(s3) if k.endswith(".mp4")]
    assert object_sha256(s3, key) == generated_sha256(size) == event["files"][0]["sha256"]


# --- the streaming API, as docs/sinks.md shows it ----------------------------------------------

STREAMED: dict[str, tuple[bool, dict[str, str]]] = {}


def docs_checksummer() -> type[Sink]:
    """The `Checksummer` example of docs/sinks.md, run as written."""
    text = (ROOT / "docs" / "sinks.md").read_text()
    [block] = [b for b in text.split("```python\n")[1:] if "class Checksummer" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block.split("```")[0], "docs/sinks.md", "exec"), namespace)
    checksummer: type[Sink] = namespace["Checksummer"]
    return checksummer


class RecordingChecksummer(docs_checksummer()):  # type: ignore[misc]
    async def deliver_streaming(
        self, ctx: DeliveryContext, files: list[ArrivingFile]
    ) -> dict[str, Any]:
        arriving = not all(f.complete for f in files)
        out: dict[str, str] = await super().deliver_streaming(ctx, files)
        STREAMED[ctx.event.request_id] = (arriving, out)
        return out


async def test_the_docs_streaming_example_hashes_files_as_they_arrive(
    inprocess: InProcessFactory, signer: FalSigner, files: FileServer
) -> None:
    size = 20 * MIB
    files.add("/st.mp4", size=size, content_type="video/mp4", bytes_per_second=40 * MIB)
    handler = f"{__name__}:RecordingChecksummer"
    fh = await start(inprocess, {"sums": {"type": "python", "handler": handler}})
    rid = await fh.send(signer, video(files, "/st.mp4", size), route="reframe")
    await fh.wait_state(rid, "delivered", timeout=60)
    digest = hashlib.blake2b()
    for block in generated_bytes(size):
        digest.update(block)
    assert STREAMED[rid] == (True, {"video": digest.hexdigest()})
