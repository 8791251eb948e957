"""The queue sinks in a real `falhook serve`: a webhook becomes one message, `falhook events
replay --now` publishes nothing and `--force` publishes again; and kill -9 between a sink's
publish and the worker's record of it: after the restart the event is delivered, Redis, NATS
JetStream and SQS FIFO hold exactly one message, and RabbitMQ and SQS standard queues hold two
(as the docs say: consumers deduplicate on the request id)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook.testing import FalSigner, JWKSServer, webhook_body
from tests.support.brokers import Broker, open_broker
from tests.support.falhook_server import ROOT, Falhook, base_config, wait_for
from tests.support.moto import AWS_ENV

EXPECTED = {"redis": 1, "nats": 1, "sqs-fifo": 1, "amqp": 2, "sqs": 2}


@pytest.fixture(params=sorted(EXPECTED))
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    yield from open_broker(request.param, request)


def start_falhook(
    tmp_path: Path, jwks: JWKSServer, broker: Broker, *, killer: bool = True
) -> Falhook:
    sinks: dict[str, Any] = {"queue": broker.options()}
    if killer:
        sinks["killer"] = {
            "type": "python",
            "handler": "tests.support.killer:kill_once",
            "marker": str(tmp_path / "killed"),
            "after": ["queue"],
        }
    config = base_config(
        tmp_path,
        jwks.url,
        delivery={"lease_seconds": 2, "backoff_initial": 0.2, "backoff_max": 1.0},
        sinks=sinks,
        routes={"reframe": {"sinks": list(sinks)}},
    )
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return Falhook(tmp_path, config, env={**AWS_ENV, "PYTHONPATH": path}).start()


def send(fh: Falhook, signer: FalSigner, payload: Any) -> str:
    rid, body = webhook_body(str(uuid.uuid4()), payload=payload)
    resp = httpx.post(
        fh.url("/webhooks/reframe"), content=body, headers=signer.headers(body, rid), timeout=30
    )
    assert resp.status_code == 200, resp.text
    return rid


def count(broker: Broker) -> int:
    return len(asyncio.run(broker.messages()))


def test_webhook_replay_and_forced_replay_through_the_command_line(
    tmp_path: Path, jwks: JWKSServer, signer: FalSigner, broker: Broker
) -> None:
    fh = start_falhook(tmp_path, jwks, broker, killer=False)
    try:
        rid = send(fh, signer, {"text": "hello"})
        fh.wait_state(rid, "delivered", timeout=60)
        [got] = asyncio.run(broker.messages())
        assert got.event["request_id"] == rid and got.event["payload"] == {"text": "hello"}

        replay = fh.cli("events", "replay", rid, "--now")
        assert replay.returncode == 0, replay.stderr
        assert fh.wait_state(rid, "delivered")["deliveries"]["queue"]["attempts"] == 1
        assert count(broker) == 1

        forced = fh.cli("events", "replay", rid, "--force", "--now")
        assert forced.returncode == 0, forced.stderr
        fh.wait_state(rid, "delivered")
        expected = 1 if broker.label == "sqs-fifo" else 2  # FIFO: SQS's own 5-minute rule
        assert count(broker) == expected
    finally:
        fh.close()


def test_kill_9_between_publish_and_record(
    tmp_path: Path, jwks: JWKSServer, signer: FalSigner, broker: Broker
) -> None:
    fh = start_falhook(tmp_path, jwks, broker)
    try:
        rid = send(fh, signer, {"text": "crash me"})
        assert fh.proc is not None
        assert fh.proc.wait(timeout=60) == -signal.SIGKILL  # killed right after the publish
        assert count(broker) == 1
        assert (tmp_path / "killed").read_text() == rid

        fh.start()  # the lease runs out; the delivery is taken again as a later attempt
        event = fh.wait_state(rid, "delivered", timeout=60)
        assert event["deliveries"]["queue"]["attempts"] == 2
        got = wait_for(
            lambda: asyncio.run(broker.messages()), timeout=10, what="the messages to be readable"
        )
        assert len(got) == EXPECTED[broker.label]
        assert {m.event["request_id"] for m in got} == {rid}
    finally:
        fh.close()
