"""NATS JetStream sink: one message per event, acknowledged by the stream.

- Published with header ``Nats-Msg-Id`` = request id (plus ``request_id``, ``route``,
  ``fal_status``, ``Content-Type`` and the propagation headers), and counted once the stream's
  acknowledgement arrives. JetStream drops a second message with the same id within the
  stream's ``duplicate_window`` (2 minutes by default), so a re-send after a lost answer or a
  worker crash leaves one message.
- ``events replay --force`` must publish again, even inside that window: a first attempt
  (see falhook_sinks.messaging) that the stream acknowledges as a duplicate publishes once
  more with the id ``<request_id>.<sequence of the message it duplicates>``.
- A subject that no stream captures is a permanent error naming the subject (once a lookup
  confirms it: right after a server restart JetStream may not answer yet, which is retried).
- An event over the server's ``max_payload`` (1 MiB by default) is sent as a claim check.

The events the worker hands over together (``deliver_batch``) are published at once and
their acks gathered: one round trip for the batch, each ack (or error) its own event's. One
connection, opened on first use and again after it is lost; the client's own reconnect loop
is off (it would hold publishes in a buffer): the worker's retry is the reconnect.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta

from falhook_sinks.base import (
    BatchResult,
    DeliveryContext,
    EventInfo,
    Permanent,
    Retryable,
    SinkEnv,
)
from falhook_sinks.messaging import (
    CONTENT_TYPE,
    Connection,
    PublishMode,
    QueueSink,
    SecretUrl,
    event_message,
    fitted,
    message_headers,
    settled,
)
from falhook_sinks.options import Invalid, SinkOptions
from falhook_sinks.templates import FIELDS, check_template, event_values

_TOKEN = re.compile(r"^[^\s.*>]+$")  # one subject token: no dots, wildcards or spaces
_MAX_FORCED = 8  # forced re-publishes of one event inside the duplicate window
_HEADROOM = 4096  # bytes of max_payload left for the headers


class NatsOptions(SinkOptions):
    url: str  # nats://[user:password@]host:4222, tls://...; several separated by commas
    subject: str = "falhook.{route}"
    stream: str | None = None  # the stream expected to capture the subject (checked per publish)
    credentials: str | None = None  # a .creds file (relative to the config file's folder)
    ack_timeout: Annotated[float, Meta(gt=0)] = 10.0
    connect_timeout: Annotated[float, Meta(gt=0)] = 10.0

    def check(self) -> None:
        for server in self.url.split(","):
            if not server.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise Invalid("url", "must be nats:// (or tls://, ws://, wss://) URLs")
        check_template(self.subject, "subject")
        sample = self.subject.format_map(dict.fromkeys(FIELDS, "x"))
        if not valid_subject(sample):
            raise Invalid("subject", "must be dot-separated tokens without spaces, * or >")


def subject_values(event: EventInfo) -> dict[str, str]:
    """Template values as subject tokens: dots would split a value into several tokens, so
    they become `_`; the endpoint id's `/` become dots (`luma.agent.ray.v3_2.reframe`)."""
    values = event_values(event)
    tokens = {k: v.replace(".", "_") for k, v in values.items()}
    tokens["endpoint"] = ".".join(p.replace(".", "_") for p in values["endpoint"].split("/"))
    return tokens


def valid_subject(subject: str) -> bool:
    return bool(subject) and all(_TOKEN.match(token) for token in subject.split("."))


