"""The live view: one reader of the store's changes per process, shared by every open tab,
and a Server-Sent Events stream per tab.

The feed polls `ConsoleReader.changes` every `stream_interval` seconds while at least one
tab listens, so it sees what any process did (a `falhook worker` elsewhere, another
receiver) on SQLite and PostgreSQL alike, and costs nothing while nobody watches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import structlog

from falhook.console.server_exit import ServerExit
from falhook.store.changes import LIMIT
from falhook.store.models import Change, ChangeMark
from falhook.store.roles import ConsoleReader

log = structlog.get_logger("falhook.console")
QUEUE_MAX = 256  # looks' worth of messages a slow tab may fall behind before it is dropped
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (proxies close idle ones)


def message(change: Change) -> bytes:
    data = {
        k: v
        for k, v in (
            ("request_id", change.request_id),
            ("kind", change.kind),
            ("route", change.route),
            ("sink", change.sink),
            ("state", change.state),
        )
        if v is not None
    }
    return b"event: event\ndata: " + msgspec.json.encode(data) + b"\n\n"


class ChangeFeed:
    def __init__(self, store: ConsoleReader, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.listeners: set[asyncio.Queue[bytes | None]] = set()
        self.closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._mark: ChangeMark | None = None
        self._starting = asyncio.Lock()
        self.published = 0  # changes published so far: what a cached figure is as old as
        # The server's SIGTERM ends the streams before it waits for them (server_exit.py).
        self.server_exit = ServerExit(self.stop)

    async def subscribe(self) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_MAX)
        self.server_exit.arm()
        async with self._starting:
            if self._task is None or self._task.done():
                # The mark of now, before the tab is told it listens: nothing after is missed.
                _, self._mark = await self.store.changes(None)
                self._task = asyncio.create_task(self._poll(), name="falhook-console-feed")
            self.listeners.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.listeners.discard(queue)

    async def _poll(self) -> None:
        while self.listeners and not self.closing.is_set():
            try:
                found, self._mark = await self.store.changes(self._mark)
            except Exception as exc:  # the store may be away for a moment; tabs wait
                log.warning("console feed read failed", error=f"{type(exc).__name__}: {exc}")
                found = []
            if found:  # one write per look, however many changes it found
                self._publish(b"".join(message(change) for change in found))
            if len(found) >= LIMIT:
                continue  # behind (a burst of webhooks): read on at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), self.interval)
        self._task = None

    def _publish(self, data: bytes) -> None:
        self.published += 1
        for queue in list(self.listeners):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:  # too slow: dropped; its browser reconnects
                self.listeners.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    def stop(self) -> None:
        """End every stream now (the server is stopping: it must not wait for open tabs)."""
        self.closing.set()
        for queue in list(self.listeners):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def close(self) -> None:
        self.stop()
        self.server_exit.disarm()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def stream(self, queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
        """The SSE body of one tab: its messages, keep-alive comments, until the tab goes,
        the feed closes, or the tab fell too far behind."""
        try:
            yield b"retry: 2000\n: falhook console stream\n\n"
            while not self.closing.is_set():
                try:
                    data = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if data is None:
                    return
                yield data
        finally:
            self.unsubscribe(queue)
