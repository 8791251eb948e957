"""What the console may do, for its API and its forms alike: replay one event, replay every
event a filter matches (in batches, each one write), reconcile submissions now. Each action
holds the store role it acts through and nothing more."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from falhook.config import Settings
from falhook.store.models import EventQuery
from falhook.store.replay import BulkResult, ReplayRefused, replay_event, replay_matching
from falhook.store.roles import ConsoleReader

if TYPE_CHECKING:
    from falhook.fal.reconcile import ReconcileStore


class ActionError(Exception):
    """An action that cannot be done as asked: `status` is the HTTP answer (404, 409)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Replays:
    """Making deliveries due again, one event or every event a filter matches, as the
    command line does (store/replay.py: a sink the route gained gets its delivery)."""

    def __init__(self, events: ConsoleReader, settings: Settings) -> None:
        self.events = events
        self.settings = settings

    async def one(self, request_id: str, sink: str | None, force: bool) -> int:
        try:
            return await replay_event(self.events, self.settings, request_id, sink, force)
        except ReplayRefused as exc:
            raise ActionError(404, exc.detail) from None

    async def matching(self, query: EventQuery, **options: Any) -> BulkResult:
        """Replay the events the query matches (store/replay.py's options: `sink`,
        `force`, and `limit` with `cursor` for one batch): all of them, or a batch."""
        try:
            return await replay_matching(self.events, self.settings, query, **options)
        except ReplayRefused as exc:
            raise ActionError(404, exc.detail) from None


class Reconciliation:
    """One reconciliation pass over every pending submission, whatever its age."""

    def __init__(self, store: ReconcileStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def now(self) -> dict[str, int]:
        from falhook.fal.queue import KEY_ENV, make_queue

        key = os.environ.get(KEY_ENV)
        if not key:
            raise ActionError(
                409, f"reconciling asks fal's queue, which needs {KEY_ENV} in the environment"
            )
        from falhook.fal.reconcile import Reconciler

        queue = make_queue(self.settings, key=key)
        try:
            now = msgspec.structs.replace(self.settings.reconcile, deadline=0.001)
            return await Reconciler(self.store, queue, self.settings, now).run_once()
        finally:
            await queue.aclose()


@dataclass(frozen=True)
class Actions:
    """Every action the console may take (issue by issue, more join here)."""

    replays: Replays
    reconciliation: Reconciliation
