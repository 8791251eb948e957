"""The queue sinks (redis, amqp, nats, sqs) through the real worker and store, against the
machine's brokers (SQS: moto's server), read back with each broker's own client: one message
per event (ERROR events too), a replay publishes nothing, `--force` publishes again, and a
broker that goes away and comes back gets the event exactly once."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from falhook_sinks.base import SinkEnv
from falhook_sinks.registry import build_sink
from tests.support.brokers import KINDS, Broker, make_broker, open_broker
from tests.support.pipeline import Pipeline
from tests.support.sink_ctx import make_ctx
from tests.support.tcp_relay import TCPRelay

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
DETAIL = [{"loc": ["body", "video_url"], "msg": "field required", "type": "value_error"}]


@pytest.fixture(params=KINDS)
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param.startswith("sqs"):
        request.getfixturevalue("aws_env")  # the SQS sink reads moto's credentials
    yield from open_broker(request.param, request)


def data_uri(data: bytes, media: str) -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


async def test_one_message_per_event_error_events_too(tmp_path: Path, broker: Broker) -> None:
    payload = {"image": {"url": data_uri(PNG, "image/png"), "file_name": "f.png"}, "seed": 7}
    async with Pipeline(tmp_path, {"queue": broker.options()}) as p:
        ok = await p.send(payload)
        failed = await p.send({"detail": DETAIL}, status="ERROR", error="boom")
        for rid in (ok, failed):
            view = await p.deliver(rid)
            assert view.deliveries["queue"].state == "delivered", view.deliveries
            assert view.deliveries["queue"].attempts == 1

    first, second = await broker.messages()
    assert first.event["request_id"] == ok and second.event["request_id"] == failed
    assert first.event["route"] == "reframe" and first.event["fal_status"] == "OK"
    assert first.event["payload"] == payload
    [image] = first.event["files"]
    # A queue sink links files and reads none: nothing was downloaded for it alone, so the
    # message says what the payload said (no size or sha256 here) and links fal's copy.
    assert image["path"] == "image" and image["url"].startswith("data:image/png")
    assert image["size"] is None and image["sha256"] is None
    assert second.event["fal_status"] == "ERROR" and second.event["error"] == "boom"
    assert second.event["payload"] == {"detail": DETAIL}
    for message, rid in ((first, ok), (second, failed)):
        assert message.meta["request_id"] == rid and message.meta["route"] == "reframe"
        assert "claim_check" not in message.event


async def test_a_replay_publishes_nothing_and_force_publishes_again(
    tmp_path: Path, broker: Broker
) -> None:
    async with Pipeline(tmp_path, {"queue": broker.options()}) as p:
        rid = await p.send()
        assert (await p.deliver(rid)).deliveries["queue"].state == "delivered"
        assert len(await broker.messages()) == 1

        replayed = await p.replay(rid)
        assert replayed.deliveries["queue"].state == "delivered"
        assert len(await broker.messages()) == 1

        forced = await p.replay(rid, force=True)
        assert forced.deliveries["queue"].state == "delivered"
        got = await broker.messages()
        assert [m.event["request_id"] for m in got] == [rid, rid]

        again = await p.replay(rid)  # the forced delivery's output is kept again
        assert again.deliveries["queue"].state == "delivered"
        assert len(await broker.messages()) == 2


async def test_broker_down_and_back_delivers_exactly_once(tmp_path: Path, broker: Broker) -> None:
    relay = TCPRelay(broker.address).start()
    try:
        async with Pipeline(tmp_path, {"queue": broker.options(port=relay.port)}) as p:
            before = await p.send()
            assert (await p.deliver(before)).deliveries["queue"].state == "delivered"

            relay.cut()  # the open connection is cut and new ones are refused
            during = await p.send()
            for attempt in (1, 2):
                view = await p.deliver(during)
                queue = view.deliveries["queue"]
                assert (queue.state, queue.attempts) == ("retrying", attempt)
                assert broker.kind in (queue.last_error or "")

            relay.restore()
            view = await p.deliver(during)
            assert view.deliveries["queue"].state == "delivered"
            assert view.deliveries["queue"].attempts == 3
    finally:
        relay.stop()
    assert [m.event["request_id"] for m in await broker.messages()] == [before, during]


# A worker that died between the publish and the record tries again as a later attempt, with
# no output to go by: brokers that deduplicate keep one message, the others get two.
AFTER_A_LOST_RECORD = {"redis": 1, "nats": 1, "sqs-fifo": 1, "amqp": 2, "sqs": 2}


@pytest.mark.parametrize("kind", sorted(AFTER_A_LOST_RECORD))
async def test_an_attempt_after_an_unrecorded_publish(
    kind: str, request: pytest.FixtureRequest
) -> None:
    moto_url = None
    if kind.startswith("sqs"):
        request.getfixturevalue("aws_env")
        moto_url = request.getfixturevalue("moto").url
    broker = make_broker(kind, moto_url)
    await broker.setup()
    try:
        options = broker.options()
        sink = build_sink("queue", options.pop("type"), options, SinkEnv(base_dir=Path(".")))
        try:
            first = await sink.deliver(make_ctx([], request_id="req-lost", attempt=1))
            second = await sink.deliver(make_ctx([], request_id="req-lost", attempt=2))
        finally:
            await sink.aclose()
        assert first["published"] and second["published"]
        got = await broker.messages()
        assert len(got) == AFTER_A_LOST_RECORD[kind]
        assert {m.event["request_id"] for m in got} == {"req-lost"}
    finally:
        await broker.teardown()
