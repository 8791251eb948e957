"""S3 sink: each file and ``event.json`` under ``<prefix>``, in any S3-protocol store.

- Streams: a file's multipart parts go up while the download writes them (``FilePart``
  reads each part from the spool file: never a whole part in memory), several at once; small
  files that are already whole go in one PUT. A sink-wide semaphore bounds the parts in
  flight across all events (``concurrency``).
- Integrity: each part (and each small object) carries its CRC32, computed here and sent as a
  header; the store checks it and refuses a part damaged on the way (``checksum = "none"``
  for stores that do not take checksum headers).
- Idempotent: ``event.json`` is written last, as the commit marker listing each object's
  key, size and sha256; a delivery that finds a marker matching the event's files uploads
  nothing. A file whole before its upload also carries ``x-amz-meta-sha256``, and a HEAD
  showing the same digest and size skips that file.
- Returns presigned GET links that sinks declared ``after`` this one (Slack) can show.
- Credentials come from the standard AWS chain (env, shared files/profile, SSO, web identity,
  container and instance roles); ``profile`` picks a named profile.

boto3 is the client, called from this sink's own thread pool: request signing (which hashes
every part over plain HTTP), CRC32 and socket writes all stay off the event loop that serves
webhooks, and run in parallel. See docs/sinks.md for the measurement behind the choice. It is
imported lazily, so configs without an S3 sink never pay for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from msgspec import Meta

from falhook_sinks.aws import ThreadedClient, classify
from falhook_sinks.base import (
    ArrivingFile,
    DeliveryContext,
    LocalFile,
    Permanent,
    Retryable,
    Sink,
    SinkEnv,
    SinkProblem,
    json_document,
    on_disk,
)
from falhook_sinks.options import (
    Invalid,
    SinkOptions,
    option_key,
    read_options,
    require_extra,
)
from falhook_sinks.templates import check_template, render

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3's smallest part (except the last)
MAX_PARTS = 10_000
MAX_PRESIGN = 7 * 24 * 3600  # SigV4's limit
_CRC_READ = 1024 * 1024
_CHECK_SECONDS = 5.0  # the start-up check's HEAD of the bucket
_MARKER_MAX = 16 * 1024 * 1024  # an event.json larger than this is not an earlier marker
_ABORT_WAIT = 15.0  # seconds a failed upload waits for its parts in flight before aborting
T = TypeVar("T")

# Codes that retrying will not fix; everything else 4xx is permanent too, these get a hint.
_PERMANENT_HINTS = {
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "access denied (check the credentials' permissions on the bucket)",
    "AllAccessDisabled": "all access to the bucket is disabled",
    "InvalidAccessKeyId": "the access key id is not known to the store",
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "InvalidBucketName": "the bucket name is not valid",
    "PermanentRedirect": "the bucket is in another region (set region)",
    "AuthorizationHeaderMalformed": "wrong region for this bucket (set region)",
}
_RETRYABLE_CODES = {
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "OperationAborted",
    "BadDigest",  # a part damaged on the way: its checksum did not match
    "XAmzContentSHA256Mismatch",
}


class S3Options(SinkOptions):
    bucket: Annotated[str, Meta(min_length=1)]
    prefix: str = "fal/{route}/{request_id}/"
    endpoint_url: str = ""  # any S3-compatible store; "" (an empty ${VAR}): AWS itself
    region: str | None = None
    profile: str | None = None
    storage_class: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] | None = None  # path with endpoint_url
    checksum: Literal["crc32", "none"] = "crc32"
    presign_seconds: Annotated[int, Meta(ge=1, le=MAX_PRESIGN)] = MAX_PRESIGN  # SigV4: 7 days
    part_size: Annotated[int, Meta(ge=MIN_PART)] = 8 * MIB  # S3's smallest part: 5 MiB
    multipart_threshold: Annotated[int, Meta(ge=1)] | None = None  # default: part_size
    concurrency: Annotated[int, Meta(ge=1)] = 8
    connect_timeout: Annotated[float, Meta(gt=0)] = 10.0
    read_timeout: Annotated[float, Meta(gt=0)] = 120.0

    def check(self) -> None:
        check_template(self.prefix, "prefix", required=("request_id",))
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise Invalid("endpoint_url", "must be an http:// or https:// URL")


class S3Sink(Sink):
    streams_files = True  # parts go up while the download writes them

    def __init__(self, name: str, options: dict[str, Any], env: SinkEnv) -> None:
        opts = read_options(name, S3Options, options)
        self.name = name
        self.bucket = opts.bucket
        self.prefix = opts.prefix.lstrip("/")
        self.endpoint_url = opts.endpoint_url or None
        self.region = opts.region
        self.profile = opts.profile
        self.storage_class = opts.storage_class
        self.addressing_style = opts.addressing_style or ("path" if self.endpoint_url else "auto")
        self.crc32 = opts.checksum == "crc32"
        self.presign_seconds = opts.presign_seconds
        self.part_size = opts.part_size
        self.threshold = opts.multipart_threshold or self.part_size
        self.concurrency = opts.concurrency
        self.connect_timeout = opts.connect_timeout
        self.read_timeout = opts.read_timeout
        # Imported lazily, but missing is a start-up error, not a failure at the first delivery.
        require_extra(name, "s3", "boto3", "boto3")
        # Parts in flight, plus room for the HEADs, small PUTs and presigns of other events,
        # so those never queue behind a large upload's parts.
        self._aws = ThreadedClient(
            "s3",
            f"falhook-s3-{name}",
            threads=self.concurrency + 4,
            profile=self.profile,
            region=self.region,
            endpoint_url=self.endpoint_url,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            s3={"addressing_style": self.addressing_style},
            signature_version="s3v4",  # presigned links too (SigV2 is long gone)
            # botocore's own default sends CRCs as aws-chunked trailers over HTTPS, which
            # several S3-compatible stores refuse; this sink computes the CRC32 itself and
            # sends it as a plain header instead (see `checksum`).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._slots: tuple[asyncio.AbstractEventLoop | None, asyncio.Semaphore | None] = (
            None,
            None,
        )

    # --- the client and its threads ------------------------------------------------------------

    def _get_client(self) -> Any:
        return self._aws.client()

    def _submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """fn(client, *args, **kwargs) in one of this sink's threads."""
        return self._aws.submit(fn, *args, **kwargs)

    async def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await self._aws.run(fn, *args, **kwargs)

    def _part_slots(self) -> asyncio.Semaphore:
        """The sink-wide bound on parts in flight. An asyncio primitive belongs to one loop:
        a new loop (the CLI and tests run one after another) gets a new one."""
        loop = asyncio.get_running_loop()
        owner, slots = self._slots
        if owner is not loop or slots is None:
            slots = asyncio.Semaphore(self.concurrency)
            self._slots = (loop, slots)
        return slots

    async def aclose(self) -> None:
        # A part already in a thread ends within read_timeout (the interpreter waits for it
        # at exit), and its delivery's lease covers a hard stop.
        self._aws.close()

    # --- delivery --------------------------------------------------------------------------

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any]:
        return await self._deliver(ctx, [_Whole(f) for f in ctx.files])

    async def deliver_streaming(
        self, ctx: DeliveryContext, files: Sequence[ArrivingFile]
    ) -> dict[str, Any]:
        """Each file's parts are uploaded as the download writes them: the upload ends
        shortly after the download instead of starting after it."""
        return await self._deliver(ctx, list(files))

    async def _deliver(self, ctx: DeliveryContext, files: list[ArrivingFile]) -> dict[str, Any]:
        prefix = render(self.prefix, ctx.event)
        event_key = prefix + "event.json"
        try:
            # A marker can only match files whose digests are known: otherwise no GET for it.
            known = _known_digests(ctx, files)
            marker = await self._run(self._stored_marker, event_key) if known is not None else None
            if marker is not None and _marker_matches(marker, known):
                ctx.log.info("s3 event already stored", key=event_key)
                return await self._output(event_key, marker.get("objects") or {}, uploaded=False)
            objects: dict[str, dict[str, Any]] = {}
            finals: dict[str, LocalFile] = {}
            for file in files:
                key = prefix + file.name
                uploaded, final = await self._put_file(ctx, file, key)
                finals[file.path] = final
                objects[file.path] = {
                    "key": key, "size": final.size, "sha256": final.sha256, "uploaded": uploaded
                }  # fmt: skip
            # event.json last: the commit marker, holding each file's size and sha256.
            body = _marker_bytes(ctx, finals, objects)
            await self._run(
                _call,
                "put_object",
                Bucket=self.bucket,
                Key=event_key,
                Body=body,
                ContentType="application/json",
                Metadata=self._metadata(ctx, None),
                **self._class_arg(),
                **self._crc_arg(zlib.crc32(body)),
            )
            return await self._output(event_key, objects)
        except (Retryable, Permanent):
            raise
        except Exception as exc:
            raise self._classify(exc) from exc

    async def _output(
        self, event_key: str, objects: dict[str, Any], *, uploaded: bool | None = None
    ) -> dict[str, Any]:
        """What sinks after this one read: presigned links to every object and the event."""
        keys = [obj["key"] for obj in objects.values()]
        *urls, event_url = await self._run(self._presign_all, [*keys, event_key])
        linked: dict[str, dict[str, Any]] = {}
        for (path, obj), url in zip(objects.items(), urls, strict=True):
            entry = {"bucket": self.bucket, **obj, "url": url}
            if uploaded is not None:
                entry["uploaded"] = uploaded
            linked[path] = entry
        return {
            "bucket": self.bucket,
            "objects": linked,
            "event_key": event_key,
            "event_url": event_url,
        }

    def _stored_marker(self, client: Any, key: str) -> dict[str, Any] | None:
        """The event.json an earlier delivery left, when there is one to trust."""
        from botocore.exceptions import ClientError

        try:
            body = client.get_object(Bucket=self.bucket, Key=key)["Body"].read(_MARKER_MAX)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (403, 404):
                return None
            raise
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def _presign_all(self, client: Any, keys: list[str]) -> list[str]:
        # Off the loop, all in one hand-off: no request, but refreshing temporary
        # credentials may make one.
        return [
            client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=self.presign_seconds,
            )
            for key in keys
        ]

    def _metadata(
        self, ctx: DeliveryContext, file: ArrivingFile | None, sha256: str | None = None
    ) -> dict[str, str]:
        # Metadata travels as HTTP headers: keep it ASCII (identifiers are sanitised names).
        meta = {"request_id": _ascii(ctx.event.request_id), "route": _ascii(ctx.event.route)}
        if file is not None:
            meta["path"] = _ascii(file.path)
        if sha256 is not None:  # known only when the upload starts after the download
            meta["sha256"] = sha256
        return meta

    def _class_arg(self) -> dict[str, str]:
        return {"StorageClass": self.storage_class} if self.storage_class else {}

    def _crc_arg(self, crc: int) -> dict[str, str]:
        return {"ChecksumCRC32": _b64_crc(crc)} if self.crc32 else {}

    def _already_there(self, client: Any, file: LocalFile, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            head = client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (403, 404):  # missing (403 without s3:ListBucket): upload decides
                return False
            raise
        meta = head.get("Metadata") or {}
        return meta.get("sha256") == file.sha256 and head.get("ContentLength") == file.size

    def _args(
        self, ctx: DeliveryContext, file: ArrivingFile, key: str, sha256: str | None = None
    ) -> dict[str, Any]:
        return {
            "Bucket": self.bucket,
            "Key": key,
            "ContentType": file.content_type or "application/octet-stream",
            "Metadata": self._metadata(ctx, file, sha256),
            **self._class_arg(),
        }

    async def _put_file(
        self, ctx: DeliveryContext, file: ArrivingFile, key: str
    ) -> tuple[bool, LocalFile]:
        """Upload one file; (whether anything was uploaded, the whole file)."""
        if not file.complete and (file.expected_size or 0) < self.threshold:
            # Small or of unknown size: wait to see which (a large one streams its parts).
            await file.wait(self.threshold)
        if file.complete:
            whole = await file.finished()
            if await self._run(self._already_there, whole, key):
                ctx.log.info("s3 object already stored", path=file.path, key=key)
                return False, whole
            args = self._args(ctx, file, key, whole.sha256)
            if (whole.size or 0) < self.threshold:
                await self._run(self._put_small, whole, args)
            else:
                await self._multipart(file, args)
        else:
            await self._multipart(file, self._args(ctx, file, key))
            whole = await file.finished()
        ctx.log.info("s3 object stored", path=file.path, key=key, bytes=whole.size)
        return True, whole

    def _put_small(self, client: Any, file: LocalFile, args: dict[str, Any]) -> None:
        body = on_disk(file).read_bytes()
        client.put_object(Body=body, **args, **self._crc_arg(zlib.crc32(body)))

    def _upload_part(
        self, client: Any, where: dict[str, Any], number: int, path: Path, offset: int, size: int
    ) -> dict[str, Any]:
        """One part, in a pool thread: its CRC32 (a read of the spool file from the page
        cache), then the part itself, streamed."""
        checksum = self._crc_arg(_crc32_of(path, offset, size)) if self.crc32 else {}
        part = FilePart(path, offset, size)
        try:
            got = client.upload_part(PartNumber=number, Body=part, **where, **checksum)
        finally:
            part.close()
        return {"PartNumber": number, "ETag": got["ETag"], **checksum}

    def _part_size(self, size: int | None) -> int:
        return max(self.part_size, math.ceil(size / MAX_PARTS)) if size else self.part_size

    async def _multipart(self, file: ArrivingFile, args: dict[str, Any]) -> None:
        """A multipart upload whose parts go as soon as the file holds them (at once for a
        whole file), a few at a time; aborted when anything fails, the download included."""
        part_size = self._part_size(file.expected_size)
        algorithm = {"ChecksumAlgorithm": "CRC32"} if self.crc32 else {}
        created = await self._run(_call, "create_multipart_upload", **args, **algorithm)
        where = {"Bucket": args["Bucket"], "Key": args["Key"], "UploadId": created["UploadId"]}
        upload = _Parts(self, where, file.local_path, self._part_slots())
        try:
            async with asyncio.TaskGroup() as group:
                offset = 0
                while (available := await file.wait(offset + part_size)) > offset:
                    size = min(part_size, available - offset)
                    await upload.start(group, offset, size)
                    offset += size
            await self._run(
                _call,
                "complete_multipart_upload",
                MultipartUpload={"Parts": upload.parts()},
                **where,
            )
        except BaseException as exc:
            await self._abort_quietly(where, upload.running)
            if isinstance(exc, BaseExceptionGroup):
                raise _first(exc) from None
            raise
        finally:
            upload.give_back()

    async def _abort_quietly(
        self, where: dict[str, str], running: list[Future[dict[str, Any]]]
    ) -> None:
        """Abort a failed upload. A part already in a thread cannot be stopped, and one that
        finishes after the abort would leave storage behind (S3's own warning), so the abort
        waits for those first. Shielded and bounded: a cancelled attempt still cleans up, a
        dead store does not hang us."""

        async def abort() -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_ABORT_WAIT):
                    busy = [asyncio.wrap_future(job) for job in running if not job.done()]
                    if busy:
                        await asyncio.wait(busy)
                    await self._run(_call, "abort_multipart_upload", **where)

        with contextlib.suppress(Exception):
            await asyncio.shield(abort())

    async def check(self) -> list[SinkProblem]:
        """Can the bucket be reached? A warning only: the store may come up after falhook, and
        deliveries retry."""
        try:
            async with asyncio.timeout(_CHECK_SECONDS):  # start-up must not wait on a dead store
                await self._run(lambda client: client.head_bucket(Bucket=self.bucket))
        except TimeoutError:
            problem = f"no answer within {_CHECK_SECONDS:g} s; deliveries will retry"
            return [SinkProblem(option_key(self.name, "bucket"), problem, fatal=False)]
        except Exception as exc:
            problem = f"cannot be reached now ({self._classify(exc)}); deliveries will retry"
            return [SinkProblem(option_key(self.name, "bucket"), problem, fatal=False)]
        return []

    # --- errors ----------------------------------------------------------------------------

    def _classify(self, exc: BaseException) -> Retryable | Permanent:
        """Map client errors to the worker's two kinds, with a message naming the bucket."""
        return classify(exc, f"s3 bucket {self.bucket!r}", _PERMANENT_HINTS, _RETRYABLE_CODES)


