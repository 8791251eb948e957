"""The queue sinks one by one, called directly against the machine's brokers: what a message
carries (links to stored copies, propagation headers, each broker's properties), claim checks
over a size limit, errors classified and named without secrets, and options checked at
start-up."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from falhook_sinks import messaging
from falhook_sinks.base import DeliveryContext, OptionError, Permanent, Retryable, Sink, SinkEnv
from falhook_sinks.registry import build_sink
from tests.support.brokers import KINDS, AmqpBroker, Broker, NatsBroker, RedisBroker, open_broker
from tests.support.sink_ctx import local_file, make_ctx

STORED = "http://127.0.0.1:9/bucket/fal/reframe/req-123/clip.mp4?X-Amz-Signature=abc"
EVENT_URL = "http://127.0.0.1:9/bucket/fal/reframe/req-123/event.json?X-Amz-Signature=def"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ENV = SinkEnv(base_dir=Path("."))


def sink_for(options: dict[str, Any], name: str = "queue") -> Sink:
    options = dict(options)
    return build_sink(name, options.pop("type"), options, ENV)


async def deliver(sink: Sink, ctx: DeliveryContext) -> dict[str, Any]:
    try:
        out = await sink.deliver(ctx)
        assert out is not None
        return out
    finally:
        await sink.aclose()


@pytest.fixture(params=KINDS)
def broker(request: pytest.FixtureRequest, aws_env: None) -> Iterator[Broker]:
    yield from open_broker(request.param, request)


@pytest.fixture
def redis_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    yield from open_broker("redis", request)


@pytest.fixture
def amqp_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    yield from open_broker("amqp", request)


@pytest.fixture
def nats_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    yield from open_broker("nats", request)


@pytest.fixture
def sqs_broker(request: pytest.FixtureRequest, aws_env: None) -> Iterator[Broker]:
    yield from open_broker("sqs", request)


@pytest.fixture
def fifo_broker(request: pytest.FixtureRequest, aws_env: None) -> Iterator[Broker]:
    yield from open_broker("sqs-fifo", request)


def stored_outputs() -> dict[str, dict[str, Any]]:
    return {"archive": {"objects": {"video": {"url": STORED}}, "event_url": EVENT_URL}}


# --- every broker --------------------------------------------------------------------------


async def test_message_links_stored_copies_and_carries_propagation_headers(
    tmp_path: Path, broker: Broker
) -> None:
    video = local_file(tmp_path, "video", "clip.mp4", b"v" * 1000, "video/mp4")
    image = local_file(tmp_path, "image", "frame.png", b"p" * 10, "image/png")
    ctx = make_ctx([video, image], payload={"seed": 1}, outputs=stored_outputs())
    ctx = replace(ctx, headers={"traceparent": TRACEPARENT})
    out = await deliver(sink_for(broker.options()), ctx)
    assert out["published"] is True

    [got] = await broker.messages()
    by_path = {f["path"]: f for f in got.event["files"]}
    assert by_path["video"]["url"] == STORED  # the S3 copy, fal's URL kept beside it
    assert by_path["video"]["fal_url"] == video.url and by_path["video"]["size"] == 1000
    assert by_path["image"]["url"] == image.url and "fal_url" not in by_path["image"]
    assert got.event["payload"] == {"seed": 1}
    assert got.meta["traceparent"] == TRACEPARENT


SECRET = "s3cr3t-pw"
UNREACHABLE = {  # nothing listens on the discard port
    "redis": {"url": f"redis://user:{SECRET}@127.0.0.1:9/0", "timeout": 2},
    "amqp": {"url": f"amqp://user:{SECRET}@127.0.0.1:9/", "connect_timeout": 2},
    "nats": {"url": f"nats://user:{SECRET}@127.0.0.1:9", "connect_timeout": 2},
    "sqs": {"endpoint_url": "http://127.0.0.1:9", "connect_timeout": 1},
}


async def test_unreachable_broker_is_retryable_and_named_without_the_password(
    broker: Broker,
) -> None:
    options = {**broker.options(), **UNREACHABLE[broker.kind]}
    with pytest.raises(Retryable) as err:
        await deliver(sink_for(options), make_ctx([]))
    assert str(err.value).startswith(broker.kind + " ")
    assert SECRET not in str(err.value)
    if broker.kind != "sqs":
        assert "user:***@127.0.0.1:9" in str(err.value)


# --- redis ---------------------------------------------------------------------------------


async def test_redis_entry_fields_stream_template_and_trim(redis_broker: Broker) -> None:
    assert isinstance(redis_broker, RedisBroker)
    options = {**redis_broker.options(), "stream": redis_broker.stream + ":{route}", "maxlen": 5}
    sink = sink_for(options)
    try:
        for i in range(250):
            out = await sink.deliver(make_ctx([], request_id=f"req-{i}"))
    finally:
        await sink.aclose()
    assert out["stream"] == redis_broker.stream + ":reframe"
    from redis.asyncio import Redis

    async with Redis() as r:
        length = await r.xlen(out["stream"])
        [(_, fields)] = await r.xrevrange(out["stream"], count=1)
        markers = [k async for k in r.scan_iter(f"falhook:published:{out['stream']}:*")]
        ttl = await r.ttl(f"falhook:published:{out['stream']}:queue:req-249")
        await r.delete(out["stream"], *markers)
    assert length < 250  # MAXLEN ~ trims whole nodes: approximate, never below maxlen
    assert fields[b"request_id"] == b"req-249" and fields[b"route"] == b"reframe"
    assert 0 < ttl <= 86_400  # the idempotency marker expires (idempotency_ttl)


async def test_redis_missing_stream_and_wrong_type_are_permanent(redis_broker: Broker) -> None:
    assert isinstance(redis_broker, RedisBroker)
    options = {**redis_broker.options(), "create_stream": False}
    with pytest.raises(Permanent, match="the stream does not exist"):
        await deliver(sink_for(options), make_ctx([]))
    from redis.asyncio import Redis

    async with Redis() as r:
        await r.set(redis_broker.stream, "not a stream")
    with pytest.raises(Permanent, match="WRONGTYPE") as err:
        await deliver(sink_for(redis_broker.options()), make_ctx([]))
    assert repr(redis_broker.stream) in str(err.value)


# --- amqp ----------------------------------------------------------------------------------


async def test_amqp_message_properties(amqp_broker: Broker) -> None:
    await deliver(sink_for(amqp_broker.options()), make_ctx([], status="ERROR", error="x"))
    [got] = await amqp_broker.messages()
    assert got.meta["message_id"] == "req-123"
    assert got.meta["content_type"] == "application/json"
    assert got.meta["delivery_mode"] == 2  # persistent
    assert got.meta["type"] == "fal.request.failed"
    assert got.meta["fal_status"] == "ERROR"


async def test_amqp_unroutable_is_retried_and_a_missing_exchange_is_permanent(
    amqp_broker: Broker,
) -> None:
    assert isinstance(amqp_broker, AmqpBroker)
    unroutable = {**amqp_broker.options(), "routing_key": amqp_broker.queue + "-nobody"}
    with pytest.raises(Retryable, match="unroutable"):
        await deliver(sink_for(unroutable), make_ctx([]))
    missing = {**amqp_broker.options(), "exchange": amqp_broker.queue + "-nowhere"}
    with pytest.raises(Permanent, match="the exchange does not exist"):
        await deliver(sink_for(missing), make_ctx([]))
    assert await amqp_broker.messages() == []


async def test_amqp_named_exchange_routes_by_template(amqp_broker: Broker) -> None:
    import aio_pika

    assert isinstance(amqp_broker, AmqpBroker)
    exchange_name = amqp_broker.queue + "-x"
    async with await aio_pika.connect("amqp://guest:guest@127.0.0.1/") as conn:
        channel = await conn.channel()
        exchange = await channel.declare_exchange(exchange_name, "topic", auto_delete=True)
        queue = await channel.declare_queue(amqp_broker.queue, passive=True)
        await queue.bind(exchange, "fal.reframe.#")
        options = {
            **amqp_broker.options(),
            "exchange": exchange_name,
            "routing_key": "fal.{route}.{request_id}",
        }
        out = await deliver(sink_for(options), make_ctx([]))
        assert out["routing_key"] == "fal.reframe.req-123"
        [got] = await amqp_broker.messages()
        assert got.event["request_id"] == "req-123"
        await exchange.delete()


async def test_amqp_wrong_credentials_are_permanent(amqp_broker: Broker) -> None:
    options = {**amqp_broker.options(), "url": "amqp://guest:not-the-password@127.0.0.1:5672/"}
    with pytest.raises(Permanent, match="authentication failed") as err:
        await deliver(sink_for(options), make_ctx([]))
    assert "not-the-password" not in str(err.value)


# --- nats ----------------------------------------------------------------------------------


async def test_nats_subject_without_a_stream_is_permanent(nats_broker: Broker) -> None:
    assert isinstance(nats_broker, NatsBroker)
    options = {**nats_broker.options(), "subject": "nostream" + nats_broker.tag + ".{route}"}
    with pytest.raises(Permanent, match="no JetStream stream captures this subject") as err:
        await deliver(sink_for(options), make_ctx([]))
    assert f"'nostream{nats_broker.tag}.reframe'" in str(err.value)
    wrong = {**nats_broker.options(), "stream": "SOME_OTHER_STREAM"}
    with pytest.raises(Permanent, match="JetStream error 400"):
        await deliver(sink_for(wrong), make_ctx([]))


async def test_nats_endpoint_becomes_subject_tokens(nats_broker: Broker) -> None:
    assert isinstance(nats_broker, NatsBroker)
    options = {**nats_broker.options(), "subject": nats_broker.prefix + ".{endpoint}"}
    out = await deliver(sink_for(options), make_ctx([]))
    assert out["subject"] == nats_broker.prefix + ".luma.agent.ray.v3_2.reframe"
    [got] = await nats_broker.messages()
    assert got.meta["Nats-Msg-Id"] == "req-123" and got.meta["Content-Type"] == "application/json"


async def test_nats_event_over_max_payload_is_a_claim_check(nats_broker: Broker) -> None:
    big = {"frames": ["x" * 1000] * 1500}  # 1.5 MB: over the server's 1 MiB max_payload
    ctx = make_ctx([], payload=big, outputs=stored_outputs())
    out = await deliver(sink_for(nats_broker.options()), ctx)
    assert out["claim_check"] is True
    [got] = await nats_broker.messages()
    assert "payload" not in got.event
    assert got.event["claim_check"]["event_url"] == EVENT_URL
    assert "over the limit" in got.event["claim_check"]["reason"]


# --- sqs -----------------------------------------------------------------------------------


async def test_sqs_fifo_group_and_deduplication_ids(fifo_broker: Broker) -> None:
    sink = sink_for(fifo_broker.options())
    try:
        await sink.deliver(make_ctx([], request_id="req-a", attempt=1))
        await sink.deliver(make_ctx([], request_id="req-a", attempt=2))
        await sink.deliver(make_ctx([], request_id="req-b", route="other"))
    finally:
        await sink.aclose()
    got = await fifo_broker.messages()
    assert [(m.event["request_id"], m.meta["MessageGroupId"]) for m in got] == [
        ("req-a", "reframe"),
        ("req-b", "other"),
    ]
    assert got[0].meta["MessageDeduplicationId"] == "req-a"


async def test_sqs_event_over_the_limit_is_a_claim_check_never_cut(
    tmp_path: Path, sqs_broker: Broker
) -> None:
    video = local_file(tmp_path, "video", "clip.mp4", b"v", "video/mp4")
    big = {"text": "y" * 5000}
    options = {**sqs_broker.options(), "max_message_bytes": 2048}
    ctx = make_ctx([video], payload=big, outputs=stored_outputs())
    out = await deliver(sink_for(options), ctx)
    assert out["claim_check"] is True
    [got] = await sqs_broker.messages()
    assert "payload" not in got.event
    assert got.event["claim_check"]["event_url"] == EVENT_URL
    assert got.event["files"][0]["url"] == STORED
    assert got.meta["request_id"] == "req-123"

    huge_error = make_ctx([], status="ERROR", error="e" * 5000)  # too big even without payload
    with pytest.raises(Permanent, match="even without its payload"):
        await deliver(sink_for(options), huge_error)


async def test_sqs_missing_queue_is_permanent(sqs_broker: Broker) -> None:
    options = {**sqs_broker.options(), "queue_url": "http://127.0.0.1:1/123456789012/nope"}
    with pytest.raises(Permanent, match="the queue does not exist"):
        await deliver(sink_for(options), make_ctx([]))


# --- options and extras --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sink_type", "options", "key", "problem"),
    [
        ("redis", {}, "url", "is required"),
        ("redis", {"url": "http://x"}, "url", "redis://"),
        ("redis", {"url": "redis://h", "stream": "{nope}"}, "stream", "unknown placeholder"),
        ("redis", {"url": "redis://h", "maxlen": 0}, "maxlen", ">= 1"),
        ("amqp", {"url": "amqp://h", "routing_key": "{x}"}, "routing_key", "unknown placeholder"),
        ("amqp", {"url": "redis://h"}, "url", "amqp://"),
        ("nats", {"url": "nats://h", "subject": "a..b"}, "subject", "dot-separated"),
        ("nats", {"url": "nats://h", "subject": "a.*"}, "subject", "dot-separated"),
        ("nats", {"url": "http://h"}, "url", "nats://"),
        ("sqs", {}, "queue_url", "is required"),
        (
            "sqs",
            {"queue_url": "https://q", "max_message_bytes": 2_000_000},
            "max_message_bytes",
            "",
        ),
    ],
)
def test_bad_options_are_named(
    sink_type: str, options: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(OptionError) as err:
        build_sink("queue", sink_type, options, ENV)
    assert err.value.key == f"[sinks.queue].{key}"
    assert problem in err.value.problem


@pytest.mark.parametrize(
    ("sink_type", "options", "module", "extra"),
    [
        ("redis", {"url": "redis://h"}, "redis", "falhook[redis]"),
        ("amqp", {"url": "amqp://h"}, "aio_pika", "falhook[amqp]"),
        ("nats", {"url": "nats://h"}, "nats", "falhook[nats]"),
        ("sqs", {"queue_url": "https://q"}, "boto3", "falhook[sqs]"),
    ],
)
def test_a_missing_client_library_stops_start_up_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
    sink_type: str,
    options: dict[str, Any],
    module: str,
    extra: str,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == module else real(name, *a),
    )
    with pytest.raises(OptionError) as err:
        build_sink("queue", sink_type, options, ENV)
    assert err.value.key == "[sinks.queue].type"
    assert extra in err.value.problem


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("amqp://guest:guest@h/", "amqp://guest:***@h/"),
        ("nats://token@h:4222,nats://u:p@g:4222", "nats://***@h:4222,nats://u:***@g:4222"),
        ("redis://h:6379", "redis://h:6379"),
    ],
)
def test_urls_are_redacted(url: str, shown: str) -> None:
    assert messaging.redact_url(url) == shown
