"""Queue sinks: events/s one falhook worker delivers to each queue sink, against the broker's
own client publishing the same messages in a loop with the same guarantee, same run.

falhook:  N small events (no files) accepted into a SQLite store, then one Worker (the real
          delivery loop, with the default [delivery] settings, and at each [delivery].concurrency
          of --concurrency) delivers them to the sink: events/s from the worker's start to the
          last delivery recorded (lease, sink, record: all of it). The sink's client is
          connected by a first event before the clock starts, as the bare client is.
sink:     the sink alone: its deliver() called for each event one after another, without
          worker or store (what the sink adds to the broker's client).
noop:     control: the same worker delivering the same events to a sink that does nothing
          (`type = "python"`, bench.queue_sinks:noop): the worker and store's own ceiling.
bare:     the same N event documents published by the broker's own client, one after
          another, each waiting for the same guarantee the sink waits for: Redis XADD's reply,
          RabbitMQ's publisher confirm (persistent, mandatory), JetStream's ack (with
          Nats-Msg-Id), SQS SendMessage's answer (boto3).
pipelined: the same client with 100 messages per round trip (SQS: SendMessageBatch of 10, its
          most): a Redis pipeline of XADDs, 100 JetStream publishes with their acks gathered,
          100 RabbitMQ publishes with their confirms awaited together.

Brokers: the machine's Redis (6379), RabbitMQ (5672), NATS JetStream (4222); SQS is moto's
server, started here as a subprocess. Rounds interleave the sides, rotating which goes
first; each run gets a fresh stream, queue or subject, removed afterwards. Nothing is pinned.

    .venv/bin/python bench/queue_sinks.py [--events 2000] [--sqs-events 500] [--rounds 3]
        [--brokers redis,amqp,nats,sqs] [--concurrency default,64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from falhook.config import settings_from_dict  # noqa: E402
from falhook.intake.envelope import parse_envelope  # noqa: E402
from falhook.intake.events import new_event  # noqa: E402
from falhook.logs import configure_logging  # noqa: E402
from falhook.runtime import Runtime  # noqa: E402
from falhook.testing import webhook_body  # noqa: E402
from falhook_sinks.base import EventInfo, SinkEnv  # noqa: E402
from falhook_sinks.messaging import encode  # noqa: E402
from falhook_sinks.registry import build_sink  # noqa: E402
from tests.support.brokers import (  # noqa: E402
    AMQP_URL,
    AmqpBroker,
    Broker,
    NatsBroker,
    RedisBroker,
    SqsBroker,
    make_broker,
)
from tests.support.moto import AWS_ENV, MotoProcess  # noqa: E402
from tests.support.sink_ctx import make_ctx  # noqa: E402

ROUTE = "reframe"
NOOP = {"type": "python", "handler": "bench.queue_sinks:noop"}


def events(n: int) -> list[tuple[str, bytes]]:
    return [webhook_body(str(uuid.uuid4()), payload={"text": "done", "seed": i}) for i in range(n)]


def document(rid: str, body: bytes) -> bytes:
    """The message the sink sends for this webhook (the event document, no files)."""
    env = parse_envelope(body)
    info = EventInfo(
        request_id=rid,
        route=ROUTE,
        fal_status=env.status,
        error=env.error,
        payload_error=env.payload_error,
        payload=env.payload,
        gateway_request_id=env.gateway_request_id,
        received_at=datetime.now(UTC),
        files=[],
        file_problems=[],
    )
    return encode(info.document())


async def noop(ctx: Any) -> None:
    """The control sink: takes the event, does nothing."""


# --- falhook: one worker ---------------------------------------------------------------------


async def falhook_run(
    sink: dict[str, Any], hooks: list[tuple[str, bytes]], work: Path, concurrency: int | None
) -> float:
    """One worker delivering `hooks` (concurrency None: the default settings)."""
    delivery: dict[str, Any] = {"poll_interval": 0.05}
    if concurrency is not None:
        delivery["concurrency"] = concurrency
    config = {
        "store": {"url": f"sqlite:///{work}/events.db"},
        "downloads": {"spool_dir": str(work / "spool")},
        "delivery": delivery,
        "sinks": {"queue": sink},
        "routes": {ROUTE: {"sinks": ["queue"]}},
    }
    rt = Runtime(settings_from_dict(config, base_dir=work), worker="on_demand")
    await rt.start()
    try:
        assert rt.worker is not None
        warm, *rest = hooks
        await accept(rt, [warm])
        await rt.worker.run_once()  # the sink's client connects before the clock starts
        await accept(rt, rest)
        stop = asyncio.Event()
        started = time.perf_counter()
        loop = asyncio.create_task(rt.worker.run(stop))
        deadline = started + 600
        while (await rt.store.counts()).get("delivered", 0) < len(hooks):
            if time.perf_counter() > deadline or loop.done():
                raise RuntimeError(f"falhook did not deliver: {await rt.store.counts()}")
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        stop.set()
        await loop
        return len(rest) / seconds
    finally:
        await rt.close()


async def accept(rt: Runtime, hooks: list[tuple[str, bytes]]) -> None:
    for _, body in hooks:
        event = new_event(parse_envelope(body), route=ROUTE, sinks=["queue"], body=body, headers={})
        await rt.store.accept(event)


async def sink_alone(broker: Broker, hooks: list[tuple[str, bytes]]) -> float:
    """The sink's deliver() in a loop, with contexts built beforehand."""
    options = broker.options()
    sink = build_sink("queue", options.pop("type"), options, SinkEnv(base_dir=ROOT))
    contexts = [
        make_ctx([], request_id=rid, payload=parse_envelope(body).payload) for rid, body in hooks
    ]
    try:
        started = time.perf_counter()
        for ctx in contexts:
            await sink.deliver(ctx)
        return len(hooks) / (time.perf_counter() - started)
    finally:
        await sink.aclose()