class _Parts:
    """The parts of one multipart upload: each in a pool thread, at most the sink-wide number
    of parts in flight (its slots), every slot given back whatever happens."""

    def __init__(
        self, sink: S3Sink, where: dict[str, Any], path: Path, slots: asyncio.Semaphore
    ) -> None:
        self.sink, self.where, self.path, self.slots = sink, where, path, slots
        self.done: dict[int, dict[str, Any]] = {}
        self.running: list[Future[dict[str, Any]]] = []  # the threads' own futures
        self.held = 0  # slots taken for parts whose task has not given them back yet
        self.number = 0

    async def start(self, group: asyncio.TaskGroup, offset: int, size: int) -> None:
        self.number += 1
        if self.number > MAX_PARTS:
            raise Permanent(f"more than {MAX_PARTS} parts: raise part_size")
        await self.slots.acquire()  # bounded: parts in flight across all uploads
        self.held += 1
        group.create_task(self._one(self.number, offset, size))

    async def _one(self, number: int, offset: int, size: int) -> None:
        try:
            job = self.sink._submit(
                self.sink._upload_part, self.where, number, self.path, offset, size
            )
            self.running.append(job)
            self.done[number] = await asyncio.wrap_future(job)
        finally:
            self.held -= 1
            self.slots.release()

    def parts(self) -> list[dict[str, Any]]:
        return [self.done[n] for n in range(1, self.number + 1)]

    def give_back(self) -> None:
        # A task cancelled before it started never runs its own finally: give its slot back
        # here, or the sink-wide limit shrinks with every failed upload until none can run.
        for _ in range(self.held):
            self.slots.release()
        self.held = 0


