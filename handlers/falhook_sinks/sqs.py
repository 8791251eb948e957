"""Amazon SQS sink: one message per event, standard or FIFO queue.

- Message attributes ``request_id``, ``route``, ``fal_status`` and the propagation headers;
  FIFO queues (``.fifo``) get ``MessageGroupId`` = route and ``MessageDeduplicationId`` =
  request id, so SQS itself drops a re-send within its 5-minute deduplication interval.
- Published once per event across retries and replays (``ctx.previous``). A standard queue
  has no deduplication: a worker that dies after the send and before recording it sends again
  on the next attempt (consumers deduplicate on the ``request_id`` attribute).
- Size: an event over ``max_message_bytes`` (body and attributes, as SQS counts them) goes as
  a claim check: the event without its payload, with the files' links and, when an S3 sink in
  ``after`` stored it, ``claim_check.event_url``; never cut. A queue that still refuses the
  size (its own ``MaximumMessageSize`` is lower) gets the claim check too.

boto3 is the client, called from this sink's own threads, as the S3 sink does; its HTTP
connections are pooled and reopened by themselves. Credentials come from the standard AWS
chain. Imported lazily: configs without an SQS sink never pay for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from msgspec import Meta

from falhook_sinks.aws import ThreadedClient, classify
from falhook_sinks.base import BatchResult, DeliveryContext, Permanent, Retryable, SinkEnv
from falhook_sinks.messaging import (
    PublishMode,
    QueueSink,
    claim_check,
    event_message,
    fitted,
    message_headers,
)
from falhook_sinks.options import Invalid, SinkOptions

SQS_MAX = 1_048_576  # SQS's own ceiling since 2025 (1 MiB); before it, 256 KiB
BATCH_MAX = 10  # entries of one SendMessageBatch
_REGION = re.compile(r"^https://sqs[.-]([a-z0-9-]+)\.amazonaws\.com(\.cn)?/")
_ID_CHARS = re.compile(r"^[\x21-\x7e]{1,128}$")  # SQS group and deduplication ids
_PERMANENT_HINTS = {
    "AWS.SimpleQueueService.NonExistentQueue": "the queue does not exist",
    "QueueDoesNotExist": "the queue does not exist",
    "AccessDenied": "access denied (check the credentials' sqs:SendMessage permission)",
    "AccessDeniedException": "access denied (check the credentials' sqs:SendMessage permission)",
    "InvalidClientTokenId": "the access key id is not known",
    "UnrecognizedClientException": "the access key id is not known",
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "KmsDisabled": "the queue's KMS key is disabled",
    "KmsAccessDenied": "no access to the queue's KMS key",
}
_RETRYABLE_CODES = {
    "RequestThrottled",
    "ThrottlingException",
    "Throttling",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KmsThrottled",
    "KmsUnavailable",
    "RequestTimeout",
}


class SqsOptions(SinkOptions):
    queue_url: str
    region: str | None = None  # default: the queue URL's region, else the AWS chain's
    endpoint_url: str = ""  # an SQS-compatible server (ElasticMQ, LocalStack); "": AWS
    profile: str | None = None
    # SQS counts body and attributes. 256 KiB is safe everywhere; AWS takes 1 MiB since 2025
    # (a queue's own MaximumMessageSize may still be lower).
    max_message_bytes: Annotated[int, Meta(ge=1024, le=SQS_MAX)] = 262_144
    concurrency: Annotated[int, Meta(ge=1)] = 8  # sends in flight (threads)
    connect_timeout: Annotated[float, Meta(gt=0)] = 10.0
    read_timeout: Annotated[float, Meta(gt=0)] = 30.0

    def check(self) -> None:
        if not self.queue_url.startswith(("https://", "http://")):
            raise Invalid("queue_url", "must be the queue's https:// URL")
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise Invalid("endpoint_url", "must be an http:// or https:// URL")


@dataclass
class _Entry:
    """One event's message in a batch."""

    index: int  # in the batch the worker gave
    ctx: DeliveryContext
    doc: dict[str, Any]  # the event document (for a claim check, if the queue refuses it)
    room: int  # bytes left for the body beside its attributes
    params: dict[str, Any]  # the batch entry, without its Id
    size: int  # as SQS counts it: body and attributes
    claim_check: bool


