"""What a store does, as the roles its callers need: each caller depends on the smallest one,
and a store can be written and tested role by role.

- ``StoreLifecycle``: open, close, ping (every process).
- ``IntakeStore``: accept an event durably (the webhook endpoint, reconciliation).
- ``DeliveryQueue``: lease due deliveries, keep and finish them (the worker).
- ``EventReader``: read events back, make them due again (CLI, console, metrics).
- ``ConsoleReader``: what the operator console adds: filtered, searched, paged listings,
  the changes since a mark (its live view), dead deliveries grouped, delivery statistics.
- ``SubmissionReader``: jobs falhook submitted to fal, read back (the console).
- ``SubmissionStore``: what ``SubmissionReader`` reads, written (submit, reconciliation).

``Store`` is all of them: what ``falhook.store.make_store`` returns.

Semantics every implementation keeps (tests/inprocess/test_store.py runs against each):
- accept() is idempotent on request_id across routes, and durable when it returns.
- lease() hands out due deliveries (pending/retrying whose time has come, or delivering whose
  lease expired, i.e. a crashed worker's), grouped by event, each with a fresh lease token.
- finish()/release() only act while the token still holds the lease: a worker whose lease was
  taken over (or replayed) cannot overwrite the newer state.
- Attempts count finished attempts, and a lease that expired because its worker died.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from falhook.store.models import (
    Change,
    ChangeMark,
    DeadGroup,
    DeliveryStats,
    DeliveryTrends,
    EventPage,
    EventQuery,
    EventView,
    Finish,
    Job,
    NewEvent,
    NewSubmission,
    SubmissionView,
    TrendWindow,
)


@runtime_checkable
class StoreLifecycle(Protocol):
    async def open(self) -> None:
        """Connect, create or migrate the schema."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the store answers (readiness)."""


@runtime_checkable
class IntakeStore(Protocol):
    async def accept(self, event: NewEvent) -> bool:
        """Store the event and its deliveries durably. False if request_id was already stored."""


@runtime_checkable
class DeliveryQueue(Protocol):
    async def lease(
        self,
        *,
        owner: str,
        limit: int,
        lease_seconds: float,
        request_id: str | None = None,
        sinks: Sequence[str] | None = None,
    ) -> list[Job]:
        """Take up to `limit` due deliveries (grouped into jobs by event), marking them
        delivering until now + lease_seconds. With request_id, only that event's pending or
        retrying deliveries (due or not: serverless inline mode, where fal's retry is the
        schedule, and `events replay --now`) and its expired ones; with `sinks` too, only
        those sinks' deliveries of it."""

    async def extend(self, tokens: Sequence[str], lease_seconds: float) -> None:
        """Push the lease of held deliveries forward (a long download keeps its lease)."""

    async def finish(self, result: Finish) -> bool:
        """Record an attempt's outcome; attempts += 1. False if the token no longer holds."""

    async def finish_many(
        self, results: Sequence[Finish], files: Mapping[str, list[dict[str, Any]]] | None = None
    ) -> list[bool]:
        """``finish`` of each result, and ``record_files`` of each event in `files` (request
        id -> its file list), in one transaction: all of it is durable when this returns, or
        none of it. For each result, whether its token still held."""

    async def release(self, request_id: str, sink: str, token: str) -> None:
        """Give a held delivery back, due now, without counting an attempt (shutdown)."""

    async def record_files(self, request_id: str, files: list[dict[str, Any]]) -> None:
        """Replace the event's file list (size and sha256 known after download)."""

    async def wait_for_work(self, max_wait: float) -> None:
        """Return when new work may be due (an accept or replay here, a notification from
        another process) or after max_wait seconds, whichever is first."""

    async def get_event(self, request_id: str) -> EventView | None: ...

    async def prune_history(self, older_than: datetime) -> int:
        """Delete history entries (attempts) older than that; how many went."""


