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

import hashlib
import re
from typing import Annotated, Any

from msgspec import Meta

from falhook_sinks.aws import ThreadedClient, classify
from falhook_sinks.base import DeliveryContext, Permanent, Retryable, SinkEnv
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

    async def _send(self, params: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._aws.run(lambda c: c.send_message(**params))
        return result

    async def aclose(self) -> None:
        self._aws.close()

    async def publish(self, ctx: DeliveryContext, mode: PublishMode) -> dict[str, Any]:
        attributes = self._attributes(ctx)
        room = self.opts.max_message_bytes - _attributes_size(attributes)
        doc = event_message(ctx)
        body, checked = fitted(ctx, doc, room, self.target)
        params = {"QueueUrl": self.opts.queue_url, "MessageAttributes": attributes}
        if self.fifo:
            params["MessageGroupId"] = _sqs_id(ctx.event.route)
            params["MessageDeduplicationId"] = _sqs_id(ctx.event.request_id)
        try:
            try:
                sent = await self._send({**params, "MessageBody": body.decode()})
            except Exception as exc:
                if checked or not _too_long(exc):
                    raise
                ctx.log.warning("sqs queue refused the size; sending a claim check")
                why = f"the queue refused {len(body)} bytes (its MaximumMessageSize is lower)"
                body = claim_check(ctx, doc, why, room, self.target)
                checked = True
                sent = await self._send({**params, "MessageBody": body.decode()})
        except Permanent:
            raise
        except Exception as exc:
            raise self._classify(exc) from None
        ctx.log.info("sqs message sent", message_id=sent.get("MessageId"), claim_check=checked)
        return {
            "published": True,
            "queue_url": self.opts.queue_url,
            "message_id": sent.get("MessageId"),
            "sequence_number": sent.get("SequenceNumber"),
            "claim_check": checked,
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
