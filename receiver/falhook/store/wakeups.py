"""How a store wakes the workers of its process: `set` on an accept or a replay here (and, on
PostgreSQL, on a notification from another process); `wait` returns then, or after at most
`max_wait` seconds (workers poll as well, so a lost wake-up only delays). The same for both
engines."""

from __future__ import annotations

import asyncio
import contextlib


class WorkSignal:
    def __init__(self) -> None:
        self._event: asyncio.Event | None = None  # made on the store's own event loop

    def open(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        if self._event is not None:
            self._event.set()

    async def wait(self, max_wait: float) -> None:
        event = self._event
        if event is None:
            await asyncio.sleep(max_wait)
            return
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max_wait)
        finally:
            event.clear()
