"""The Store protocol: durable events and per-sink deliveries, whatever the engine.

Semantics every implementation keeps (tests in tests/test_store.py run against each):
- accept() is idempotent on request_id across routes, and durable when it returns.
- lease() hands out due deliveries (pending/retrying whose time has come, or delivering whose
  lease expired, i.e. a crashed worker's), grouped by event, each with a fresh lease token.
- finish()/release() only act while the token still holds the lease: a worker whose lease was
  taken over (or replayed) cannot overwrite the newer state.
- Attempts count finished attempts; a lease that expires after a crash does not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

DeliveryState = Literal["pending", "delivering", "retrying", "delivered", "dead"]
DELIVERY_STATES: tuple[str, ...] = ("pending", "delivering", "retrying", "delivered", "dead")
EVENT_STATES: tuple[str, ...] = ("pending", "retrying", "delivered", "dead")


class StoreUnavailable(RuntimeError):
    """The store cannot take or give data right now (answered 503 on intake)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    source: str = "webhook"  # "webhook", or "poll" for a result recovered by reconciliation


@dataclass(frozen=True)
class DeliveryView:
    sink: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    updated_at: datetime | None
    output: dict[str, Any] | None = None  # what the sink reported (links), for sinks after it


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

    @property
    def state(self) -> str:
        return summarise_state(d.state for d in self.deliveries.values())


def summarise_state(states: Any) -> str:
    """The contract's rule: dead > retrying > delivered (all) > pending."""
    seen = list(states)
    if "dead" in seen:
        return "dead"
    if "retrying" in seen:
        return "retrying"
    if seen and all(s == "delivered" for s in seen):
        return "delivered"
    return "pending"


SUBMISSION_STATES: tuple[str, ...] = ("pending", "completed", "recovered", "lost", "unknown")


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


Outcome = Literal["delivered", "retry", "dead"]


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


@runtime_checkable
class Store(Protocol):
    async def open(self) -> None:
        """Connect, create or migrate the schema."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the store answers (readiness)."""

    async def accept(self, event: NewEvent) -> bool:
        """Store the event and its deliveries durably. False if request_id was already stored."""

    async def get_event(self, request_id: str) -> EventView | None: ...

    async def list_events(
        self, *, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[EventView]:
        """Newest first (by received_at, then request_id)."""

    async def lease(
        self, *, owner: str, limit: int, lease_seconds: float, request_id: str | None = None
    ) -> list[Job]:
        """Take up to `limit` due deliveries (grouped into jobs by event), marking them
        delivering until now + lease_seconds. With request_id, only that event's pending or
        retrying deliveries (due or not: serverless inline mode, where fal's retry is the
        schedule) and its expired ones."""

    async def extend(self, tokens: Sequence[str], lease_seconds: float) -> None:
        """Push the lease of held deliveries forward (a long download keeps its lease)."""

    async def finish(self, result: Finish) -> bool:
        """Record an attempt's outcome; attempts += 1. False if the token no longer holds."""

    async def release(self, request_id: str, sink: str, token: str) -> None:
        """Give a held delivery back, due now, without counting an attempt (shutdown)."""

    async def record_files(self, request_id: str, files: list[dict[str, Any]]) -> None:
        """Replace the event's file list (size and sha256 known after download)."""

    async def replay(self, request_id: str, sink: str | None = None, *, force: bool = False) -> int:
        """Make the event's deliveries (all, or one sink's) pending and due now, attempts 0,
        last_error cleared; dead and delivered ones included. Outputs are kept (a sink uses
        its previous output to avoid repeats) unless force. Returns how many were
        rescheduled; 0 when the event or sink is unknown."""

    async def counts(self) -> dict[str, int]:
        """Deliveries per state, for the backlog and dead gauges."""

    async def record_submission(self, submission: NewSubmission) -> None:
        """Store a submission (idempotent on request_id: a second call replaces nothing)."""

    async def get_submission(self, request_id: str) -> SubmissionView | None: ...

    async def list_submissions(
        self, *, state: str | None = None, limit: int = 100
    ) -> list[SubmissionView]:
        """Newest first; state filters on the derived state."""

    async def update_submission(
        self, request_id: str, *, state: str, detail: str | None = None
    ) -> None:
        """Set the stored state (pending/lost/unknown) and detail; checked_at = now."""

    async def overdue_submissions(
        self, *, older_than: datetime, limit: int
    ) -> list[SubmissionView]:
        """Pending submissions with no event, submitted before older_than (oldest first)."""

    async def wait_for_work(self, max_wait: float) -> None:
        """Return when new work may be due (an accept or replay here, a notification from
        another process) or after max_wait seconds, whichever is first."""
