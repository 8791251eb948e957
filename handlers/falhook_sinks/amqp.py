"""RabbitMQ (AMQP 0-9-1) sink: one persistent message per event, confirmed by the broker.

- Publisher confirms: a delivery counts once the broker has taken the message (for a durable
  queue, written it); a nack, or no confirm within ``confirm_timeout`` (the broker may be
  blocking publishers under a memory or disk alarm), is retried.
- ``mandatory``: a message no queue is bound to receive comes back and is retried (a consumer
  may declare its queue later), never dropped silently. A missing exchange is permanent.
- ``message_id`` is the request id; headers ``request_id``, ``route``, ``fal_status`` and the
  propagation headers. Published once per event across retries and replays (``ctx.previous``),
  but RabbitMQ has no deduplication: a worker that dies after the confirm and before recording
  it publishes again on the next attempt, so consumers deduplicate on ``message_id``.

The events the worker hands over together (``deliver_batch``) are published at once and
their confirms awaited together: one round trip for the batch, each confirm its own event's.
One connection and one confirming channel, opened on first use, shared by every delivery and
opened again after a failure (a broker restart): the worker's retry is the reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from msgspec import Meta

from falhook_sinks.base import BatchResult, DeliveryContext, Permanent, Retryable, SinkEnv
from falhook_sinks.messaging import (
    CONTENT_TYPE,
    Connection,
    PublishMode,
    QueueSink,
    SecretUrl,
    encode,
    event_message,
    message_headers,
    settled,
)
from falhook_sinks.options import Invalid, SinkOptions
from falhook_sinks.templates import check_template, render

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection

MAX_ROUTING_KEY = 255  # bytes (AMQP short string)


class AmqpOptions(SinkOptions):
    url: str  # amqp://user:password@host:5672/vhost, amqps:// for TLS
    exchange: str = ""  # "": the default exchange, routing_key naming the queue
    routing_key: str = "{route}"
    persistent: bool = True  # delivery mode 2: kept across a broker restart on durable queues
    confirm_timeout: Annotated[float, Meta(gt=0)] = 30.0
    connect_timeout: Annotated[float, Meta(gt=0)] = 10.0

    def check(self) -> None:
        if not self.url.startswith(("amqp://", "amqps://")):
            raise Invalid("url", "must be an amqp:// or amqps:// URL")
        check_template(self.routing_key, "routing_key")


class _Link:
    """The connection and its confirming channel."""

    def __init__(self, connection: AbstractConnection, channel: AbstractChannel) -> None:
        self.connection, self.channel = connection, channel

    def usable(self) -> bool:
        return not self.connection.is_closed and not self.channel.is_closed

    async def close(self) -> None:
        await self.connection.close()


class AmqpSink(QueueSink[AmqpOptions]):
    options_type = AmqpOptions
    client = ("amqp", "aio_pika", "aio-pika")
    kind = "amqp message"

    def __init__(self, name: str, opts: AmqpOptions, env: SinkEnv) -> None:
        super().__init__(name, opts, env)
        self.url = SecretUrl(opts.url)
        self._link: Connection[_Link] = Connection(self._open, _Link.close, _Link.usable)

    async def _open(self) -> _Link:
        import aio_pika

        connection = await aio_pika.connect(
            self.opts.url,
            timeout=self.opts.connect_timeout,
            client_properties={"connection_name": f"falhook {self.name}"},
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException:
            await connection.close()
            raise
        return _Link(connection, channel)

    async def aclose(self) -> None:
        await self._link.aclose()

    async def publish_batch(
        self, batch: Sequence[tuple[DeliveryContext, PublishMode]]
    ) -> list[BatchResult]:
        """Every event's message published on the confirming channel at once, then the
        broker's confirms awaited together: one round trip for the batch, each confirm (or
        return, or nack) its own event's."""
        results: list[BatchResult] = [None] * len(batch)
        messages: list[tuple[int, str]] = []  # index, routing key
        for i, (ctx, _) in enumerate(batch):
            routing_key = render(self.opts.routing_key, ctx.event)
            if len(routing_key.encode()) > MAX_ROUTING_KEY:
                target = self._target(routing_key)
                results[i] = Permanent(f"{target}: the routing key is over {MAX_ROUTING_KEY} bytes")
                continue
            messages.append((i, routing_key))
        if not messages:
            return results
        link: _Link | None = None
        try:
            link = await self._link.get()
            exchange = link.channel.default_exchange
            if self.opts.exchange:
                exchange = await link.channel.get_exchange(self.opts.exchange, ensure=False)
        except Exception as exc:
            if link is not None:
                await self._link.discard(link)
            for i, routing_key in messages:
                results[i] = self._classify(exc, self._target(routing_key))
            return results
        confirms = await settled(
            [
                exchange.publish(
                    self._message(batch[i][0]),
                    routing_key,
                    mandatory=True,
                    timeout=self.opts.confirm_timeout,
                )
                for i, routing_key in messages
            ]
        )
        # A missing exchange closes the channel: the first message says why, the others only
        # that the channel closed under them. Each is told why.
        missing = next((c for c in confirms if isinstance(c, _not_found_types())), None)
        broken = False
        for (i, routing_key), confirm in zip(messages, confirms, strict=True):
            if not isinstance(confirm, BaseException):
                results[i] = self._output(routing_key, batch[i][0])
                continue
            error = confirm if isinstance(confirm, Exception) else TimeoutError(repr(confirm))
            if missing is not None:
                error = missing
            results[i] = self._classify(error, self._target(routing_key))
            broken = broken or not isinstance(error, _returned_types())
        if broken:  # the channel may be gone: the next batch opens a new one
            await self._link.discard(link)
        return results

    def _output(self, routing_key: str, ctx: DeliveryContext) -> dict[str, Any]:
        return {
            "published": True,
            "exchange": self.opts.exchange,
            "routing_key": routing_key,
            "message_id": ctx.event.request_id,
        }

    def _message(self, ctx: DeliveryContext) -> Any:
        import aio_pika

        event = ctx.event
        headers: dict[str, Any] = message_headers(ctx)
        return aio_pika.Message(
            encode(event_message(ctx)),
            content_type=CONTENT_TYPE,
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if self.opts.persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            message_id=event.request_id,
            timestamp=event.received_at,
            type=event.event_type,
            app_id="falhook",
            headers=headers,
        )

    def _target(self, routing_key: str) -> str:
        exchange = repr(self.opts.exchange) if self.opts.exchange else "the default exchange"
        return f"amqp {exchange} (routing key {routing_key!r}) on {self.url.shown}"

    def _classify(self, exc: Exception, target: str) -> Retryable | Permanent:
        from aiormq import exceptions as ax

        detail = self.url.scrub(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, ax.PublishError):
            return Retryable(f"{target}: unroutable, returned by the broker (no queue bound)")
        if isinstance(exc, ax.DeliveryError):
            return Retryable(f"{target}: the broker refused the message (nack)")
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return Retryable(
                f"{target}: not confirmed within {self.opts.confirm_timeout:g} s"
                " (the broker may be blocking publishers: a memory or disk alarm)"
            )
        if isinstance(exc, ax.ChannelNotFoundEntity):
            return Permanent(f"{target}: the exchange does not exist ({detail})")
        if isinstance(exc, ax.ProbableAuthenticationError | ax.AuthenticationError):
            return Permanent(f"{target}: authentication failed ({detail})")
        if isinstance(exc, ax.ChannelAccessRefused | ax.ConnectionNotAllowed):
            return Permanent(f"{target}: access refused ({detail})")
        return Retryable(f"{target}: {detail}")


def _not_found_types() -> tuple[type[Exception], ...]:
    from aiormq import exceptions as ax

    return (ax.ChannelNotFoundEntity,)


def _returned_types() -> tuple[type[Exception], ...]:
    """Failures that leave the channel open: the message came back or was nacked."""
    from aiormq import exceptions as ax

    return (ax.DeliveryError,)