class SqsSink(QueueSink[SqsOptions]):
    options_type = SqsOptions
    client = ("sqs", "boto3", "boto3")
    kind = "sqs message"

    def __init__(self, name: str, opts: SqsOptions, env: SinkEnv) -> None:
        super().__init__(name, opts, env)
        self.fifo = opts.queue_url.rstrip("/").endswith(".fifo")
        found = _REGION.match(opts.queue_url)
        self.region = opts.region or (found.group(1) if found else None)
        self.target = f"sqs queue {opts.queue_url}"
        self._aws = ThreadedClient(
            "sqs",
            f"falhook-sqs-{name}",
            threads=opts.concurrency,
            profile=opts.profile,
            region=self.region,
            endpoint_url=opts.endpoint_url,
            connect_timeout=opts.connect_timeout,
            read_timeout=opts.read_timeout,
        )

    async def aclose(self) -> None:
        self._aws.close()

    async def publish_batch(
        self, batch: Sequence[tuple[DeliveryContext, PublishMode]]
    ) -> list[BatchResult]:
        """The events in SendMessageBatch calls of up to 10 messages and `max_message_bytes`
        in all, sent at once in the sink's threads; each entry's success or failure is its
        own event's. An entry the queue refuses for its size goes alone, as a claim check."""
        results: list[BatchResult] = [None] * len(batch)
        entries: list[_Entry] = []
        for i, (ctx, _) in enumerate(batch):
            try:
                entries.append(self._entry(i, ctx))
            except Permanent as exc:
                results[i] = exc
        sends = [self._send_batch(chunk, results) for chunk in _chunks(entries, self.opts)]
        await asyncio.gather(*sends)
        return results

    def _entry(self, index: int, ctx: DeliveryContext) -> _Entry:
        attributes = self._attributes(ctx)
        room = self.opts.max_message_bytes - _attributes_size(attributes)
        doc = event_message(ctx)
        body, checked = fitted(ctx, doc, room, self.target)
        params: dict[str, Any] = {"MessageAttributes": attributes, "MessageBody": body.decode()}
        if self.fifo:
            params["MessageGroupId"] = _sqs_id(ctx.event.route)
            params["MessageDeduplicationId"] = _sqs_id(ctx.event.request_id)
        return _Entry(
            index, ctx, doc, room, params, len(body) + _attributes_size(attributes), checked
        )

    async def _send_batch(self, chunk: list[_Entry], results: list[BatchResult]) -> None:
        request = [{"Id": str(n), **e.params} for n, e in enumerate(chunk)]
        try:
            answer = await self._aws.run(
                lambda c: c.send_message_batch(QueueUrl=self.opts.queue_url, Entries=request)
            )
        except Exception as exc:
            if _too_long(exc) and len(chunk) > 1:  # the batch as a whole: each goes alone
                await asyncio.gather(*(self._send_batch([e], results) for e in chunk))
                return
            if _too_long(exc):
                results[chunk[0].index] = await self._send_claim_check(chunk[0], exc)
                return
            for e in chunk:
                results[e.index] = self._classify(exc)
            return
        for ok in answer.get("Successful", []):
            e = chunk[int(ok["Id"])]
            results[e.index] = self._output(e, ok)
        for failed in answer.get("Failed", []):
            e = chunk[int(failed["Id"])]
            error = _entry_error(failed)
            if _too_long(error) and not e.claim_check:
                results[e.index] = await self._send_claim_check(e, error)
            else:
                results[e.index] = self._classify(error)

    async def _send_claim_check(self, e: _Entry, refused: Exception) -> BatchResult:
        """The event again without its payload: the queue refused its size (its own
        MaximumMessageSize is lower than max_message_bytes)."""
        e.ctx.log.warning("sqs queue refused the size; sending a claim check")
        refused_bytes = len(e.params["MessageBody"].encode())
        why = f"the queue refused {refused_bytes} bytes (its MaximumMessageSize is lower)"
        try:
            body = claim_check(e.ctx, e.doc, why, e.room, self.target)
            params = {**e.params, "MessageBody": body.decode(), "QueueUrl": self.opts.queue_url}
            sent = await self._aws.run(lambda c: c.send_message(**params))
        except Permanent as exc:
            return exc
        except Exception as exc:
            return self._classify(exc)
        e.claim_check = True
        return self._output(e, sent)

    def _output(self, e: _Entry, sent: dict[str, Any]) -> dict[str, Any]:
        return {
            "published": True,
            "queue_url": self.opts.queue_url,
            "message_id": sent.get("MessageId"),
            "sequence_number": sent.get("SequenceNumber"),
            "claim_check": e.claim_check,
        }

    def _attributes(self, ctx: DeliveryContext) -> dict[str, dict[str, str]]:
        values = message_headers(ctx)
        return {k: {"DataType": "String", "StringValue": v} for k, v in values.items() if v}

    def _classify(self, exc: BaseException) -> Retryable | Permanent:
        return classify(exc, self.target, _PERMANENT_HINTS, _RETRYABLE_CODES)


def _attributes_size(attributes: dict[str, dict[str, str]]) -> int:
    """As SQS counts them: each name, data type and value."""
    return sum(
        len(name.encode()) + len(a["DataType"].encode()) + len(a["StringValue"].encode())
        for name, a in attributes.items()
    )


def _chunks(entries: list[_Entry], opts: SqsOptions) -> Iterator[list[_Entry]]:
    """SendMessageBatch's limits: 10 entries, and their sizes together within what one
    message may be (SQS counts the batch like one message)."""
    chunk: list[_Entry] = []
    size = 0
    for e in entries:
        if chunk and (len(chunk) == BATCH_MAX or size + e.size > opts.max_message_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(e)
        size += e.size
    if chunk:
        yield chunk


def _entry_error(failed: dict[str, Any]) -> Exception:
    """A failed batch entry as the error a single send would have raised."""
    from botocore.exceptions import ClientError

    status = 400 if failed.get("SenderFault") else 500
    error = {"Code": failed.get("Code", ""), "Message": failed.get("Message", "")}
    response: Any = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
    failure: Exception = ClientError(response, "SendMessageBatch")
    return failure


def _sqs_id(value: str) -> str:
    """A group or deduplication id: printable ASCII up to 128 characters, else a digest."""
    if _ID_CHARS.match(value):
        return value
    return hashlib.sha256(value.encode()).hexdigest()


def _too_long(exc: BaseException) -> bool:
    from botocore import exceptions as bx

    if not isinstance(exc, bx.ClientError):
        return False
    err = exc.response.get("Error", {})
    text = f"{err.get('Code', '')} {err.get('Message', '')}".lower()
    return "shorter than" in text or "too long" in text or "messagetoolong" in text
