"""What the console does, for its API and its forms alike: replay one event, replay every
event a filter matches (in batches, each one write), reconcile submissions now."""

from __future__ import annotations

import os
from typing import Any

import msgspec

from falhook.config import Settings
from falhook.store.models import EventQuery
from falhook.store.replay import BulkResult, ReplayRefused, replay_event
from falhook.store.replay import replay_matching as matching
from falhook.store.roles import Store


class ActionError(Exception):
    """An action that cannot be done as asked: `status` is the HTTP answer (404, 409)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def replay_one(
    store: Store, settings: Settings, request_id: str, sink: str | None, force: bool
) -> int:
    try:
        return await replay_event(store, settings, request_id, sink, force)
    except ReplayRefused as exc:
        raise ActionError(404, exc.detail) from None


async def replay_matching(
    store: Store, settings: Settings, query: EventQuery, **options: Any
) -> BulkResult:
    """Replay the events the query matches (store/replay.py's options): all, or a batch."""
    try:
        return await matching(store, settings, query, **options)
    except ReplayRefused as exc:
        raise ActionError(404, exc.detail) from None


async def reconcile_now(store: Store, settings: Settings) -> dict[str, int]:
    """One reconciliation pass over every pending submission, whatever its age."""
    from falhook.fal.queue import KEY_ENV, make_queue

    key = os.environ.get(KEY_ENV)
    if not key:
        raise ActionError(
            409, f"reconciling asks fal's queue, which needs {KEY_ENV} in the environment"
        )
    from falhook.fal.reconcile import Reconciler

    queue = make_queue(settings, key=key)
    try:
        now = msgspec.structs.replace(settings.reconcile, deadline=0.001)
        return await Reconciler(store, queue, settings, now).run_once()
    finally:
        await queue.aclose()
