"""Retry policy as data: a pure function of the attempt number (no I/O, no clock)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 12
    initial: float = 2.0
    maximum: float = 900.0

    def delay(
        self, attempt: int, *, rand: float | None = None, retry_after: float | None = None
    ) -> float:
        """Seconds before the next try after `attempt` failed attempts (1-based).

        Exponential, capped, with "equal jitter": half the step is fixed, half random, so a
        burst of failures spreads out without ever retrying immediately. A server's
        Retry-After is a floor (we never come back sooner than asked), still capped.
        """
        # The exponent is capped first: 2 ** 2000 overflows a float long before the max.
        doublings = min(max(0, attempt - 1), 64)
        step = min(self.maximum, self.initial * 2.0**doublings)
        r = random.random() if rand is None else rand
        delay = step / 2 + step / 2 * r
        if retry_after is not None and retry_after > delay:
            delay = min(retry_after, self.maximum)
        return delay

    def decide(self, attempt: int, *, permanent: bool) -> Literal["retry", "dead"]:
        """After `attempt` failed attempts: try again, or dead-letter."""
        return "dead" if permanent or attempt >= self.max_attempts else "retry"
