"""S3 sink against moto's standalone server on loopback: real S3 requests, real bytes."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook_sinks.base import OptionError, Permanent, Retryable, SinkEnv
from falhook_sinks.naming import id_component
from falhook_sinks.registry import construct
from falhook_sinks.s3 import FilePart, S3Sink
from tests.support.fileserver import generated_bytes
from tests.support.moto import BUCKET, MotoServer, object_sha256
from tests.support.sink_ctx import local_file, make_ctx

MIB = 1024 * 1024


pytestmark = pytest.mark.usefixtures("aws_env")  # S3 sinks read moto's credentials


def make_sink(moto: MotoServer, tmp_path: Path, **options: Any) -> S3Sink:
    opts = {"bucket": BUCKET, "endpoint_url": moto.url, **options}
    return construct(S3Sink, "archive", opts, SinkEnv(base_dir=tmp_path))


@pytest.mark.parametrize(
    "size", [5 * MIB, pytest.param(200 * MIB, marks=pytest.mark.slow)], ids=["5MB", "200MB"]
)
async def test_file_lands_byte_identical_with_metadata(
    tmp_path: Path, moto: MotoServer, s3: Any, size: int
) -> None:
    video = local_file(tmp_path / "spool", "video", "clip.mp4", generated_bytes(size), "video/mp4")
    sink = make_sink(moto, tmp_path)
    try:
        out = await sink.deliver(make_ctx([video]))
    finally:
        await sink.aclose()

    key = "fal/reframe/req-123/clip.mp4"
    assert out["objects"]["video"]["key"] == key
    assert out["objects"]["video"]["uploaded"] is True
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == size
    assert head["ContentType"] == "video/mp4"
    assert head["Metadata"] == {
        "sha256": video.sha256,
        "request_id": "req-123",
        "route": "reframe",
        "path": "video",
    }
    assert object_sha256(s3, key) == video.sha256
    # event.json beside the file, and nothing half-done left behind.
    event = s3.get_object(Bucket=BUCKET, Key="fal/reframe/req-123/event.json")
    assert event["ContentType"] == "application/json"
    assert b'"request_id": "req-123"' in event["Body"].read()
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


async def test_presigned_link_serves_the_object(tmp_path: Path, moto: MotoServer, s3: Any) -> None:
    image = local_file(tmp_path / "spool", "images[0]", "a.png", b"\x89PNG...", "image/png")
    sink = make_sink(moto, tmp_path, presign_seconds=600)
    try:
        out = await sink.deliver(make_ctx([image]))
    finally:
        await sink.aclose()
    url = out["objects"]["images[0]"]["url"]
    assert "X-Amz-Expires=600" in url
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == b"\x89PNG..."
    assert httpx.get(out["event_url"]).json()["request_id"] == "req-123"


async def test_redelivery_does_not_upload_again(tmp_path: Path, moto: MotoServer, s3: Any) -> None:
    video = local_file(tmp_path / "spool", "video", "v.mp4", generated_bytes(6 * MIB), "video/mp4")
    key = "fal/reframe/req-123/v.mp4"
    sink = make_sink(moto, tmp_path, part_size=5 * MIB)
    try:
        await sink.deliver(make_ctx([video]))
        # Mark the stored object in place (same sha256): a second upload would drop the mark.
        meta = s3.head_object(Bucket=BUCKET, Key=key)["Metadata"]
        s3.copy_object(
            Bucket=BUCKET,
            Key=key,
            CopySource={"Bucket": BUCKET, "Key": key},
            Metadata={**meta, "mark": "first"},
            MetadataDirective="REPLACE",
            ContentType="video/mp4",
        )
        again = await sink.deliver(make_ctx([video], attempt=2))
    finally:
        await sink.aclose()
    assert again["objects"]["video"]["uploaded"] is False
    assert s3.head_object(Bucket=BUCKET, Key=key)["Metadata"]["mark"] == "first"


async def test_changed_content_is_uploaded_again(tmp_path: Path, moto: MotoServer, s3: Any) -> None:
    sink = make_sink(moto, tmp_path)
    try:
        first = local_file(tmp_path / "a", "video", "v.mp4", b"one", "video/mp4")
        await sink.deliver(make_ctx([first]))
        second = local_file(tmp_path / "b", "video", "v.mp4", b"two!", "video/mp4")
        out = await sink.deliver(make_ctx([second]))
    finally:
        await sink.aclose()
    assert out["objects"]["video"]["uploaded"] is True
    body = s3.get_object(Bucket=BUCKET, Key="fal/reframe/req-123/v.mp4")["Body"].read()
    assert body == b"two!"


async def test_store_down_then_back_ends_delivered(
    tmp_path: Path, moto: MotoServer, s3: Any
) -> None:
    video = local_file(tmp_path / "spool", "video", "v.mp4", generated_bytes(6 * MIB), "video/mp4")
    sink = make_sink(moto, tmp_path, part_size=5 * MIB, connect_timeout=2, read_timeout=10)
    outcomes: list[str] = []
    try:
        moto.stop()
        for attempt in range(1, 6):  # the worker's retries, bounded
            try:
                out = await sink.deliver(make_ctx([video], attempt=attempt))
                outcomes.append("delivered")
                break
            except Retryable as exc:
                assert BUCKET in str(exc)
                outcomes.append("retry")
                if attempt == 2:
                    moto.start()  # same port, same buckets
    finally:
        await sink.aclose()
    assert outcomes == ["retry", "retry", "delivered"]
    assert out["objects"]["video"]["uploaded"] is True
    assert object_sha256(s3, "fal/reframe/req-123/v.mp4") == video.sha256


async def test_missing_bucket_is_permanent_and_named(tmp_path: Path, moto: MotoServer) -> None:
    video = local_file(tmp_path / "spool", "video", "v.mp4", b"data", "video/mp4")
    sink = make_sink(moto, tmp_path, bucket="no-such-bucket")
    try:
        with pytest.raises(Permanent) as err:
            await sink.deliver(make_ctx([video]))
    finally:
        await sink.aclose()
    assert "no-such-bucket" in str(err.value)
    assert "NoSuchBucket" in str(err.value)


async def test_failed_multipart_upload_is_aborted(
    tmp_path: Path, moto: MotoServer, s3: Any
) -> None:
    real = local_file(tmp_path / "spool", "video", "v.mp4", generated_bytes(7 * MIB), "video/mp4")
    # The spool file claims more bytes than it holds: a part read comes up short.
    liar = type(real)(**{**real.__dict__, "size": 12 * MIB})
    sink = make_sink(moto, tmp_path, part_size=5 * MIB)
    try:
        with pytest.raises(Retryable, match="shorter"):
            await sink.deliver(make_ctx([liar]))
    finally:
        await sink.aclose()
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


async def test_prefix_template_is_sanitised(tmp_path: Path, moto: MotoServer, s3: Any) -> None:
    f = local_file(tmp_path / "spool", "video", "v.mp4", b"x", "video/mp4")
    sink = make_sink(moto, tmp_path, prefix="/{date}/{endpoint}/{route}/{request_id}/")
    try:
        out = await sink.deliver(make_ctx([f], request_id="../../etc passwd"))
    finally:
        await sink.aclose()
    key = out["objects"]["video"]["key"]
    changed = id_component("../../etc passwd")
    assert changed.startswith("_.._etc_passwd~")
    assert key == f"2026-11-23/luma/agent/ray/v3.2/reframe/reframe/{changed}/v.mp4"
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == 1


async def test_request_ids_that_sanitise_alike_get_their_own_keys(
    tmp_path: Path, moto: MotoServer, s3: Any
) -> None:
    sink = make_sink(moto, tmp_path)
    ids = ["a/b", "a?b", "a_b", ".", ".."]
    try:
        keys = []
        for rid in ids:
            f = local_file(tmp_path / "spool" / str(len(keys)), "video", "v.mp4", rid.encode())
            keys.append((await sink.deliver(make_ctx([f], request_id=rid)))["event_key"])
    finally:
        await sink.aclose()
    assert len(set(keys)) == len(ids)
    for rid, key in zip(ids, keys, strict=True):  # each event.json is its own event's
        event = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        assert event["request_id"] == rid


def test_a_prefix_without_the_request_id_is_refused(tmp_path: Path, moto: MotoServer) -> None:
    with pytest.raises(OptionError, match=r"must contain \{request_id\}") as err:
        make_sink(moto, tmp_path, prefix="fal/{route}/")
    assert err.value.key == "[sinks.archive].prefix"


async def test_unknown_endpoint_renders_unknown(tmp_path: Path, moto: MotoServer, s3: Any) -> None:
    sink = make_sink(moto, tmp_path, prefix="{endpoint}/{request_id}/")
    try:
        out = await sink.deliver(make_ctx([], endpoint=None, status="ERROR", error="boom"))
    finally:
        await sink.aclose()
    assert out["event_key"] == "unknown/req-123/event.json"
    assert out["objects"] == {}


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"bucket": None}, "[sinks.archive].bucket"),
        ({"prefix": "{route}/{user}/"}, "[sinks.archive].prefix"),
        ({"prefix": "{route!r}/"}, "[sinks.archive].prefix"),
        ({"prefix": "{route"}, "[sinks.archive].prefix"),
        ({"presign_seconds": 604801}, "[sinks.archive].presign_seconds"),
        ({"part_size": 1024}, "[sinks.archive].part_size"),
        ({"addressing_style": "sideways"}, "[sinks.archive].addressing_style"),
        ({"endpoint_url": "ftp://x"}, "[sinks.archive].endpoint_url"),
        ({"buckett": "x"}, "[sinks.archive].buckett"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, options: dict[str, Any], key: str) -> None:
    opts = {"bucket": BUCKET, **options}
    opts = {k: v for k, v in opts.items() if v is not None}
    with pytest.raises(OptionError) as err:
        construct(S3Sink, "archive", opts, SinkEnv(base_dir=tmp_path))
    assert err.value.key == key


async def test_a_failed_multipart_upload_gives_back_its_part_slots(
    tmp_path: Path, moto: MotoServer, s3: Any
) -> None:
    # One part in flight for the whole sink: a slot lost by the failed upload would leave
    # the next multipart upload waiting forever (bounded here so a leak fails, not hangs).
    real = local_file(tmp_path / "a", "video", "v.mp4", generated_bytes(7 * MIB), "video/mp4")
    liar = type(real)(**{**real.__dict__, "size": 12 * MIB})
    good = local_file(tmp_path / "b", "video", "w.mp4", generated_bytes(11 * MIB), "video/mp4")
    sink = make_sink(moto, tmp_path, part_size=5 * MIB, concurrency=1)
    try:
        with pytest.raises(Retryable, match="shorter"):
            await sink.deliver(make_ctx([liar]))
        async with asyncio.timeout(60):
            out = await sink.deliver(make_ctx([good], request_id="req-456"))
    finally:
        await sink.aclose()
    assert out["objects"]["video"]["uploaded"] is True
    assert object_sha256(s3, "fal/reframe/req-456/w.mp4") == good.sha256


def test_missing_client_library_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if the s3 extra were not installed
    with pytest.raises(OptionError) as err:
        construct(S3Sink, "archive", {"bucket": BUCKET}, SinkEnv(base_dir=tmp_path))
    assert err.value.key == "[sinks.archive].type"
    assert "falhook[s3]" in err.value.problem


def test_short_spool_file_closes_its_descriptor_once(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(b"abc")
    with pytest.raises(Retryable, match="shorter") as err:
        FilePart(path, 0, 10)
    failed = err.traceback[-1].frame.f_locals["self"]
    # The number it used is free again: the next open takes it. Collecting the failed part
    # must not close that number a second time (it is now another file's).
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fd == failed._fd
        del failed, err
        gc.collect()
        os.fstat(fd)  # EBADF if the failed part closed it again
    finally:
        os.close(fd)


class SentRequests:
    """The requests the sink's client sends (botocore's before-send event), as
    (operation, headers, body bytes; None for a streamed part or no body)."""

    def __init__(self, sink: S3Sink) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes | None]] = []
        sink._get_client().meta.events.register("before-send.s3.*", self._record)

    def _record(self, request: Any, event_name: str, **_: Any) -> None:
        body = request.body
        if isinstance(body, io.BytesIO):  # a small PUT's body, wrapped by botocore
            body = body.getvalue()
        body = body if isinstance(body, bytes) else None
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        self.seen.append((event_name.rsplit(".", 1)[-1], headers, body))

    def of(self, operation: str) -> list[tuple[dict[str, str], bytes | None]]:
        return [(h, b) for op, h, b in self.seen if op == operation]


def crc32_b64(data: bytes) -> str:
    import base64
    import zlib

    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


async def test_every_part_and_object_carries_the_crc32_of_its_bytes(
    tmp_path: Path, moto: MotoServer, s3: Any
) -> None:
    data = b"".join(generated_bytes(12 * MIB))
    big = local_file(tmp_path / "spool", "video", "v.mp4", data, "video/mp4")
    small = local_file(tmp_path / "spool", "image", "i.png", b"tiny png", "image/png")
    sink = make_sink(moto, tmp_path, part_size=5 * MIB)
    sent = SentRequests(sink)
    try:
        await sink.deliver(make_ctx([big, small]))
    finally:
        await sink.aclose()
    [(create, _)] = sent.of("CreateMultipartUpload")
    assert create["x-amz-checksum-algorithm"] == "CRC32"
    parts = sorted(sent.of("UploadPart"), key=lambda p: p[0]["Content-Length"], reverse=True)
    pieces = [data[: 5 * MIB], data[5 * MIB : 10 * MIB], data[10 * MIB :]]
    assert sorted(h["x-amz-checksum-crc32"] for h, _ in parts) == sorted(
        crc32_b64(p) for p in pieces
    )
    [(_, completion)] = sent.of("CompleteMultipartUpload")
    assert completion is not None
    for piece in pieces:  # each part's CRC is named again when the upload is completed
        assert f"<ChecksumCRC32>{crc32_b64(piece)}</ChecksumCRC32>".encode() in completion
    puts = {h["Content-Type"]: (h, b) for h, b in sent.of("PutObject")}
    image, body = puts["image/png"]
    assert image["x-amz-checksum-crc32"] == crc32_b64(b"tiny png") and body == b"tiny png"
    event, body = puts["application/json"]
    assert body is not None and event["x-amz-checksum-crc32"] == crc32_b64(body)
    # Plain headers, never the aws-chunked trailers several S3-compatible stores refuse.
    for _, headers, _ in sent.seen:
        assert "x-amz-trailer" not in {k.lower() for k in headers}
    assert object_sha256(s3, "fal/reframe/req-123/v.mp4") == big.sha256


async def test_checksum_none_sends_no_checksum_headers(
    tmp_path: Path, moto: MotoServer, s3: Any
) -> None:
    big = local_file(tmp_path / "spool", "video", "v.mp4", generated_bytes(6 * MIB), "video/mp4")
    sink = make_sink(moto, tmp_path, part_size=5 * MIB, checksum="none")
    sent = SentRequests(sink)
    try:
        await sink.deliver(make_ctx([big]))
    finally:
        await sink.aclose()
    assert sent.seen
    for _, headers, _ in sent.seen:
        assert not [k for k in headers if k.lower().startswith("x-amz-checksum")]
    assert object_sha256(s3, "fal/reframe/req-123/v.mp4") == big.sha256


def test_a_part_damaged_on_the_way_is_retried(tmp_path: Path) -> None:
    from botocore.exceptions import ClientError

    sink = construct(S3Sink, "archive", {"bucket": BUCKET}, SinkEnv(base_dir=tmp_path))
    damaged = ClientError(
        {
            "Error": {"Code": "BadDigest", "Message": "CRC32 mismatch"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "UploadPart",
    )
    assert isinstance(sink._classify(damaged), Retryable)


async def test_a_sink_closed_and_used_again_still_delivers(
    tmp_path: Path, moto: MotoServer, s3: Any
) -> None:
    f = local_file(tmp_path / "spool", "video", "v.mp4", b"again", "video/mp4")
    sink = make_sink(moto, tmp_path)
    await sink.deliver(make_ctx([f]))
    await sink.aclose()
    out = await sink.deliver(make_ctx([f], request_id="req-456"))
    await sink.aclose()
    assert out["objects"]["video"]["uploaded"] is True
