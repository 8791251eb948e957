"""The values stores take and give: new events and submissions, views of stored ones, leased
deliveries and the results of attempts. Plain frozen dataclasses, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from falhook.store.states import summarise_state


class StoreUnavailable(RuntimeError):
    """The store cannot take or give data right now (answered 503 on intake)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(ts: datetime) -> str:
    """With milliseconds: attempts can follow each other within a second."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


# last_error of a delivery taken over from a worker whose lease ran out (it counts as an attempt).
LEASE_EXPIRED = "lease expired: the worker holding it stopped mid-attempt (crashed or killed)"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A verified webhook, ready to be stored with one delivery per sink of its route."""

    request_id: str
    route: str
    fal_status: str
    error: str | None
    payload_error: str | None
    gateway_request_id: str | None
    headers: dict[str, str]  # the four X-Fal-Webhook-* headers, for audit and replay
    body: bytes  # the raw signed bytes
    files: list[dict[str, Any]]  # FileView dicts as parsed; size/sha256 filled after download
    sinks: Sequence[str]
    received_at: datetime = field(default_factory=utcnow)
    source: str = "webhook"  # "webhook"; "poll": recovered by reconciliation; "alert"
    trace_context: str | None = None  # W3C traceparent of the span that received it


@dataclass(frozen=True)
class AttemptView:
    """One entry of a delivery's history: an attempt, or a decision made without one
    (skipped by a filter, a lease that expired under a worker that died)."""

    at: datetime
    outcome: str  # one of states.ATTEMPT_OUTCOMES
    error: str | None
    duration_ms: int | None


@dataclass(frozen=True)
class DeliveryView:
    sink: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    updated_at: datetime | None
    output: dict[str, Any] | None = None  # what the sink reported (links), for sinks after it
    history: tuple[AttemptView, ...] = ()  # oldest first


@dataclass(frozen=True)
class EventView:
    request_id: str
    route: str
    fal_status: str
    error: str | None
    payload_error: str | None
    gateway_request_id: str | None
    received_at: datetime
    headers: dict[str, str]
    body: bytes
    files: list[dict[str, Any]]
    deliveries: dict[str, DeliveryView]
    source: str = "webhook"
    submission: SubmissionView | None = None  # when falhook submitted this request itself
    trace_context: str | None = None

    @property
    def state(self) -> str:
        return summarise_state(d.state for d in self.deliveries.values())


@dataclass(frozen=True)
class NewSubmission:
    """A job falhook submitted to fal's queue with its own URL as the webhook."""

    request_id: str
    endpoint: str
    route: str
    input: dict[str, Any]
    status_url: str | None = None
    response_url: str | None = None
    cancel_url: str | None = None
    submitted_at: datetime = field(default_factory=utcnow)
    # The user's own labels (falhook.metadata's rules), never sent to fal.
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubmissionView:
    request_id: str
    endpoint: str
    route: str
    input: dict[str, Any]
    status_url: str | None
    response_url: str | None
    cancel_url: str | None
    submitted_at: datetime
    # Derived on read: "completed" when a webhook event exists for request_id, "recovered"
    # when the event came from polling (source "poll"); otherwise the stored state:
    # "pending" (waiting), "lost" (fal knows nothing / gave up), "unknown" (answer was lost).
    state: str
    detail: str | None
    checked_at: datetime | None
    received_at: datetime | None  # the event's received_at, when there is one
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LeasedDelivery:
    sink: str
    token: str
    attempts: int  # finished attempts before this one


@dataclass(frozen=True)
class Job:
    """One event and those of its deliveries this worker now holds."""

    event: EventView
    deliveries: list[LeasedDelivery]


Outcome = Literal["delivered", "retry", "dead", "skipped"]
FINISHED_STATE: dict[str, str] = {
    "delivered": "delivered",
    "retry": "retrying",
    "dead": "dead",
    "skipped": "skipped",
}


