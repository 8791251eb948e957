"""Replay, for the command line and the console alike: one event (all its deliveries, or
one sink's), or every event a filter matches (in batches, each one write).

A sink the event's route has but the event has no delivery for (it was added to the route
after the event arrived) gets its delivery created; a sink the route does not have is
refused, naming the sinks there are.
"""

from __future__ import annotations

from dataclasses import dataclass

from falhook.config import Settings
from falhook.store.models import EventQuery, EventView
from falhook.store.roles import ConsoleReader, EventReader

BATCH = 500  # events per bulk-replay write


class ReplayRefused(Exception):
    """A replay that cannot be done as asked (an unknown event or sink): nothing changed."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def route_sinks(settings: Settings, route: str) -> tuple[str, ...]:
    """The sinks the configuration gives a route now (none for a route it no longer has)."""
    found = settings.routes.get(route)
    return tuple(found.sinks) if found is not None else ()


def routes_with(settings: Settings, sink: str) -> list[str]:
    """The routes the configuration gives this sink."""
    return sorted(name for name, route in settings.routes.items() if sink in route.sinks)


def check_sink(settings: Settings, view: EventView, sink: str | None) -> bool:
    """Whether replaying `sink` of this event creates its delivery (its route gained the
    sink); ReplayRefused when neither the event nor its route has it."""
    if sink is None or sink in view.deliveries:
        return False
    if sink in route_sinks(settings, view.route):
        return True
    known = ", ".join(sorted(set(view.deliveries) | set(route_sinks(settings, view.route))))
    raise ReplayRefused(
        f"event {view.request_id!r} has no sink {sink!r}, nor does its route "
        f"{view.route!r} (it has: {known or 'none'})"
    )


async def replay_event(
    store: EventReader, settings: Settings, request_id: str, sink: str | None, force: bool
) -> int:
    """Make one event's deliveries (all, or `sink`'s) due again; how many."""
    view = await store.get_event(request_id)
    if view is None:
        raise ReplayRefused(f"no event with request_id {request_id!r}")
    gained = check_sink(settings, view, sink)
    return await store.replay(
        request_id, sink, force=force, add_to_routes=(view.route,) if gained else ()
    )


@dataclass(frozen=True)
class BulkResult:
    scheduled: int  # deliveries made due
    events: int  # events that had any
    next_cursor: str | None  # where a batched replay goes on; None: done


async def replay_matching(
    store: ConsoleReader,
    settings: Settings,
    query: EventQuery,
    *,
    sink: str | None = None,
    force: bool = False,
    limit: int | None = None,
    cursor: str | None = None,
) -> BulkResult:
    """Replay the events the query matches: all of them (limit None), or one batch of at
    most `limit` after `cursor` (the console's progress bar asks batch by batch). With
    `sink`, only that sink's deliveries, created for events of the routes that have it
    now; a sink no route has is refused."""
    gained: list[str] = []
    if sink is not None:
        gained = routes_with(settings, sink)
        if not gained:
            known = ", ".join(sorted(settings.sinks)) or "none"
            raise ReplayRefused(f"no route has a sink {sink!r} (sinks: {known})")
    scheduled = events = 0
    while True:
        size = BATCH if limit is None else min(limit, BATCH)
        ids, cursor = await store.find_ids(query, limit=size, cursor=cursor)
        if ids:
            d, e = await store.replay_many(ids, sink, force=force, add_to_routes=gained)
            scheduled, events = scheduled + d, events + e
        if cursor is None or limit is not None:
            return BulkResult(scheduled, events, cursor)
