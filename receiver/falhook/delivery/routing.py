"""Routing rules: which of a route's sinks an event skips (each sink's `filter`), and the
alert events a dead delivery raises (the route's `on_dead`). Decisions only: the worker
records them.

Filters are matched against the event document: the event as received, as sinks see it
(``ctx.event.document()``), with ``endpoint`` (the submitted endpoint id, or null) at its
top. Files are listed as the webhook gave them (before download). Alert events skip no
sink: ``on_dead`` names the sinks that get them, whatever their filters.

An alert is an event of the dead event's route with ``source = "alert"``, delivered to the
``on_dead`` sinks with the same retries. It is stored with the dead outcome, in the same
transaction (``Finish.alerts``), so a worker that dies right after loses nothing. Its
request id is derived from the dead event's, the dead sink and the lease that went dead:
the same dead outcome recorded twice is one alert, and a second death after a replay is
a second alert. An alert whose own delivery dies raises no alert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import msgspec

from falhook.config import Settings
from falhook.filters import Filter
from falhook.store.document import file_views, payload_of, submission_doc
from falhook.store.models import EventView, NewEvent, iso, utcnow

ALERT_SOURCE = "alert"
DEAD_KIND = "delivery_dead"


class Router:
    """The routing rules of one configuration."""

    def __init__(self, settings: Settings) -> None:
        self.filters: dict[str, Filter] = {
            name: s.filter for name, s in settings.sinks.items() if s.filter is not None
        }
        self.on_dead = {name: route.on_dead for name, route in settings.routes.items()}
        self.sinks_after = {name: s.after for name, s in settings.sinks.items()}
        self.public_url = settings.receiver.public_url.rstrip("/")

    def filters_any(self, event: EventView, sinks: Iterable[str]) -> bool:
        """Whether a filter may skip one of these sinks (no document is built otherwise)."""
        return event.source != ALERT_SOURCE and any(s in self.filters for s in sinks)

    def skips(self, event: EventView, sinks: Iterable[str]) -> dict[str, str]:
        """{sink: why} for the sinks whose filter the event does not match."""
        if event.source == ALERT_SOURCE:
            return {}
        document: dict[str, Any] | None = None
        skipped: dict[str, str] = {}
        for sink in sinks:
            matcher = self.filters.get(sink)
            if matcher is None:
                continue
            document = document if document is not None else filter_document(event)
            if not matcher.matches(document):
                skipped[sink] = f"skipped: the event does not match filter {matcher.describe()}"
        return skipped

    def alerts(
        self,
        event: EventView,
        sink: str,
        *,
        attempts: int,
        error: str | None,
        token: str,
        trace_context: str | None = None,
    ) -> tuple[NewEvent, ...]:
        """The alert a dead delivery of `sink` raises (none for an alert event itself, or
        a route without on_dead)."""
        targets = self.on_dead.get(event.route, ())
        if not targets or event.source == ALERT_SOURCE:
            return ()
        alert = dead_alert(event, sink, attempts=attempts, error=error, url=self.console(event))
        return (
            alert_event(
                event, alert, alert_id(event.request_id, sink, token), targets, trace_context
            ),
        )

    def console(self, event: EventView) -> str:
        return f"{self.public_url}/console/events/{quote(event.request_id, safe='')}"

    def after(self, event: EventView) -> Mapping[str, Sequence[str]]:
        """The `after` order for this event: none for an alert (it has no files, and its
        sinks must not wait on sinks the alert is not delivered to)."""
        return {} if event.source == ALERT_SOURCE else self.sinks_after


def filter_document(event: EventView) -> dict[str, Any]:
    """What filters see: the event document sinks get, with `endpoint` at the top."""
    submission = submission_doc(event)
    return {
        "request_id": event.request_id,
        "route": event.route,
        "endpoint": submission["endpoint"] if submission else None,
        "fal_status": event.fal_status,
        "error": event.error,
        "payload_error": event.payload_error,
        "received_at": iso(event.received_at),
        "files": file_views(event.files),
        "gateway_request_id": event.gateway_request_id,
        "source": event.source,
        "submission": submission,
        "payload": payload_of(event),
    }


def alert_id(request_id: str, sink: str, token: str) -> str:
    """One id per dead outcome: its event, its sink and the lease it was recorded under."""
    digest = hashlib.blake2b(f"{request_id}\0{sink}\0{token}".encode(), digest_size=12)
    return f"alert-{digest.hexdigest()}"


def dead_alert(
    event: EventView, sink: str, *, attempts: int, error: str | None, url: str
) -> dict[str, Any]:
    """The alert's payload: what died, where, and where to look."""
    submission = submission_doc(event)
    return {
        "kind": DEAD_KIND,
        "request_id": event.request_id,
        "route": event.route,
        "sink": sink,
        "attempts": attempts,
        "last_error": error,
        "fal_status": event.fal_status,
        "endpoint": submission["endpoint"] if submission else None,
        "received_at": iso(event.received_at),
        "dead_at": iso(utcnow()),
        "console_url": url,
    }


def alert_event(
    event: EventView,
    alert: dict[str, Any],
    request_id: str,
    sinks: Sequence[str],
    trace_context: str | None,
) -> NewEvent:
    """The alert as an event of the dead event's route: an envelope (status ERROR, the alert
    as payload, no files), so every sink delivers it as it delivers a failed result."""
    error = (
        f"delivery of {alert['request_id']} to sink {alert['sink']!r} is dead after "
        f"{alert['attempts']} attempt(s): {alert['last_error']}"
    )
    body = msgspec.json.encode(
        {"request_id": request_id, "status": "ERROR", "error": error, "payload": alert}
    )
    return NewEvent(
        request_id=request_id,
        route=event.route,
        fal_status="ERROR",
        error=error,
        payload_error=None,
        gateway_request_id=None,
        headers={},
        body=body,
        files=[],
        sinks=list(sinks),
        source=ALERT_SOURCE,
        trace_context=trace_context,
    )