class _Whole:
    """A file already downloaded, seen as one that has arrived (one upload path for both)."""

    def __init__(self, file: LocalFile) -> None:
        self.file = file
        self.path, self.name, self.url = file.path, file.name, file.url
        self.content_type, self.file_name = file.content_type, file.file_name
        self.local_path = on_disk(file)
        self.expected_size = file.size
        self.complete = True

    async def wait(self, size: int) -> int:
        return self.file.size or 0

    async def finished(self) -> LocalFile:
        return self.file


def _known_digests(
    ctx: DeliveryContext, files: list[ArrivingFile]
) -> dict[str, tuple[int | None, str | None]] | None:
    """Each file's size and sha256 when every one is known before uploading (a whole file,
    or one an earlier download recorded on the event); else None."""
    recorded = {v.get("path"): v for v in ctx.event.files}
    known: dict[str, tuple[int | None, str | None]] = {}
    for file in files:
        whole = file.file if isinstance(file, _Whole) else None
        view = recorded.get(file.path) or {}
        size = whole.size if whole is not None else view.get("size")
        sha256 = whole.sha256 if whole is not None else view.get("sha256")
        if size is None or sha256 is None:
            return None
        known[file.path] = (size, sha256)
    return known


def _marker_matches(
    marker: dict[str, Any], known: dict[str, tuple[int | None, str | None]] | None
) -> bool:
    """An earlier delivery's event.json lists exactly these files with these bytes."""
    objects = marker.get("objects")
    if known is None or not isinstance(objects, dict) or set(objects) != set(known):
        return False
    return all(
        isinstance(objects[path], dict)
        and (objects[path].get("size"), objects[path].get("sha256")) == digest
        for path, digest in known.items()
    )


