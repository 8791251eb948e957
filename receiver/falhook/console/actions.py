"""What the console does, for its API and its forms alike: replay one event, replay every
event a filter matches (in batches, each one write), reconcile submissions now."""

from __future__ import annotations

import os
from dataclasses import dataclass

import msgspec

from falhook.config import Settings
from falhook.store.models import EventQuery
from falhook.store.roles import Store

BATCH = 500  # events per bulk-replay write


class ActionError(Exception):
    """An action that cannot be done as asked: `status` is the HTTP answer (404, 409)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def replay_one(store: Store, request_id: str, sink: str | None, force: bool) -> int:
    view = await store.get_event(request_id)
    if view is None:
        raise ActionError(404, f"no event with request_id {request_id!r}")
    if sink is not None and sink not in view.deliveries:
        known = ", ".join(sorted(view.deliveries))
        raise ActionError(404, f"the event has no sink {sink!r} (it has: {known})")
    return await store.replay(request_id, sink, force=force)


@dataclass(frozen=True)
class BulkResult:
    scheduled: int  # deliveries made due
    events: int  # events that had any
    next_cursor: str | None  # where a batched replay goes on; None: done


async def replay_matching(
    store: Store,
    query: EventQuery,
    *,
    sink: str | None = None,
    force: bool = False,
    limit: int | None = None,
    cursor: str | None = None,
) -> BulkResult:
    """Replay the events the query matches: all of them (limit None), or one batch of at
    most `limit` after `cursor` (the console's progress bar asks batch by batch)."""
    scheduled = events = 0
    while True:
        size = BATCH if limit is None else min(limit, BATCH)
        ids, cursor = await store.find_ids(query, limit=size, cursor=cursor)
        if ids:
            d, e = await store.replay_many(ids, sink, force=force)
            scheduled, events = scheduled + d, events + e
        if cursor is None or limit is not None:
            return BulkResult(scheduled, events, cursor)


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