@dataclass(frozen=True)
class Finish:
    """The result of one delivery attempt."""

    request_id: str
    sink: str
    token: str
    outcome: Outcome
    error: str | None = None
    next_attempt_at: datetime | None = None  # for "retry"
    output: dict[str, Any] | None = None  # for "delivered"
    # False when the sink was not tried at all (it waits for a sink it runs `after`): the
    # delivery is rescheduled without spending one of its max_attempts.
    counted: bool = True
    duration_ms: int | None = None  # how long the attempt took (history)
    # Events stored in the same transaction as this outcome, only if the token holds: the
    # alerts a dead delivery raises (a worker dying right after the record loses none).
    alerts: tuple[NewEvent, ...] = ()


def logs_attempt(result: Finish) -> bool:
    """Whether a finish goes into the delivery's history: every attempt, and a skip (a
    decision the operator wants to see), but not a sink rescheduled to wait for another."""
    return result.counted or result.outcome == "skipped"


# --- what the console reads ------------------------------------------------------------------


@dataclass(frozen=True)
class EventQuery:
    """Which events to list: every given filter must hold. `q` searches request ids, payload
    text and error text (the event's and its deliveries' last errors)."""

    state: str | None = None
    route: str | None = None
    endpoint: str | None = None  # of the submission, when falhook submitted the request
    fal_status: str | None = None
    q: str | None = None
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    request_ids: tuple[str, ...] | None = None  # only these (the live view checks new ones)
    # The submission's metadata holds each of these (key, value) pairs.
    meta: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EventPage:
    """One page of a listing, newest first; `next_cursor` continues it (None: no more)."""

    events: list[EventView]
    next_cursor: str | None


@dataclass(frozen=True)
class Change:
    """Something the console's live view shows: an event accepted, or a delivery that
    changed state."""

    request_id: str
    kind: Literal["accepted", "delivery"]
    route: str | None = None
    sink: str | None = None
    state: str | None = None


@dataclass(frozen=True)
class ChangeMark:
    """Where a reader of changes is: the newest event seen, the delivery clock, and the
    changes already reported within the overlap window (a late commit is not missed, and
    nothing is reported twice)."""

    event_key: Any
    at: float
    seen: frozenset[tuple[str, str, str, float]] = frozenset()
    after: Any = None  # the tie-breaker of the last delivery row read at `at`
    event_after: Any = None  # the same for events, where they are read by time


@dataclass(frozen=True)
class DeadGroup:
    """Dead deliveries of one sink that died of the same error."""

    sink: str
    error: str | None
    count: int
    latest: datetime | None
    request_ids: tuple[str, ...]  # a few of them, newest first


@dataclass(frozen=True)
class DeliveryStats:
    """The overview: backlog, the oldest due delivery, the last hour's outcomes by sink and
    delivery latency (received to delivered, seconds) of the last hour."""

    by_state: dict[str, int]
    oldest_due_at: datetime | None
    outcomes: dict[str, dict[str, int]]  # sink -> outcome -> count, last hour
    latencies: list[float]  # seconds from received to delivered, last hour (a sample)
    durations_ms: list[int]  # how long each attempt took, last hour (a sample)


@dataclass(frozen=True)
class TrendWindow:
    """Time in `buckets` equal steps of `step` seconds from `since`: the overview's last day."""

    since: datetime
    step: float
    buckets: int

    @property
    def until(self) -> datetime:
        return self.since + timedelta(seconds=self.step * self.buckets)

    def starts(self) -> list[datetime]:
        return [self.since + timedelta(seconds=self.step * b) for b in range(self.buckets)]


@dataclass(frozen=True)
class DeliveryTrends:
    """What happened in each bucket of a window, oldest first (every list has one value per
    bucket): webhooks received, attempts by outcome, delivery latency percentiles by sink
    (received to delivered, seconds; None in a bucket without a delivery), and the backlog
    (deliveries pending, retrying or in flight) at each bucket's end."""

    window: TrendWindow
    received: list[int]
    outcomes: dict[str, list[int]]  # every outcome of ATTEMPT_OUTCOMES
    latency: dict[str, dict[str, list[float | None]]]  # sink -> "p50", "p90", "p99"
    backlog: list[int]
    backlog_changes: list[int]  # the backlog's net change within each bucket