def _marker_bytes(
    ctx: DeliveryContext, finals: dict[str, LocalFile], objects: dict[str, dict[str, Any]]
) -> bytes:
    """The event as received, its files' final sizes and digests, and where they are."""
    doc = ctx.event.document()
    doc["files"] = [
        view | {"size": finals[view["path"]].size, "sha256": finals[view["path"]].sha256}
        if view.get("path") in finals
        else view
        for view in doc["files"]
    ]
    doc["objects"] = {
        path: {k: obj[k] for k in ("key", "size", "sha256")} for path, obj in objects.items()
    }
    return json_document(doc)


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first real error of a TaskGroup failure (not the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


def _call(client: Any, operation: str, /, **params: Any) -> Any:
    """client.<operation>(**params): a client call to hand to S3Sink._run."""
    return getattr(client, operation)(**params)


def _crc32_of(path: Path, offset: int, size: int) -> int:
    crc = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        end = offset + size
        while offset < end:
            data = os.pread(fd, min(_CRC_READ, end - offset), offset)
            if not data:
                raise Retryable(f"spool file {path.name} is shorter than its recorded size")
            crc = zlib.crc32(data, crc)
            offset += len(data)
    finally:
        os.close(fd)
    return crc


def _b64_crc(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


class FilePart(io.RawIOBase):
    """A window of a file, read in the client's own small chunks: a part is never held in
    memory whole. Seekable (the signer may hash it, a retry rewinds it) and sized."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._start, self._length, self._pos = offset, length, 0
        if os.fstat(self._fd).st_size < offset + length:
            # close(), not os.close(): marked closed, so __del__ cannot close the fd number a
            # second time (by then it may be another file's or socket's).
            self.close()
            raise Retryable(f"spool file {path.name} is shorter than its recorded size")

    def __len__(self) -> int:
        return self._length - self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = min(max(base + pos, 0), self._length)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._pos
        size = left if size is None or size < 0 else min(size, left)
        data = os.pread(self._fd, size, self._start + self._pos) if size else b""
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _ascii(value: str) -> str:
    return value.encode("ascii", "replace").decode("ascii")
