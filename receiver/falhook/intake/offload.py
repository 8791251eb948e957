"""Work sized by the event: big bodies are hashed, parsed and walked in a thread, small ones
on the event loop (a thread's hand-off would cost a small event more than the work)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
OFF_LOOP_BYTES = 256 * 1024  # an event body this large is handled in a thread


async def off_loop(big: bool, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a thread when the work is big (the event loop serves webhooks), else here."""
    return await asyncio.to_thread(fn, *args) if big else fn(*args)
