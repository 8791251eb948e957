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

One connection, opened on first use and again after it is lost; the client's own reconnect
loop is off (it would hold publishes in a buffer): the worker's retry is the reconnect.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta

from falhook_sinks.base import DeliveryContext, EventInfo, Permanent, Retryable, SinkEnv
from falhook_sinks.messaging import (
    CONTENT_TYPE,
    Connection,
    PublishMode,
    QueueSink,
    SecretUrl,
    event_message,
    fitted,
    message_headers,
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


class NatsSink(QueueSink[NatsOptions]):
    options_type = NatsOptions
    client = ("nats", "nats", "nats-py")
    kind = "nats message"

    def __init__(self, name: str, opts: NatsOptions, env: SinkEnv) -> None:
        super().__init__(name, opts, env)
        self.credentials = str(env.base_dir / Path(opts.credentials)) if opts.credentials else None
        self.url = SecretUrl(opts.url)
        self._conn: Connection[Any] = Connection(self._open, _close, _usable)

    async def _open(self) -> Any:
        import nats

        async def quiet(exc: Exception) -> None:
            """The client reports errors here; the failing call raises them to us too."""

        # Each server tried twice at most, then NoServersError; bounded here all the same.
        async with asyncio.timeout(self.opts.connect_timeout * 2 + 1):
            return await nats.connect(
                servers=[s.strip() for s in self.opts.url.split(",")],
                name=f"falhook {self.name}",
                connect_timeout=max(1, round(self.opts.connect_timeout)),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                user_credentials=self.credentials,
                error_cb=quiet,
            )

    async def aclose(self) -> None:
        await self._conn.aclose()

    async def publish(self, ctx: DeliveryContext, mode: PublishMode) -> dict[str, Any]:
        event = ctx.event
        subject = self.opts.subject.format_map(subject_values(event))
        target = f"nats subject {subject!r} on {self.url.shown}"
        if not valid_subject(subject):
            raise Permanent(f"{target}: not a valid subject")
        nc = None
        try:
            nc = await self._conn.get()
            limit = max(1024, nc.max_payload - _HEADROOM)
            body, checked = fitted(ctx, event_message(ctx), limit, target)
            ack, msg_id = await self._publish(nc, ctx, subject, body, first_attempt=mode == "fresh")
        except (Permanent, Retryable):
            raise
        except Exception as exc:
            error = await self._classify(exc, nc, subject, target)
            if nc is not None and isinstance(error, Retryable):
                await self._conn.discard(nc)
            raise error from None
        ctx.log.info(
            "nats message published", subject=subject, seq=ack.seq, duplicate=ack.duplicate
        )
        return {
            "published": True,
            "subject": subject,
            "stream": ack.stream,
            "seq": ack.seq,
            "msg_id": msg_id,
            "duplicate": bool(ack.duplicate),
            "claim_check": checked,
        }

    async def _publish(
        self, nc: Any, ctx: DeliveryContext, subject: str, body: bytes, *, first_attempt: bool
    ) -> tuple[Any, str]:
        """Publish under the request id; on a first attempt the stream says is a duplicate
        (a forced replay inside the duplicate window), publish again under a new id."""
        js = nc.jetstream(timeout=self.opts.ack_timeout)
        event = ctx.event
        headers = {"Content-Type": CONTENT_TYPE, **message_headers(ctx)}
        msg_id = event.request_id
        for _ in range(_MAX_FORCED):
            ack = await js.publish(
                subject,
                body,
                timeout=self.opts.ack_timeout,
                stream=self.opts.stream,
                headers={**headers, "Nats-Msg-Id": msg_id},
            )
            if not (first_attempt and ack.duplicate):
                return ack, msg_id
            msg_id = f"{event.request_id}.{ack.seq}"
        raise Permanent(
            f"nats subject {subject!r}: {_MAX_FORCED} forced publishes in a row were duplicates"
        )

    async def _classify(
        self, exc: Exception, nc: Any, subject: str, target: str
    ) -> Retryable | Permanent:
        import nats.errors as ne
        import nats.js.errors as jse

        detail = self.url.scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, jse.NoStreamResponseError):
            if nc is not None and await self._no_stream_for(nc, subject):
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

    async def _no_stream_for(self, nc: Any, subject: str) -> bool:
        """True only when JetStream answers that no stream captures `subject`."""
        import nats.js.errors as jse

        try:
            await nc.jetstream(timeout=self.opts.ack_timeout).find_stream_name_by_subject(subject)
        except jse.NotFoundError:
            return True
        except Exception:
            return False
        return False


def _usable(nc: Any) -> bool:
    return bool(nc.is_connected)


async def _close(nc: Any) -> None:
    await nc.close()