class _Link:
    """The connection and its JetStream context."""

    def __init__(self, nc: Any, ack_timeout: float) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=ack_timeout)

    def usable(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        await self.nc.close()


@dataclass
class _Message:
    """One event's message on its way: where it goes and what it holds."""

    index: int  # in the batch
    ctx: DeliveryContext
    mode: PublishMode
    subject: str
    target: str
    body: bytes = b""
    claim_check: bool = False


class NatsSink(QueueSink[NatsOptions]):
    options_type = NatsOptions
    client = ("nats", "nats", "nats-py")
    kind = "nats message"

    def __init__(self, name: str, opts: NatsOptions, env: SinkEnv) -> None:
        super().__init__(name, opts, env)
        self.credentials = str(env.base_dir / Path(opts.credentials)) if opts.credentials else None
        self.url = SecretUrl(opts.url)
        self._link: Connection[_Link] = Connection(self._open, _Link.close, _Link.usable)

    async def _open(self) -> _Link:
        import nats

        async def quiet(exc: Exception) -> None:
            """The client reports errors here; the failing call raises them to us too."""

        # Each server tried twice at most, then NoServersError; bounded here all the same.
        async with asyncio.timeout(self.opts.connect_timeout * 2 + 1):
            nc = await nats.connect(
                servers=[s.strip() for s in self.opts.url.split(",")],
                name=f"falhook {self.name}",
                connect_timeout=max(1, round(self.opts.connect_timeout)),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                user_credentials=self.credentials,
                error_cb=quiet,
            )
        return _Link(nc, self.opts.ack_timeout)

    async def aclose(self) -> None:
        await self._link.aclose()

    async def publish_batch(
        self, batch: Sequence[tuple[DeliveryContext, PublishMode]]
    ) -> list[BatchResult]:
        """Every event's message published at once, then the stream's acks gathered: one
        round trip for the batch, each ack (or error) its own event's."""
        results: list[BatchResult] = [None] * len(batch)
        messages: list[_Message] = []
        for i, (ctx, mode) in enumerate(batch):
            subject = self.opts.subject.format_map(subject_values(ctx.event))
            target = f"nats subject {subject!r} on {self.url.shown}"
            if not valid_subject(subject):
                results[i] = Permanent(f"{target}: not a valid subject")
                continue
            messages.append(_Message(i, ctx, mode, subject, target))
        if not messages:
            return results
        link = None
        lookups: dict[str, bool] = {}  # subject -> no stream captures it (asked once a batch)
        try:
            link = await self._link.get()
            answers = await self._publish_all(link, messages, results)
        except Exception as exc:  # the connection, for the whole batch
            for m in messages:
                results[m.index] = await self._classify(exc, link, m, lookups)
            if link is not None:
                await self._link.discard(link)
            return results
        lost = False
        for m, answer in answers:
            if isinstance(answer, BaseException):
                failed = answer if isinstance(answer, Exception) else TimeoutError(repr(answer))
                results[m.index] = error = await self._classify(failed, link, m, lookups)
                lost = lost or (isinstance(error, Retryable) and not _from_jetstream(failed))
                continue
            try:
                if m.mode == "fresh" and answer.duplicate:
                    answer, msg_id = await self._force(link, m, answer)
                else:
                    msg_id = m.ctx.event.request_id
            except Exception as exc:
                results[m.index] = await self._classify(exc, link, m, lookups)
                continue
            results[m.index] = self._output(m, answer, msg_id)
        if lost:  # an ack that never came: the next batch opens a new connection
            await self._link.discard(link)
        return results

    async def _publish_all(
        self, link: _Link, messages: list[_Message], results: list[BatchResult]
    ) -> list[tuple[_Message, Any]]:
        """Publish every message at once and gather the stream's acks, each bounded by
        ack_timeout: (message, its ack or its error). A message too large even as a claim
        check fails alone (in `results`).

        Each publish is a request whose reply comes to the connection's shared inbox, so the
        messages go out together and their acks come back together: one round trip. Not
        nats-py's ``publish_async``: in nats-py 2.16 a stream's error reply (an expected
        stream that does not match, say) raises inside its reply handler, and the message
        then times out instead of failing with its reason."""
        limit = max(1024, link.nc.max_payload - _HEADROOM)
        sent: list[_Message] = []
        for m in messages:
            try:
                m.body, m.claim_check = fitted(m.ctx, event_message(m.ctx), limit, m.target)
            except Permanent as exc:
                results[m.index] = exc
                continue
            sent.append(m)
        acks = await settled(
            [
                link.js.publish(
                    m.subject,
                    m.body,
                    timeout=self.opts.ack_timeout,
                    stream=self.opts.stream,
                    headers=self._headers(m.ctx, m.ctx.event.request_id),
                )
                for m in sent
            ]
        )
        return list(zip(sent, acks, strict=True))

    async def _force(self, link: _Link, m: _Message, ack: Any) -> tuple[Any, str]:
        """A first attempt the stream took for a duplicate (a forced replay inside the
        duplicate window): publish again under a new id, `<request_id>.<its sequence>`."""
        request_id = m.ctx.event.request_id
        for _ in range(_MAX_FORCED):
            msg_id = f"{request_id}.{ack.seq}"
            ack = await link.js.publish(
                m.subject,
                m.body,
                timeout=self.opts.ack_timeout,
                stream=self.opts.stream,
                headers=self._headers(m.ctx, msg_id),
            )
            if not ack.duplicate:
                return ack, msg_id
        raise Permanent(
            f"nats subject {m.subject!r}: {_MAX_FORCED} forced publishes in a row were duplicates"
        )

    def _headers(self, ctx: DeliveryContext, msg_id: str) -> dict[str, str]:
        return {"Content-Type": CONTENT_TYPE, **message_headers(ctx), "Nats-Msg-Id": msg_id}

    def _output(self, m: _Message, ack: Any, msg_id: str) -> dict[str, Any]:
        if ack.duplicate:
            m.ctx.log.info("nats message was already in the stream", seq=ack.seq)
        return {
            "published": True,
            "subject": m.subject,
            "stream": ack.stream,
            "seq": ack.seq,
            "msg_id": msg_id,
            "duplicate": bool(ack.duplicate),
            "claim_check": m.claim_check,
        }

    async def _classify(
        self, exc: Exception, link: _Link | None, m: _Message, lookups: dict[str, bool]
    ) -> Retryable | Permanent:
        import nats.errors as ne
        import nats.js.errors as jse

        detail = self.url.scrub(f"{type(exc).__name__}: {exc}")
        target = m.target
        if isinstance(exc, jse.NoStreamResponseError):
            if link is not None and m.subject not in lookups:
                lookups[m.subject] = await self._no_stream_for(link, m.subject)
            if lookups.get(m.subject):
                return Permanent(f"{target}: no JetStream stream captures this subject")
            return Retryable(f"{target}: JetStream did not answer (no responders)")
        if isinstance(exc, jse.APIError):
            text = f"{target}: JetStream error {exc.code} {exc.err_code}: {exc.description}"
            if exc.code in (503, 408) or exc.code is None or exc.code >= 500:
                return Retryable(text)
            return Permanent(text)  # e.g. 400 expected stream mismatch, 404 stream not found
        if isinstance(exc, ne.AuthorizationError | ne.InvalidUserCredentialsError):
            return Permanent(f"{target}: authorization failed ({detail})")
        if isinstance(exc, ne.MaxPayloadError | ne.BadSubjectError | ne.BadHeaderError):
            return Permanent(f"{target}: {detail}")
        if isinstance(exc, FileNotFoundError):
            return Permanent(f"{target}: credentials file not found")
        return Retryable(f"{target}: {detail}")

    async def _no_stream_for(self, link: _Link, subject: str) -> bool:
        """True only when JetStream answers that no stream captures `subject`."""
        import nats.js.errors as jse

        try:
            await link.js.find_stream_name_by_subject(subject)
        except jse.NotFoundError:
            return True
        except Exception:
            return False
        return False


def _from_jetstream(exc: BaseException) -> bool:
    """An answer of the stream itself (the connection worked)."""
    import nats.js.errors as jse

    return isinstance(exc, jse.APIError)
