"""Retry policy: exponential backoff with equal jitter, capped; dead after max_attempts."""

from __future__ import annotations

import pytest

from falhook.delivery.retry import RetryPolicy

P = RetryPolicy(max_attempts=5, initial=2.0, maximum=60.0)


@pytest.mark.parametrize(("attempt", "step"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0)])
def test_the_step_doubles_from_backoff_initial(attempt: int, step: float) -> None:
    assert P.delay(attempt, rand=1.0) == step


@pytest.mark.parametrize("attempt", [1, 2, 3, 6])
def test_equal_jitter_keeps_the_delay_between_half_the_step_and_the_step(attempt: int) -> None:
    step = min(60.0, 2.0 * 2 ** (attempt - 1))
    assert P.delay(attempt, rand=0.0) == step / 2
    assert P.delay(attempt, rand=0.5) == step * 3 / 4
    assert P.delay(attempt, rand=1.0) == step


def test_unseeded_jitter_stays_within_its_bounds() -> None:
    delays = [P.delay(3) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays) and len(set(delays)) > 1


@pytest.mark.parametrize("attempt", [6, 7, 30, 60])
def test_the_delay_is_capped_at_backoff_max(attempt: int) -> None:
    assert P.delay(attempt, rand=0.0) == 30.0
    assert P.delay(attempt, rand=1.0) == 60.0


def test_the_cap_holds_for_any_attempt_number() -> None:
    many = RetryPolicy(max_attempts=10080, initial=2.0, maximum=60.0)  # a week at one a minute
    assert many.delay(2000, rand=1.0) == 60.0


def test_retry_after_above_the_backoff_is_a_floor() -> None:
    assert P.delay(1, rand=0.0, retry_after=30) == 30


def test_retry_after_below_the_backoff_changes_nothing() -> None:
    assert P.delay(3, rand=0.0, retry_after=0.5) == P.delay(3, rand=0.0) == 4.0


def test_retry_after_is_still_capped_at_backoff_max() -> None:
    assert P.delay(1, rand=0.0, retry_after=3600) == 60.0


def test_a_permanent_failure_is_dead_at_once() -> None:
    assert P.decide(1, permanent=True) == "dead"


@pytest.mark.parametrize("attempt", [1, 2, 4])
def test_a_retryable_failure_below_max_attempts_is_retried(attempt: int) -> None:
    assert P.decide(attempt, permanent=False) == "retry"


@pytest.mark.parametrize("attempt", [5, 6])
def test_a_retryable_failure_at_max_attempts_is_dead(attempt: int) -> None:
    assert P.decide(attempt, permanent=False) == "dead"


def test_max_attempts_one_means_no_retry() -> None:
    assert RetryPolicy(max_attempts=1).decide(1, permanent=False) == "dead"
