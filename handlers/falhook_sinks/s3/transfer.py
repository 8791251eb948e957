"""Uploads into one bucket, every client call in the sink's threads (aws.ThreadedClient).

- A small file that is whole goes in one PUT; a bigger one, or one still arriving, goes
  multipart: each part starts as soon as the spool file holds it (``FilePart`` reads it from
  there, never a whole part in memory), at most ``concurrency`` parts in flight across all
  of the sink's uploads.
- Integrity: each part (and each small object) carries its CRC32, computed here and sent as
  a header; the store refuses a part damaged on the way. ``checksum = "none"`` turns it off.
- A file whole before its upload carries ``x-amz-meta-sha256``; a HEAD showing the same
  digest and size skips it.
- A failed multipart upload (a part, the download, a cancellation) is aborted once its
  parts already in threads are done, so no late part leaves storage behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import zlib
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from falhook_sinks.aws import ThreadedClient
from falhook_sinks.base import (
    ArrivingFile,
    DeliveryContext,
    LocalFile,
    Permanent,
    on_disk,
)
from falhook_sinks.s3.arrivals import whole_now
from falhook_sinks.s3.parts import FilePart, b64_crc, crc32_of

MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3's smallest part (except the last)
MAX_PARTS = 10_000
_ABORT_WAIT = 15.0  # seconds a failed upload waits for its parts in flight before aborting


class Uploader:
    """Puts an event's objects into `bucket`."""

    def __init__(
        self,
        aws: ThreadedClient,
        bucket: str,
        *,
        crc32: bool,
        storage_class: str | None,
        part_size: int,
        threshold: int,
        concurrency: int,
    ) -> None:
        self.aws, self.bucket, self.crc32 = aws, bucket, crc32
        self.storage_class, self.part_size, self.threshold = storage_class, part_size, threshold
        self.concurrency = concurrency
        self._slots: tuple[asyncio.AbstractEventLoop | None, asyncio.Semaphore | None] = (
            None,
            None,
        )

    async def put_document(self, ctx: DeliveryContext, key: str, body: bytes) -> None:
        """A small JSON object of the event (event.json) in one PUT."""
        await self.aws.run(
            _call,
            "put_object",
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            Metadata=metadata(ctx, None),
            **self._class_arg(),
            **self._crc_arg(zlib.crc32(body)),
        )

    async def put_file(
        self, ctx: DeliveryContext, file: ArrivingFile, key: str
    ) -> tuple[bool, LocalFile]:
        """Upload one file; (whether anything was uploaded, the whole file)."""
        whole = await whole_now(file, self.threshold)
        if whole is not None:
            if await self.aws.run(self._already_there, whole, key):
                ctx.log.info("s3 object already stored", path=file.path, key=key)
                return False, whole
            args = self._args(ctx, file, key, whole.sha256)
            if (whole.size or 0) < self.threshold:
                await self.aws.run(self._put_small, whole, args)
            else:
                await self._multipart(file, args)
        else:
            await self._multipart(file, self._args(ctx, file, key))
            whole = await file.finished()
        ctx.log.info("s3 object stored", path=file.path, key=key, bytes=whole.size)
        return True, whole

    def _part_slots(self) -> asyncio.Semaphore:
        """The sink-wide bound on parts in flight. An asyncio primitive belongs to one loop:
        a new loop (the CLI and tests run one after another) gets a new one."""
        loop = asyncio.get_running_loop()
        owner, slots = self._slots
        if owner is not loop or slots is None:
            slots = asyncio.Semaphore(self.concurrency)
            self._slots = (loop, slots)
        return slots

    def _class_arg(self) -> dict[str, str]:
        return {"StorageClass": self.storage_class} if self.storage_class else {}

    def _crc_arg(self, crc: int) -> dict[str, str]:
        return {"ChecksumCRC32": b64_crc(crc)} if self.crc32 else {}

    def _args(
        self, ctx: DeliveryContext, file: ArrivingFile, key: str, sha256: str | None = None
    ) -> dict[str, Any]:
        return {
            "Bucket": self.bucket,
            "Key": key,
            "ContentType": file.content_type or "application/octet-stream",
            "Metadata": metadata(ctx, file, sha256),
            **self._class_arg(),
        }

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

    def _put_small(self, client: Any, file: LocalFile, args: dict[str, Any]) -> None:
        body = on_disk(file).read_bytes()
        client.put_object(Body=body, **args, **self._crc_arg(zlib.crc32(body)))

    def upload_part(
        self, client: Any, where: dict[str, Any], number: int, path: Path, offset: int, size: int
    ) -> dict[str, Any]:
        """One part, in a pool thread: its CRC32 (a read of the spool file from the page
        cache), then the part itself, streamed."""
        checksum = self._crc_arg(crc32_of(path, offset, size)) if self.crc32 else {}
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
        created = await self.aws.run(_call, "create_multipart_upload", **args, **algorithm)
        where = {"Bucket": args["Bucket"], "Key": args["Key"], "UploadId": created["UploadId"]}
        upload = _Parts(self, where, file.local_path, self._part_slots())
        try:
            async with asyncio.TaskGroup() as group:
                offset = 0
                while (available := await file.wait(offset + part_size)) > offset:
                    size = min(part_size, available - offset)
                    await upload.start(group, offset, size)
                    offset += size
            await self.aws.run(
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
                    await self.aws.run(_call, "abort_multipart_upload", **where)

        with contextlib.suppress(Exception):
            await asyncio.shield(abort())


class _Parts:
    """The parts of one multipart upload: each in a pool thread, at most the sink-wide number
    of parts in flight (its slots), every slot given back whatever happens."""

    def __init__(
        self, uploader: Uploader, where: dict[str, Any], path: Path, slots: asyncio.Semaphore
    ) -> None:
        self.uploader, self.where, self.path, self.slots = uploader, where, path, slots
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
            up = self.uploader
            job = up.aws.submit(up.upload_part, self.where, number, self.path, offset, size)
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


def metadata(
    ctx: DeliveryContext, file: ArrivingFile | None, sha256: str | None = None
) -> dict[str, str]:
    # Metadata travels as HTTP headers: keep it ASCII (identifiers are sanitised names).
    meta = {"request_id": _ascii(ctx.event.request_id), "route": _ascii(ctx.event.route)}
    if file is not None:
        meta["path"] = _ascii(file.path)
    if sha256 is not None:  # known only when the upload starts after the download
        meta["sha256"] = sha256
    return meta


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first real error of a TaskGroup failure (not the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


def _call(client: Any, operation: str, /, **params: Any) -> Any:
    """client.<operation>(**params): a client call to hand to ThreadedClient.run."""
    return getattr(client, operation)(**params)


def _ascii(value: str) -> str:
    return value.encode("ascii", "replace").decode("ascii")
