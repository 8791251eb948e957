"""S3 sink: each file and ``event.json`` under ``<prefix>``, in any S3-protocol store.

One delivery: if an ``event.json`` already lists the event's files with the same bytes
(marker.py), nothing is uploaded; otherwise each file goes up (transfer.py: one PUT, or
multipart parts as the download writes them, arrivals.py), then ``event.json`` last, as the
commit marker; the output holds presigned links for sinks declared ``after`` this one
(presign.py). Credentials come from the standard AWS chain (env, shared files/profile, SSO,
web identity, container and instance roles); ``profile`` picks a named profile.

boto3 is the client, called from this sink's own thread pool: request signing (which hashes
every part over plain HTTP), CRC32 and socket writes all stay off the event loop that serves
webhooks, and run in parallel. See docs/sinks.md for the measurement behind the choice. It is
imported lazily, so configs without an S3 sink never pay for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any, Literal

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
)
from falhook_sinks.options import Invalid, SinkOptions, option_key, require_extra
from falhook_sinks.s3.arrivals import Whole
from falhook_sinks.s3.marker import known_digests, marker_bytes, marker_matches, stored_marker
from falhook_sinks.s3.presign import MAX_PRESIGN, linked_output
from falhook_sinks.s3.transfer import MIB, MIN_PART, Uploader
from falhook_sinks.templates import check_template, render

_CHECK_SECONDS = 5.0  # the start-up check's HEAD of the bucket

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
    options_type = S3Options

    def __init__(self, name: str, opts: S3Options, env: SinkEnv) -> None:
        # Imported lazily, but missing is a start-up error, not a failure at the first delivery.
        require_extra(name, "s3", "boto3", "boto3")
        self.name = name
        self.bucket = opts.bucket
        self.prefix = opts.prefix.lstrip("/")
        self.presign_seconds = opts.presign_seconds
        endpoint_url = opts.endpoint_url or None
        # Parts in flight, plus room for the HEADs, small PUTs and presigns of other events,
        # so those never queue behind a large upload's parts.
        self._aws = ThreadedClient(
            "s3",
            f"falhook-s3-{name}",
            threads=opts.concurrency + 4,
            profile=opts.profile,
            region=opts.region,
            endpoint_url=endpoint_url,
            connect_timeout=opts.connect_timeout,
            read_timeout=opts.read_timeout,
            s3={"addressing_style": opts.addressing_style or ("path" if endpoint_url else "auto")},
            signature_version="s3v4",  # presigned links too (SigV2 is long gone)
            # botocore's own default sends CRCs as aws-chunked trailers over HTTPS, which
            # several S3-compatible stores refuse; this sink computes the CRC32 itself and
            # sends it as a plain header instead (see `checksum`).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.uploader = Uploader(
            self._aws,
            self.bucket,
            crc32=opts.checksum == "crc32",
            storage_class=opts.storage_class,
            part_size=opts.part_size,
            threshold=opts.multipart_threshold or opts.part_size,
            concurrency=opts.concurrency,
        )

    def _get_client(self) -> Any:
        return self._aws.client()

    async def aclose(self) -> None:
        # A part already in a thread ends within read_timeout (the interpreter waits for it
        # at exit), and its delivery's lease covers a hard stop.
        self._aws.close()

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any]:
        return await self._deliver(ctx, [Whole(f) for f in ctx.files])

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
            known = known_digests(ctx, files)
            marker = (
                await self._aws.run(stored_marker, self.bucket, event_key)
                if known is not None
                else None
            )
            if marker is not None and marker_matches(marker, known):
                ctx.log.info("s3 event already stored", key=event_key)
                return await self._output(event_key, marker.get("objects") or {}, uploaded=False)
            objects: dict[str, dict[str, Any]] = {}
            finals: dict[str, LocalFile] = {}
            for file in files:
                key = prefix + file.name
                uploaded, final = await self.uploader.put_file(ctx, file, key)
                finals[file.path] = final
                objects[file.path] = {
                    "key": key, "size": final.size, "sha256": final.sha256, "uploaded": uploaded
                }  # fmt: skip
            # event.json last: the commit marker, holding each file's size and sha256.
            await self.uploader.put_document(ctx, event_key, marker_bytes(ctx, finals, objects))
            return await self._output(event_key, objects)
        except (Retryable, Permanent):
            raise
        except Exception as exc:
            raise self._classify(exc) from exc

    async def _output(
        self, event_key: str, objects: dict[str, Any], *, uploaded: bool | None = None
    ) -> dict[str, Any]:
        return await linked_output(
            self._aws, self.bucket, self.presign_seconds, event_key, objects, uploaded=uploaded
        )

    async def check(self) -> list[SinkProblem]:
        """Can the bucket be reached? A warning only: the store may come up after falhook, and
        deliveries retry."""
        try:
            async with asyncio.timeout(_CHECK_SECONDS):  # start-up must not wait on a dead store
                await self._aws.run(lambda client: client.head_bucket(Bucket=self.bucket))
        except TimeoutError:
            problem = f"no answer within {_CHECK_SECONDS:g} s; deliveries will retry"
            return [SinkProblem(option_key(self.name, "bucket"), problem, fatal=False)]
        except Exception as exc:
            problem = f"cannot be reached now ({self._classify(exc)}); deliveries will retry"
            return [SinkProblem(option_key(self.name, "bucket"), problem, fatal=False)]
        return []

    def _classify(self, exc: BaseException) -> Retryable | Permanent:
        """Map client errors to the worker's two kinds, with a message naming the bucket."""
        return classify(exc, f"s3 bucket {self.bucket!r}", _PERMANENT_HINTS, _RETRYABLE_CODES)