# --- bare clients ----------------------------------------------------------------------------


async def bare_redis(broker: RedisBroker, messages: list[tuple[str, bytes]]) -> float:
    from redis.asyncio import Redis

    async with Redis(port=broker.port) as r:
        started = time.perf_counter()
        for rid, body in messages:
            await r.xadd(broker.stream, {"request_id": rid, "route": ROUTE, "event": body})
        return len(messages) / (time.perf_counter() - started)


async def bare_amqp(broker: AmqpBroker, messages: list[tuple[str, bytes]]) -> float:
    import aio_pika

    async with await aio_pika.connect(AMQP_URL.format(port=broker.port)) as conn:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        started = time.perf_counter()
        for rid, body in messages:
            message = aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=rid,
                headers={"request_id": rid, "route": ROUTE},
            )
            await channel.default_exchange.publish(message, broker.queue, mandatory=True)
        return len(messages) / (time.perf_counter() - started)


async def bare_nats(broker: NatsBroker, messages: list[tuple[str, bytes]]) -> float:
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{broker.port}")
    try:
        js = nc.jetstream()
        subject = f"{broker.prefix}.{ROUTE}"
        started = time.perf_counter()
        for rid, body in messages:
            await js.publish(subject, body, headers={"Nats-Msg-Id": rid, "request_id": rid})
        return len(messages) / (time.perf_counter() - started)
    finally:
        await nc.close()


async def bare_sqs(broker: SqsBroker, messages: list[tuple[str, bytes]]) -> float:
    client = broker.client()
    started = time.perf_counter()
    for rid, body in messages:
        client.send_message(
            QueueUrl=broker.queue_url,
            MessageBody=body.decode(),
            MessageAttributes={
                "request_id": {"DataType": "String", "StringValue": rid},
                "route": {"DataType": "String", "StringValue": ROUTE},
            },
        )
    return len(messages) / (time.perf_counter() - started)


PER_TRIP = 100  # messages per round trip of the pipelined clients (SQS: 10, its most)


def trips(messages: list[tuple[str, bytes]], size: int = PER_TRIP) -> list[list[tuple[str, bytes]]]:
    return [messages[i : i + size] for i in range(0, len(messages), size)]


async def piped_redis(broker: RedisBroker, messages: list[tuple[str, bytes]]) -> float:
    from redis.asyncio import Redis

    async with Redis(port=broker.port) as r:
        started = time.perf_counter()
        for trip in trips(messages):
            pipe = r.pipeline(transaction=False)
            for rid, body in trip:
                pipe.xadd(broker.stream, {"request_id": rid, "route": ROUTE, "event": body})
            await pipe.execute()
        return len(messages) / (time.perf_counter() - started)


async def piped_amqp(broker: AmqpBroker, messages: list[tuple[str, bytes]]) -> float:
    import aio_pika

    async with await aio_pika.connect(AMQP_URL.format(port=broker.port)) as conn:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        started = time.perf_counter()
        for trip in trips(messages):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            body,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=rid,
                            headers={"request_id": rid, "route": ROUTE},
                        ),
                        broker.queue,
                        mandatory=True,
                    )
                    for rid, body in trip
                )
            )
        return len(messages) / (time.perf_counter() - started)


async def piped_nats(broker: NatsBroker, messages: list[tuple[str, bytes]]) -> float:
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{broker.port}")
    try:
        js = nc.jetstream()
        subject = f"{broker.prefix}.{ROUTE}"
        started = time.perf_counter()
        for trip in trips(messages):
            acks = [
                await js.publish_async(
                    subject, body, headers={"Nats-Msg-Id": rid, "request_id": rid}
                )
                for rid, body in trip
            ]
            await asyncio.gather(*acks)
        return len(messages) / (time.perf_counter() - started)
    finally:
        await nc.close()


