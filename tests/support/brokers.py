"""The machine's brokers, seen by tests through their own clients: Redis (127.0.0.1:6379),
RabbitMQ (127.0.0.1:5672, guest/guest), NATS with JetStream (127.0.0.1:4222), and SQS through
moto's server. Each adapter makes its own stream, queue or subject (`setup`), names the sink
options that publish there (optionally through a relay port), reads back what arrived with
the broker's own client (`messages`, parsed), and removes everything (`teardown`).

Methods are async (the clients are): sync tests call them through `asyncio.run`, as
`open_broker` does for a fixture.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

AMQP_URL = "amqp://guest:guest@127.0.0.1:{port}/"
MAX_READ = 10_000  # messages read back at most: every loop here is bounded


@dataclass
class Received:
    event: dict[str, Any]  # the message body, parsed
    meta: dict[str, Any] = field(default_factory=dict)  # headers, fields or attributes


class Broker:
    kind = ""  # the sink type
    label = ""  # the kind of test broker: the sink type, or "sqs-fifo"
    port = 0  # the real broker's port on 127.0.0.1 (a relay goes in front of it)

    def __init__(self) -> None:
        self.tag = secrets.token_hex(4)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def options(self, port: int | None = None) -> dict[str, Any]:
        raise NotImplementedError

    async def setup(self) -> None:
        pass

    async def messages(self) -> list[Received]:
        raise NotImplementedError

    async def teardown(self) -> None:
        pass


class RedisBroker(Broker):
    kind, port = "redis", 6379

    def __init__(self) -> None:
        super().__init__()
        self.stream = f"falhook-test:{self.tag}"

    def options(self, port: int | None = None) -> dict[str, Any]:
        url = f"redis://127.0.0.1:{port or self.port}/0"
        return {"type": "redis", "url": url, "stream": self.stream, "timeout": 5}

    async def messages(self) -> list[Received]:
        from redis.asyncio import Redis

        async with Redis(port=self.port) as r:
            entries = await r.xrange(self.stream, count=MAX_READ)
        found = []
        for _, fields in entries:
            meta = {k.decode(): v.decode() for k, v in fields.items() if k != b"event"}
            found.append(Received(json.loads(fields[b"event"]), meta))
        return found

    async def teardown(self) -> None:
        from redis.asyncio import Redis

        async with Redis(port=self.port) as r:
            markers = [k async for k in r.scan_iter(f"falhook:published:{self.stream}:*")]
            await r.delete(self.stream, *markers)


class AmqpBroker(Broker):
    kind, port = "amqp", 5672

    def __init__(self) -> None:
        super().__init__()
        self.queue = f"falhook-test-{self.tag}"
        self._seen: list[Received] = []  # a read takes messages off the queue: kept here

    def options(self, port: int | None = None) -> dict[str, Any]:
        url = AMQP_URL.format(port=port or self.port)
        return {"type": "amqp", "url": url, "routing_key": self.queue, "confirm_timeout": 5}

    async def setup(self) -> None:
        import aio_pika

        async with await aio_pika.connect(AMQP_URL.format(port=self.port)) as conn:
            channel = await conn.channel()
            await channel.declare_queue(self.queue, durable=True)

    async def messages(self) -> list[Received]:
        import aio_pika

        async with await aio_pika.connect(AMQP_URL.format(port=self.port)) as conn:
            channel = await conn.channel()
            queue = await channel.declare_queue(self.queue, passive=True)
            for _ in range(MAX_READ):
                msg = await queue.get(no_ack=True, fail=False)
                if msg is None:
                    break
                meta = {
                    **(msg.headers or {}),
                    "message_id": msg.message_id,
                    "content_type": msg.content_type,
                    "delivery_mode": int(msg.delivery_mode or 0),
                    "type": msg.type,
                }
                self._seen.append(Received(json.loads(msg.body), meta))
        return list(self._seen)

    async def teardown(self) -> None:
        import aio_pika

        async with await aio_pika.connect(AMQP_URL.format(port=self.port)) as conn:
            channel = await conn.channel()
            await channel.queue_delete(self.queue)


class NatsBroker(Broker):
    kind, port = "nats", 4222

    def __init__(self) -> None:
        super().__init__()
        self.stream = f"FALHOOK_TEST_{self.tag.upper()}"
        self.prefix = f"falhooktest{self.tag}"

    def options(self, port: int | None = None) -> dict[str, Any]:
        url = f"nats://127.0.0.1:{port or self.port}"
        subject = self.prefix + ".{route}"
        return {"type": "nats", "url": url, "subject": subject, "ack_timeout": 5}

    async def setup(self) -> None:
        import nats

        nc = await nats.connect(f"nats://127.0.0.1:{self.port}")
        try:
            await nc.jetstream().add_stream(name=self.stream, subjects=[self.prefix + ".>"])
        finally:
            await nc.close()

    async def messages(self) -> list[Received]:
        import nats

        nc = await nats.connect(f"nats://127.0.0.1:{self.port}")
        try:
            js = nc.jetstream()
            state = (await js.stream_info(self.stream)).state
            found = []
            for seq in range(state.first_seq, min(state.last_seq, MAX_READ) + 1):
                if state.messages == 0:
                    break
                msg = await js.get_msg(self.stream, seq)
                found.append(Received(json.loads(msg.data or b"{}"), dict(msg.headers or {})))
            return found
        finally:
            await nc.close()

    async def teardown(self) -> None:
        import nats

        nc = await nats.connect(f"nats://127.0.0.1:{self.port}")
        try:
            await nc.jetstream().delete_stream(self.stream)
        finally:
            await nc.close()


class SqsBroker(Broker):
    kind = "sqs"

    def __init__(self, moto_url: str, *, fifo: bool = False) -> None:
        super().__init__()
        self.moto_url = moto_url
        self.port = int(moto_url.rsplit(":", 1)[1])
        self.fifo = fifo
        self.name = f"falhook-test-{self.tag}" + (".fifo" if fifo else "")
        self.queue_url = ""

    def client(self) -> Any:
        import boto3

        from tests.support.moto import AWS_ENV

        return boto3.client(
            "sqs",
            endpoint_url=self.moto_url,
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def options(self, port: int | None = None) -> dict[str, Any]:
        return {
            "type": "sqs",
            "queue_url": self.queue_url,
            "endpoint_url": f"http://127.0.0.1:{port or self.port}",
            "region": "us-east-1",
            "connect_timeout": 2,
            "read_timeout": 5,
        }

    async def setup(self) -> None:
        attributes = {"FifoQueue": "true"} if self.fifo else {}
        made = self.client().create_queue(QueueName=self.name, Attributes=attributes)
        self.queue_url = made["QueueUrl"]

    async def messages(self) -> list[Received]:
        """A peek: received with no visibility timeout and never deleted, because moto's FIFO
        deduplication (unlike SQS's) forgets a deleted message. Up to 10 messages."""
        client = self.client()
        seen: dict[str, Received] = {}
        for _ in range(20):
            got = client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=0,
                MessageAttributeNames=["All"],
                AttributeNames=["All"],
            ).get("Messages", [])
            new = [m for m in got if m["MessageId"] not in seen]
            if not new:
                break
            for msg in new:
                meta: dict[str, Any] = {
                    k: v["StringValue"] for k, v in msg.get("MessageAttributes", {}).items()
                }
                meta.update(msg.get("Attributes", {}))
                seen[msg["MessageId"]] = Received(json.loads(msg["Body"]), meta)
        return sorted(seen.values(), key=lambda r: int(r.meta.get("SentTimestamp", 0)))

    async def teardown(self) -> None:
        if self.queue_url:
            self.client().delete_queue(QueueUrl=self.queue_url)


KINDS = ["redis", "amqp", "nats", "sqs"]


def make_broker(kind: str, moto_url: str | None = None) -> Broker:
    """A broker adapter by kind ("sqs-fifo": an SQS FIFO queue), labelled with that kind."""
    made: Broker
    if kind == "redis":
        made = RedisBroker()
    elif kind == "amqp":
        made = AmqpBroker()
    elif kind == "nats":
        made = NatsBroker()
    elif kind in ("sqs", "sqs-fifo"):
        assert moto_url is not None, "SQS needs moto's server"
        made = SqsBroker(moto_url, fifo=kind == "sqs-fifo")
    else:
        raise ValueError(f"unknown broker kind {kind!r}")
    made.label = kind
    return made


def open_broker(kind: str, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """For a fixture (`yield from open_broker(kind, request)`): a broker of `kind` set up for
    this test and removed after it; an SQS kind uses the test's `moto` server."""
    moto_url = request.getfixturevalue("moto").url if kind.startswith("sqs") else None
    made = make_broker(kind, moto_url)
    asyncio.run(made.setup())
    yield made
    asyncio.run(made.teardown())