@runtime_checkable
class EventReader(Protocol):
    async def get_event(self, request_id: str) -> EventView | None: ...

    async def list_events(
        self, *, state: str | None = None, route: str | None = None, limit: int = 100
    ) -> list[EventView]:
        """Newest first."""

    async def counts(self) -> dict[str, int]:
        """Deliveries per state, for the backlog and dead gauges."""

    async def replay(
        self,
        request_id: str,
        sink: str | None = None,
        *,
        force: bool = False,
        add_to_routes: Collection[str] = (),
    ) -> int:
        """Make the event's deliveries (all, or one sink's) pending and due now, attempts 0,
        last_error cleared; dead and delivered ones included. Outputs are kept (a sink uses
        its previous output to avoid repeats) unless force. With `sink` and an event of one
        of `add_to_routes` that has no delivery for it (the sink was added to its route
        after it arrived), the delivery is created, pending. Returns how many were
        rescheduled or created; 0 when the event or sink is unknown."""


@runtime_checkable
class ConsoleReader(EventReader, Protocol):
    async def find_events(
        self, query: EventQuery, *, limit: int = 50, cursor: str | None = None
    ) -> EventPage:
        """Events matching every filter of `query`, newest stored first, `limit` at most,
        after `cursor` (a page's next_cursor). Paging is stable while events arrive: no
        event is listed twice, none that was there is skipped. A malformed cursor raises
        ValueError."""

    async def find_ids(
        self, query: EventQuery, *, limit: int = 500, cursor: str | None = None
    ) -> tuple[list[str], str | None]:
        """The request ids find_events would list (bulk actions page through these)."""

    async def count_events(self, query: EventQuery) -> int: ...

    async def replay_many(
        self,
        request_ids: Sequence[str],
        sink: str | None = None,
        *,
        force: bool = False,
        add_to_routes: Collection[str] = (),
    ) -> tuple[int, int]:
        """replay() of each event (one sink's deliveries, or all) in one write; returns
        (deliveries rescheduled or created, events that had any)."""

    async def changes(self, mark: ChangeMark | None) -> tuple[list[Change], ChangeMark]:
        """Events accepted and delivery state changes since `mark` (None: none, only the
        mark of now), oldest first, and the mark to ask from next time. Works across
        processes: it reads the store, nothing in memory."""

    async def dead_groups(self, limit: int = 100) -> list[DeadGroup]:
        """Dead deliveries grouped by sink and last error, the largest groups first."""

    async def dead_count(self) -> int:
        """How many deliveries are dead (cheap: the console's navigation shows it)."""

    async def delivery_stats(self, since: datetime) -> DeliveryStats: ...

    async def delivery_trends(self, window: TrendWindow) -> DeliveryTrends:
        """What happened in each bucket of the window (store/trends.py): webhooks received,
        attempts by outcome, latency percentiles by sink, the backlog at each bucket's end.
        Reads the window's events and attempts through their time indexes."""


@runtime_checkable
class SubmissionReader(Protocol):
    async def get_submission(self, request_id: str) -> SubmissionView | None: ...

    async def list_submissions(
        self, *, state: str | None = None, limit: int = 100
    ) -> list[SubmissionView]:
        """Newest first; state filters on the derived state."""


@runtime_checkable
class SubmissionStore(SubmissionReader, Protocol):
    async def record_submission(self, submission: NewSubmission) -> None:
        """Store a submission (idempotent on request_id: a second call replaces nothing)."""

    async def update_submission(
        self, request_id: str, *, state: str, detail: str | None = None
    ) -> None:
        """Set the stored state (pending/lost/unknown) and detail; checked_at = now."""

    async def overdue_submissions(
        self, *, older_than: datetime, limit: int
    ) -> list[SubmissionView]:
        """Pending submissions with no event, submitted before older_than (oldest first)."""


@runtime_checkable
class Store(StoreLifecycle, IntakeStore, DeliveryQueue, ConsoleReader, SubmissionStore, Protocol):
    """Every role: one engine's whole store."""
