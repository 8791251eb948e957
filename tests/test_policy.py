"""Retry policy: exponential backoff with equal jitter, capped; dead after max_attempts."""

from __future__ import annotations

import pytest

from receiver.policy import RetryPolicy

P = RetryPolicy(max_attempts=5, initial=2.0, maximum=60.0)


@pytest.mark.parametrize(("attempt", "step"), [(1, 2.0), (2, 4.0), (3, 8.0), (6, 60.0), (30, 60.0)])
def test_delay_doubles_within_equal_jitter_and_caps(attempt: int, step: float) -> None:
    assert P.delay(attempt, rand=0.0) == step / 2
    assert P.delay(attempt, rand=1.0) == step
    assert step / 2 <= P.delay(attempt) <= step


def test_retry_after_is_a_floor_but_still_capped() -> None:
    assert P.delay(1, rand=0.0, retry_after=30) == 30
    assert P.delay(1, rand=0.0, retry_after=0.1) == 1.0
    assert P.delay(1, rand=0.0, retry_after=3600) == 60.0


def test_dead_after_max_attempts_or_at_once_when_permanent() -> None:
    assert [P.decide(n, permanent=False) for n in (1, 4, 5, 6)] == [
        "retry",
        "retry",
        "dead",
        "dead",
    ]
    assert P.decide(1, permanent=True) == "dead"
