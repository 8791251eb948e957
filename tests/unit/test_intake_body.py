"""Reading webhook bodies: size, time and memory bounds (falhook.intake.body), in-process with
a scripted ASGI `receive` and a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest

from falhook.intake.body import BodyBudget, BodyRules, Busy, TooLarge, TooSlow, read_body

RULES = BodyRules(max_bytes=1000, timeout=10.0, min_rate=100.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def receiver(chunks: list[bytes], clock: Clock | None = None, gap: float = 0.0) -> Any:
    """An ASGI receive() giving `chunks` in turn; each one `gap` seconds (of the fake clock)
    after the last."""
    it: Iterator[bytes] = iter(chunks)
    left = len(chunks)

    async def receive() -> MutableMapping[str, Any]:
        nonlocal left
        if clock is not None:
            clock.now += gap
        left -= 1
        return {"type": "http.request", "body": next(it), "more_body": left > 0}

    return receive


async def test_a_body_in_pieces_is_joined() -> None:
    budget = BodyBudget(10_000)
    body = await read_body(receiver([b"ab", b"cd", b"e"]), RULES, budget, declared=None, keep=True)
    assert body == b"abcde" and budget.held == 0


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    async def never() -> MutableMapping[str, Any]:
        raise AssertionError("read")

    with pytest.raises(TooLarge):
        await read_body(never, RULES, BodyBudget(10_000), declared=1001, keep=True)


async def test_a_body_over_the_limit_without_a_length_is_refused_while_reading() -> None:
    budget = BodyBudget(10_000)
    with pytest.raises(TooLarge):
        await read_body(receiver([b"x" * 600, b"x" * 600]), RULES, budget, declared=None, keep=True)
    assert budget.held == 0


async def test_a_trickled_body_is_cut_once_it_falls_below_the_minimum_rate() -> None:
    clock = Clock()
    chunks = [b"x"] * 900  # one byte per second: far below 100 bytes/s
    with pytest.raises(TooSlow):
        await read_body(
            receiver(chunks, clock, gap=1.0), RULES, BodyBudget(10_000),
            declared=None, keep=True, clock=clock,
        )  # fmt: skip
    assert clock.now <= RULES.timeout + 2  # cut after about `timeout` seconds


async def test_a_large_body_at_a_sane_rate_is_never_cut() -> None:
    clock = Clock()
    chunks = [b"x" * 100] * 10  # 100 bytes each 0.9 s: above the minimum rate
    body = await read_body(
        receiver(chunks, clock, gap=0.9), RULES, BodyBudget(10_000),
        declared=None, keep=True, clock=clock,
    )  # fmt: skip
    assert body is not None and len(body) == 1000


async def test_a_stalled_body_times_out_on_the_real_clock() -> None:
    async def stalled() -> MutableMapping[str, Any]:
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    rules = BodyRules(max_bytes=1000, timeout=0.05, min_rate=100.0)
    with pytest.raises(TooSlow):
        await asyncio.wait_for(
            read_body(stalled, rules, BodyBudget(10_000), declared=None, keep=True), 10
        )


async def test_bodies_beyond_the_shared_budget_are_refused_as_busy() -> None:
    budget = BodyBudget(1500)
    first_read, second_read, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_first() -> MutableMapping[str, Any]:
        if not first_read.is_set():
            first_read.set()
            return {"type": "http.request", "body": b"x" * 1000, "more_body": True}
        second_read.set()  # asking for more: the first chunk has been counted
        await release.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    holder = asyncio.create_task(read_body(slow_first, RULES, budget, declared=None, keep=True))
    await asyncio.wait_for(second_read.wait(), 10)
    assert budget.held == 1000
    with pytest.raises(Busy):
        await read_body(receiver([b"y" * 600]), RULES, budget, declared=None, keep=True)
    release.set()
    assert len(await holder or b"") == 1000
    assert budget.held == 0  # every byte given back


async def test_a_body_not_kept_holds_no_memory_but_is_still_measured() -> None:
    budget = BodyBudget(100)  # far smaller than the body: nothing is taken from it
    body = await read_body(receiver([b"x" * 900]), RULES, budget, declared=None, keep=False)
    assert body == b"" and budget.held == 0
    with pytest.raises(TooLarge):
        await read_body(receiver([b"x" * 1001]), RULES, budget, declared=None, keep=False)


async def test_a_client_that_goes_away_gives_none() -> None:
    async def gone() -> MutableMapping[str, Any]:
        return {"type": "http.disconnect"}

    assert await read_body(gone, RULES, BodyBudget(10), declared=None, keep=True) is None