async def piped_sqs(broker: SqsBroker, messages: list[tuple[str, bytes]]) -> float:
    client = broker.client()
    started = time.perf_counter()
    for trip in trips(messages, 10):
        client.send_message_batch(
            QueueUrl=broker.queue_url,
            Entries=[
                {
                    "Id": str(i),
                    "MessageBody": body.decode(),
                    "MessageAttributes": {
                        "request_id": {"DataType": "String", "StringValue": rid},
                        "route": {"DataType": "String", "StringValue": ROUTE},
                    },
                }
                for i, (rid, body) in enumerate(trip)
            ],
        )
    return len(messages) / (time.perf_counter() - started)


Client = Callable[[Any, list[tuple[str, bytes]]], Awaitable[float]]
BARE: dict[str, Client] = {
    "redis": bare_redis,
    "amqp": bare_amqp,
    "nats": bare_nats,
    "sqs": bare_sqs,
}
PIPED: dict[str, Client] = {
    "redis": piped_redis,
    "amqp": piped_amqp,
    "nats": piped_nats,
    "sqs": piped_sqs,
}


# --- the rounds ------------------------------------------------------------------------------


def sides(concurrencies: list[str]) -> list[str]:
    """bare, pipelined, sink, and falhook@C / noop@C for each worker concurrency C."""
    return ["bare", "piped", "sink"] + [
        f"{w}@{c}" for c in concurrencies for w in ("falhook", "noop")
    ]


async def one_side(kind: str, side: str, n: int, moto_url: str | None, tmp: Path) -> float:
    broker = make_broker(kind, moto_url)
    await broker.setup()
    try:
        hooks = events(n)
        if side in ("bare", "piped"):
            client = (BARE if side == "bare" else PIPED)[kind]
            return await client(broker, [(rid, document(rid, body)) for rid, body in hooks])
        if side == "sink":
            return await sink_alone(broker, hooks)
        work = Path(tempfile.mkdtemp(dir=tmp))
        who, _, concurrency = side.partition("@")
        sink = broker.options() if who == "falhook" else NOOP
        return await falhook_run(
            sink, hooks, work, None if concurrency == "default" else int(concurrency)
        )
    finally:
        await broker.teardown()


async def main_async(args: argparse.Namespace) -> None:
    kinds = [k for k in args.brokers.split(",") if k]
    moto = MotoProcess().start() if "sqs" in kinds else None
    os.environ.update(AWS_ENV)
    try:
        with tempfile.TemporaryDirectory(prefix="falhook-bench-queues-") as tmp:
            for kind in kinds:
                n = args.sqs_events if kind == "sqs" else args.events
                await report(kind, n, args, moto.url if moto else None, Path(tmp))
    finally:
        if moto is not None:
            moto.stop()


async def report(
    kind: str, n: int, args: argparse.Namespace, moto_url: str | None, tmp: Path
) -> None:
    concurrencies = [c for c in args.concurrency.split(",") if c]
    all_sides = sides(concurrencies)
    rates: dict[str, list[float]] = {side: [] for side in all_sides}
    for r in range(args.rounds):
        k = r % len(all_sides)
        for side in all_sides[k:] + all_sides[:k]:  # rotating which goes first
            rates[side].append(await one_side(kind, side, n, moto_url, tmp))

    def ratios(a: str, b: str) -> str:
        each = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        return f"{statistics.median(each):.2f} ({', '.join(f'{x:.2f}' for x in each)})"

    def figures(side: str) -> str:
        return ", ".join(f"{x:.0f}" for x in rates[side])

    lines = [
        f"{kind}, {n} events x {args.rounds} rounds (per second):",
        f"  bare {figures('bare')} | pipelined {figures('piped')} | sink alone {figures('sink')}"
        f" | sink alone/bare {ratios('sink', 'bare')}",
    ]
    for c in concurrencies:
        lines.append(
            f"  concurrency {c}: falhook worker {figures(f'falhook@{c}')} | worker with a no-op"
            f" sink {figures(f'noop@{c}')} | falhook/bare {ratios(f'falhook@{c}', 'bare')};"
            f" falhook/pipelined {ratios(f'falhook@{c}', 'piped')};"
            f" falhook/no-op worker {ratios(f'falhook@{c}', f'noop@{c}')}"
        )
    print("\n".join(lines), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--sqs-events", type=int, default=500, help="moto is slow: fewer for SQS")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--brokers", default="redis,amqp,nats,sqs")
    ap.add_argument(
        "--concurrency",
        default="default,64",
        help="the worker's [delivery].concurrency, each in turn (default: the default settings)",
    )
    args = ap.parse_args()
    # As `falhook worker` logs: JSON lines on stderr (sent to a file or /dev/null by the caller).
    configure_logging(json=True)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
