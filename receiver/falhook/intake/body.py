"""Reading a webhook's body without letting a client hold the receiver.

- Size: more than `max_bytes` is refused while reading, with or without Content-Length.
- Time: the first `timeout` seconds are free; after that the body must have arrived at
  `min_rate` bytes per second on average, or the request ends (a body trickled at 1 byte/s
  is cut after about `timeout` seconds, a large one at a sane speed is never cut).
- Memory: the bytes held by unfinished bodies across all connections are bounded by one
  `BodyBudget`; a body that would exceed it is refused as busy (fal retries). A request whose
  signature headers are already wrong keeps none of its body: it is only counted, to tell a
  too-large body (413) from a bad signature (401).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class TooLarge(Exception):
    """The body exceeds max_bytes."""


class TooSlow(Exception):
    """The body did not arrive in time."""


class Busy(Exception):
    """Unfinished bodies already hold the whole budget."""


@dataclass(frozen=True)
class BodyRules:
    max_bytes: int
    timeout: float  # seconds every body may take
    min_rate: float  # bytes per second a body must average after that


class BodyBudget:
    """Bytes held by unfinished bodies, across every connection of the process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


async def read_body(
    receive: Receive,
    rules: BodyRules,
    budget: BodyBudget,
    *,
    declared: int | None,
    keep: bool,
    clock: Callable[[], float] = time.monotonic,
) -> bytes | None:
    """The whole body (b"" when `keep` is false), or None when the client went away.
    TooLarge, TooSlow or Busy when it cannot be had."""
    if declared is not None and declared > rules.max_bytes:
        raise TooLarge
    started = clock()
    chunks: list[bytes] = []
    size = held = 0
    try:
        while True:
            allowed = rules.timeout + size / rules.min_rate - (clock() - started)
            if allowed <= 0:
                raise TooSlow
            try:
                async with asyncio.timeout(allowed):
                    message = await receive()
            except TimeoutError:
                raise TooSlow from None
            if message["type"] == "http.disconnect":
                return None
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > rules.max_bytes:
                raise TooLarge
            if keep and chunk:
                if not budget.take(len(chunk)):
                    raise Busy
                held += len(chunk)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        budget.give(held)
