"""One leased delivery within a job: the attempt the worker makes (or decides not to make),
and what came of it.

An attempt starts undecided. Its outcome changes only through the transitions below, each a
decision the worker makes about a sink:

    skip     the sink's filter does not match the event       skipped, no attempt counted
    wait     a sink it runs `after` has not delivered yet     retry later, no attempt counted
    fail     the sink (or its download) failed                retry or dead, by the policy
    deliver  the sink took the event                          delivered, with its output

`reopen` undoes a delivery within the same job, for a sink called once more with files that
appeared after it ran (posters). `finish` turns the decision into the store's record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from falhook.delivery.retry import RetryPolicy
from falhook.store.models import FINISHED_STATE, Finish, LeasedDelivery, NewEvent, Outcome
from falhook_sinks.base import Permanent, Retryable


@dataclass
class Attempt:
    lease: LeasedDelivery
    outcome: Outcome | None = None  # None: not decided yet
    error: str | None = None
    retry_after: float | None = None  # a server's Retry-After, a floor for the backoff
    output: dict[str, Any] | None = None
    waits_for: list[str] | None = None  # set by `wait`: the sinks it runs after
    counted: bool = True  # False: decided without calling the sink (no attempt is spent)
    duration_ms: int | None = None  # the time its sink calls took, for the history

    @property
    def sink(self) -> str:
        return self.lease.sink

    @property
    def number(self) -> int:
        """This attempt's number, 1 for the first (what the sink sees as ctx.attempt)."""
        return self.lease.attempts + 1

    @property
    def decided(self) -> bool:
        return self.outcome is not None

    @property
    def state_after(self) -> str:
        """The delivery's state once this attempt is recorded (undecided: retried)."""
        return FINISHED_STATE[self.outcome or "retry"]

    # --- the transitions ----------------------------------------------------------------------

    def skip(self, why: str) -> None:
        self.outcome, self.error, self.counted = "skipped", why, False

    def wait(self, deps: Sequence[str]) -> None:
        self.outcome, self.waits_for, self.counted = "retry", list(deps), False
        self.error = f"waiting for {list(deps)} to deliver"

    def fail(
        self, error: Retryable | Permanent, policy: RetryPolicy, *, counted: bool = True
    ) -> None:
        """Retry later or dead-letter, as the policy says for this attempt's number (a
        Permanent error is dead at once). `counted` False: the sink was not called."""
        self.outcome = policy.decide(self.number, permanent=isinstance(error, Permanent))
        self.error = str(error) or type(error).__name__
        self.retry_after = error.retry_after if isinstance(error, Retryable) else None
        self.counted = counted

    def deliver(self, output: dict[str, Any] | None) -> None:
        self.outcome, self.output, self.error = "delivered", output, None

    def reopen(self) -> None:
        """Undecided again: the sink runs once more in this job."""
        self.outcome = self.output = None

    def took(self, seconds: float) -> None:
        """Add a sink call's time (a sink called twice in one attempt: both count)."""
        self.duration_ms = (self.duration_ms or 0) + round(seconds * 1000)

    # --- the record ---------------------------------------------------------------------------

    def finish(
        self, request_id: str, next_at: datetime | None, alerts: tuple[NewEvent, ...] = ()
    ) -> Finish:
        return Finish(
            request_id=request_id,
            sink=self.sink,
            token=self.lease.token,
            outcome=self.outcome or "retry",
            error=self.error,
            next_attempt_at=next_at,
            output=self.output,
            counted=self.counted,
            duration_ms=self.duration_ms,
            alerts=alerts,
        )
