"""The batch path: where one round trip serves many events.

Jobs stay one event each (delivery/job.py); these two gather what the jobs in flight send
at about the same time, and answer each job on its own:

- ``SinkBatcher``: for a sink that takes batches (``BatchSink``: the queue sinks), the
  events its jobs hand it become one ``deliver_batch`` call, one round trip to the broker.
  Each event gets its own result: one bad message never fails its neighbours.
- ``Recorder``: the outcomes of finished jobs become one store call, one commit.

Both send at once when nothing of theirs is in flight (an event alone is never held back);
while a call is in flight, what arrives waits for it to return, for the batch to fill, or
for ``linger`` seconds, whichever is first (the recorder has no linger: a commit is short).
This is group commit: under load, batches grow by themselves to what arrives during one
round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from falhook.store.models import Finish
from falhook.store.roles import DeliveryQueue
from falhook_sinks.base import DeliveryContext, Permanent, Retryable, Sink

log = structlog.get_logger("falhook.worker")
Output = dict[str, Any] | None


class SinkBatcher:
    """The events bound for one sink, gathered into ``deliver_batch`` calls of at most
    `size`; each call is held to `timeout` seconds."""

    def __init__(self, name: str, sink: Sink, *, size: int, linger: float, timeout: float) -> None:
        self.name, self.sink = name, sink
        self.size, self.linger, self.timeout = size, linger, timeout
        self._waiting: list[tuple[DeliveryContext, asyncio.Future[Output]]] = []
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False
        self._calls: set[asyncio.Task[None]] = set()

    async def deliver(self, ctx: DeliveryContext) -> Output:
        """This event's result, as ``deliver`` would give it (or raise it)."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Output] = loop.create_future()
        self._waiting.append((ctx, result))
        if len(self._waiting) >= self.size:
            self._send()
        elif not self._in_flight:
            # Nothing in flight: go on the loop's next turn, with every job that reaches
            # its sink call in this one.
            self._send_soon()
        elif self._timer is None and not self._soon:
            self._timer = loop.call_later(self.linger, self._send)
        return await result

    def _send_soon(self) -> None:
        if not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [(ctx, fut) for ctx, fut in self._waiting[: self.size] if not fut.done()]
        del self._waiting[: self.size]
        if self._waiting:  # more than a batch was waiting: the rest goes next
            self._send_soon()
        if not batch:
            return
        self._in_flight += 1
        call = asyncio.create_task(self._call(batch), name=f"falhook-batch-{self.name}")
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[tuple[DeliveryContext, asyncio.Future[Output]]]) -> None:
        try:
            results = await self._deliver([ctx for ctx, _ in batch])
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._send_soon()
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():  # its job gave up (shutdown, or its own timeout)
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result if isinstance(result, dict) else None)

    async def _deliver(self, ctxs: list[DeliveryContext]) -> list[Output | Exception]:
        """One result per event: its output, or the Retryable or Permanent it failed with
        (anything else a sink raises is a bug of the sink, retried and then dead-lettered)."""
        try:
            async with asyncio.timeout(self.timeout):
                results = list(await self.sink.deliver_batch(ctxs))
        except (Retryable, Permanent) as exc:
            return [exc] * len(ctxs)
        except TimeoutError:
            return [Retryable("attempt timed out")] * len(ctxs)
        except Exception as exc:
            log.exception("sink raised an unexpected error", sink=self.name, batch=len(ctxs))
            return [_unexpected(exc)] * len(ctxs)
        if len(results) != len(ctxs):
            error = Retryable(f"deliver_batch gave {len(results)} results for {len(ctxs)} events")
            log.error("sink broke the batch contract", sink=self.name, error=str(error))
            return [error] * len(ctxs)
        checked: list[Output | Exception] = []
        for ctx, result in zip(ctxs, results, strict=True):
            if isinstance(result, Retryable | Permanent) or not isinstance(result, BaseException):
                checked.append(result)
                continue
            ctx.log.error("sink failed an event with an unexpected error", error=repr(result))
            checked.append(_unexpected(result))
        return checked

    async def aclose(self) -> None:
        """Wait for the calls in flight (their jobs are waiting for them, or gave up)."""
        await asyncio.gather(*self._calls, return_exceptions=True)


def _unexpected(exc: BaseException) -> Retryable:
    return Retryable(f"{type(exc).__name__}: {exc}")


@dataclass
class _Record:
    results: Sequence[Finish]
    files: dict[str, list[dict[str, Any]]]
    answer: asyncio.Future[list[bool]]


class Recorder:
    """The outcomes of a worker's jobs, written together: every job that finishes while a
    commit runs joins the next one, up to `size` outcomes. The store commits a batch whole
    or not at all, and only then is any job told (an outcome is durable before anything
    else hears of it)."""

    def __init__(self, store: DeliveryQueue, *, size: int) -> None:
        self.store = store
        self.size = size
        self._waiting: list[_Record] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(
        self, results: Sequence[Finish], files: dict[str, list[dict[str, Any]]] | None = None
    ) -> list[bool]:
        """Record one job's outcomes (and its event's file list, when the downloads changed
        it); for each outcome, whether its lease still held (False: nothing was written)."""
        answer: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Record(results, files or {}, answer))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name="falhook-recorder")
        return await answer

    async def flush(self) -> None:
        """Wait until everything handed over is written (or failed): a job cancelled by a
        shutdown after it handed over its outcomes still has them recorded."""
        while self._writer is not None:
            await asyncio.wait({self._writer})

    async def _write_all(self) -> None:
        try:
            await asyncio.sleep(0)  # the jobs finishing on this turn of the loop join in
            while self._waiting:
                await self._write(self._next_batch())
        finally:
            self._writer = None

    def _next_batch(self) -> list[_Record]:
        """Whole jobs' records, up to `size` outcomes (at least one job)."""
        batch = [self._waiting.pop(0)]
        count = len(batch[0].results)
        while self._waiting and count + len(self._waiting[0].results) <= self.size:
            record = self._waiting.pop(0)
            batch.append(record)
            count += len(record.results)
        return batch

    async def _write(self, batch: list[_Record]) -> None:
        try:
            held = await self.store.finish_many(
                [r for record in batch for r in record.results],
                {rid: f for record in batch for rid, f in record.files.items()},
            )
        except Exception as exc:
            if len(batch) > 1:  # one job's bad record must not sink the others': one by one
                for record in batch:
                    await self._write([record])
                return
            _answer(batch[0].answer, exc)
            return
        at = 0
        for record in batch:
            _answer(record.answer, held[at : at + len(record.results)])
            at += len(record.results)


def _answer(answer: asyncio.Future[list[bool]], result: list[bool] | Exception) -> None:
    if answer.done():
        return
    if isinstance(result, Exception):
        answer.set_exception(result)
    else:
        answer.set_result(result)
