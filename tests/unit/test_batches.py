"""The batch path (falhook.delivery.batches): a sink that takes batches gets the events handed
over together in one call, each result its own event's, and an event alone is never held
back; the outcomes of jobs that finish together go to the store in one call, and one job's
bad record does not sink the others'."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from falhook.delivery.batches import Recorder, SinkBatcher
from falhook.store.models import Finish
from falhook_sinks.base import BatchResult, BatchSink, DeliveryContext, Permanent, Retryable
from tests.support.sink_ctx import make_ctx


class Recording(BatchSink):
    """Delivers each event with its request id; `fail` maps ids to what they fail with;
    `hold`, when set, keeps every call waiting until it is set."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail: dict[str, Exception] = {}
        self.hold: asyncio.Event | None = None
        self.raises: Exception | None = None

    async def deliver_batch(self, batch: Sequence[DeliveryContext]) -> list[BatchResult]:
        self.calls.append([ctx.event.request_id for ctx in batch])
        if self.hold is not None:
            await self.hold.wait()
        if self.raises is not None:
            raise self.raises
        return [self.fail.get(c.event.request_id, {"id": c.event.request_id}) for c in batch]


def batcher(sink: Recording, *, size: int = 64, linger: float = 3600.0) -> SinkBatcher:
    return SinkBatcher("queue", sink, size=size, linger=linger, timeout=30)


async def wait_for(condition: Any, what: str) -> None:
    async with asyncio.timeout(10):  # a bound on a hang, never a measure of speed
        while not condition():
            await asyncio.sleep(0.001)


async def test_an_event_alone_goes_at_once_whatever_the_linger() -> None:
    sink = Recording()
    async with asyncio.timeout(10):  # the linger is an hour: holding it back would hang
        out = await batcher(sink).deliver(make_ctx([], request_id="a"))
    assert out == {"id": "a"} and sink.calls == [["a"]]


async def test_events_handed_over_together_go_in_one_call() -> None:
    sink = Recording()
    b = batcher(sink)
    outs = await asyncio.gather(*(b.deliver(make_ctx([], request_id=f"e{i}")) for i in range(10)))
    assert sink.calls == [[f"e{i}" for i in range(10)]]
    assert [o["id"] for o in outs if o] == [f"e{i}" for i in range(10)]


async def test_a_batch_never_exceeds_its_size() -> None:
    sink = Recording()
    b = batcher(sink, size=4)
    await asyncio.gather(*(b.deliver(make_ctx([], request_id=f"e{i}")) for i in range(10)))
    assert max(len(c) for c in sink.calls) <= 4
    assert sorted(i for c in sink.calls for i in c) == sorted(f"e{i}" for i in range(10))


async def test_while_a_call_is_in_flight_the_next_batch_waits_at_most_the_linger() -> None:
    sink = Recording()
    sink.hold = asyncio.Event()
    b = batcher(sink, linger=0.05)
    first = asyncio.create_task(b.deliver(make_ctx([], request_id="first")))
    await wait_for(lambda: len(sink.calls) == 1, "the first call")
    second = asyncio.create_task(b.deliver(make_ctx([], request_id="second")))
    await wait_for(lambda: len(sink.calls) == 2, "the second call, the first still in flight")
    sink.hold.set()
    assert (await first, await second) == ({"id": "first"}, {"id": "second"})


async def test_waiting_events_go_together_when_the_call_in_flight_returns() -> None:
    sink = Recording()
    sink.hold = asyncio.Event()
    b = batcher(sink)  # an hour's linger: only the call's return sends them
    first = asyncio.create_task(b.deliver(make_ctx([], request_id="first")))
    await wait_for(lambda: len(sink.calls) == 1, "the first call")
    rest = [asyncio.create_task(b.deliver(make_ctx([], request_id=f"r{i}"))) for i in range(3)]
    await asyncio.sleep(0.01)
    assert len(sink.calls) == 1
    sink.hold.set()
    await asyncio.gather(first, *rest)
    assert sink.calls == [["first"], ["r0", "r1", "r2"]]


async def test_each_event_gets_its_own_result() -> None:
    sink = Recording()
    sink.fail = {"bad": Permanent("refused"), "later": Retryable("busy"), "bug": KeyError("x")}
    b = batcher(sink)
    results = await asyncio.gather(
        *(b.deliver(make_ctx([], request_id=r)) for r in ("ok1", "bad", "later", "bug", "ok2")),
        return_exceptions=True,
    )
    assert results[0] == {"id": "ok1"} and results[4] == {"id": "ok2"}
    assert isinstance(results[1], Permanent) and str(results[1]) == "refused"
    assert isinstance(results[2], Retryable)
    assert isinstance(results[3], Retryable) and "KeyError" in str(results[3])  # a bug: retried
    assert len(sink.calls) == 1


@pytest.mark.parametrize(
    ("raised", "kind"),
    [(Retryable("broker down"), Retryable), (Permanent("no such stream"), Permanent),
     (RuntimeError("bug"), Retryable)],
)  # fmt: skip
async def test_a_batch_that_raises_fails_every_event_of_it(raised: Exception, kind: type) -> None:
    sink = Recording()
    sink.raises = raised
    b = batcher(sink)
    results = await asyncio.gather(
        *(b.deliver(make_ctx([], request_id=f"e{i}")) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, kind) for r in results)


async def test_deliver_is_the_one_event_case_of_deliver_batch() -> None:
    sink = Recording()
    sink.fail = {"bad": Permanent("refused")}
    assert await sink.deliver(make_ctx([], request_id="a")) == {"id": "a"}
    with pytest.raises(Permanent):
        await sink.deliver(make_ctx([], request_id="bad"))


class Store:
    """A DeliveryQueue's finish_many, scripted: records each call; a result of sink `bad`
    makes its whole call fail."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def finish_many(self, results: Sequence[Finish], files: Any = None) -> list[bool]:
        self.calls.append([r.request_id for r in results])
        await asyncio.sleep(0)
        if any(r.sink == "bad" for r in results):
            raise RuntimeError("a constraint failed")
        return [r.request_id != "lost" for r in results]


def finish(rid: str, sink: str = "s") -> Finish:
    return Finish(request_id=rid, sink=sink, token="t", outcome="delivered")


async def test_outcomes_finishing_together_share_one_store_call() -> None:
    store = Store()
    recorder = Recorder(store, size=64)  # type: ignore[arg-type]
    answers = await asyncio.gather(*(recorder.record([finish(f"e{i}")]) for i in range(20)))
    assert store.calls == [[f"e{i}" for i in range(20)]]
    assert answers == [[True]] * 20


async def test_one_jobs_bad_record_does_not_sink_the_others() -> None:
    store = Store()
    recorder = Recorder(store, size=64)  # type: ignore[arg-type]
    results = await asyncio.gather(
        recorder.record([finish("a")]),
        recorder.record([finish("b", sink="bad")]),
        recorder.record([finish("lost"), finish("c")]),
        return_exceptions=True,
    )
    assert results[0] == [True] and results[2] == [False, True]  # `lost`: its lease did not hold
    assert isinstance(results[1], RuntimeError)
    assert store.calls[0] == ["a", "b", "lost", "c"]  # together first, then one job each
