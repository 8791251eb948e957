"""Files as they arrive: what a streaming sink reads while the download is still running.

The download thread reports each time more of the file is in place (`progress`, cheap: it
only wakes the event loop when a sink is waiting for that much); the worker ends it with
`finish` or `fail`. A sink waits for bytes with `wait` and for the whole file with
`finished`.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from falhook.downloads.errors import FetchError
from falhook_sinks.base import LocalFile, Permanent, Retryable


class Arrival:
    """One file of the event, downloading into `local_path` (an ArrivingFile)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        path: str,
        name: str,
        url: str,
        content_type: str | None,
        file_name: str | None,
        local_path: Path,
        expected_size: int | None,
        extras: dict[str, Any],
    ) -> None:
        self.path, self.name, self.url = path, name, url
        self.content_type, self.file_name, self.extras = content_type, file_name, extras
        self.local_path = local_path
        self.expected_size = expected_size
        self._loop = loop
        self._lock = threading.Lock()
        self._written = -1  # the file does not exist yet
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._result: LocalFile | None = None
        self._error: Retryable | Permanent | None = None
        self._ended = asyncio.Event()

    # --- the download's side -------------------------------------------------------------------

    def progress(self, written: int) -> None:
        """Called on the download thread: the first `written` bytes are in place."""
        with self._lock:
            self._written = written
            due = [fut for size, fut in self._waiters if size <= written]
            if due:
                self._waiters = [(s, f) for s, f in self._waiters if s > written]
        for fut in due:
            self._loop.call_soon_threadsafe(_settle, fut)

    def finish(self, result: LocalFile) -> None:
        self._result = result
        self._end()

    def fail(self, error: FetchError | Exception) -> None:
        message = error.message if isinstance(error, FetchError) else f"{error}"
        permanent = isinstance(error, FetchError) and not error.retryable
        self._error = Permanent(message) if permanent else Retryable(message)
        self._end()

    def _end(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for _, fut in waiters:
            _settle(fut)
        self._ended.set()

    # --- the sink's side -----------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._result is not None

    async def wait(self, size: int) -> int:
        """Once at least `size` bytes are in place, or the file is complete: how many are.
        `local_path` exists when it returns (`wait(0)`: as soon as the file is created)."""
        size = max(size, 0)
        while True:
            if self._error is not None:
                raise self._error
            if self._result is not None:
                return self._result.size or 0
            fut: asyncio.Future[None] = self._loop.create_future()
            with self._lock:
                if self._written >= size:
                    return self._written
                self._waiters.append((size, fut))
            await fut

    async def finished(self) -> LocalFile:
        await self._ended.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
