"""Nothing acknowledged is lost: `falhook serve` killed with SIGKILL under concurrent load, then
restarted; every request_id that got a 200 ends delivered, and no file is written twice. And
killed with batches in flight (outcomes recorded together, queue messages sent together):
none lost, none repeated."""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from falhook.testing import FalSigner, webhook_body
from tests.support.brokers import Broker, open_broker
from tests.support.falhook_server import Falhook, wait_for
from tests.support.fileserver import FileServer

SENDERS = 6
MAX_REQUESTS = 600  # bounded load: the loop stops by itself
KILL_AFTER = 120  # acknowledged events before the kill


def test_sigkill_under_load_loses_nothing_acknowledged(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, files: FileServer
) -> None:
    fh = falhook_factory(delivery={"lease_seconds": 2, "concurrency": 4}).start()
    files.add("/clip.mp4", data=b"c" * 200_000, content_type="video/mp4")
    acked: list[str] = []
    lock = threading.Lock()
    sent = 0
    stop = threading.Event()

    def sender() -> None:
        nonlocal sent
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                with lock:
                    if sent >= MAX_REQUESTS:
                        return
                    sent += 1
                rid, body = webhook_body(
                    str(uuid.uuid4()),
                    payload={"video": {"url": files.url("/clip.mp4"), "file_name": "clip.mp4"}},
                )
                try:
                    resp = client.post(
                        fh.url("/webhooks/default"), content=body, headers=signer.headers(body, rid)
                    )
                except httpx.HTTPError:
                    continue  # the server is dead: fal would retry; not acknowledged
                if resp.status_code == 200:
                    with lock:
                        acked.append(rid)

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= KILL_AFTER, timeout=60, what="load to build up")
    fh.stop(signal.SIGKILL)  # mid-load, mid-delivery
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert fh.proc is not None and fh.proc.returncode == -signal.SIGKILL

    fh.start()  # same config, same store
    with lock:
        acknowledged = list(acked)

    def all_delivered() -> bool:
        states = fh.reader.states()
        return all(states.get(rid) == "delivered" for rid in acknowledged)

    wait_for(all_delivered, timeout=120, interval=0.1, what="every acknowledged event delivered")

    root = Path(fh.config["sinks"]["local"]["root"]) / "default"
    for rid in acknowledged:
        names = sorted(p.name for p in (root / rid).iterdir())
        assert names == ["clip.mp4", "event.json"], (rid, names)
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_an_event_that_kills_every_worker_ends_dead_after_max_attempts(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, files: FileServer
) -> None:
    # A slow file keeps each attempt in flight; SIGKILL stands in for a crash it causes.
    files.add("/slow.bin", size=4 * 1024 * 1024, bytes_per_second=64 * 1024)
    fh = falhook_factory(
        delivery={"max_attempts": 2, "lease_seconds": 1, "backoff_initial": 0.1},
    ).start()
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/slow.bin")}})
    r = httpx.post(fh.url("/webhooks/default"), content=body, headers=signer.headers(body, rid))
    assert r.status_code == 200
    for crash in (1, 2):
        wait_for(lambda n=crash: files.hits("/slow.bin") >= n, timeout=60, what="an attempt")
        fh.stop(signal.SIGKILL)
        fh.start()
    event = fh.wait_state(rid, "dead", timeout=60)
    local = event["deliveries"]["local"]
    assert local["attempts"] == 2  # both crashed attempts counted, no third one made
    assert "no attempts left (2 made)" in local["last_error"]
    assert "lease expired" in local["last_error"]
    assert files.hits("/slow.bin") == 2


@pytest.fixture
def redis_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    yield from open_broker("redis", request)


BATCHED = 1000  # events delivered in batches, the worker killed in the middle


def test_sigkill_mid_batch_loses_and_repeats_no_delivery(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, redis_broker: Broker
) -> None:
    """A `falhook worker` killed while batches of outcomes and of queue messages are in
    flight: after the restart every event is delivered, and the Redis stream holds each
    exactly once (the marker written with each entry is how a later attempt knows it
    published)."""
    config = {
        "delivery": {"lease_seconds": 2, "concurrency": 64, "backoff_initial": 0.2},
        "sinks": {"queue": redis_broker.options()},
        "routes": {"default": {"sinks": ["queue"]}},
    }
    receiver = falhook_factory(command=("serve", "--no-worker"), **config).start()
    sent: list[str] = []
    with httpx.Client(timeout=10) as client:
        for _ in range(BATCHED):
            rid, body = webhook_body(str(uuid.uuid4()), payload={"text": "hi"})
            resp = client.post(
                receiver.url("/webhooks/default"), content=body, headers=signer.headers(body, rid)
            )
            assert resp.status_code == 200
            sent.append(rid)

    def published() -> int:
        return len(asyncio.run(redis_broker.messages()))

    worker = falhook_factory(name="worker", command=("worker",), **config).start()
    wait_for(lambda: published() >= BATCHED // 4, timeout=60, interval=0.005, what="batches")
    worker.stop(signal.SIGKILL)  # mid-batch: messages out, their outcomes not all recorded
    assert worker.proc is not None and worker.proc.returncode == -signal.SIGKILL
    before = published()
    assert before < BATCHED  # the kill landed before the last batch
    worker.start()

    def all_delivered() -> bool:
        states = receiver.reader.states()
        return all(states.get(rid) == "delivered" for rid in sent)

    wait_for(all_delivered, timeout=120, interval=0.1, what="every event delivered")
    entries = [m.event["request_id"] for m in asyncio.run(redis_broker.messages())]
    assert sorted(entries) == sorted(sent)  # each once: none lost, none repeated
