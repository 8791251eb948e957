"""Key templates such as ``fal/{route}/{request_id}/``: checked at start-up, rendered safely.

Every value comes from a payload or a submission, so each is sanitised before it becomes part
of a key: identifiers go through ``naming.id_component`` (different identifiers never share a
key), and an endpoint id keeps its ``/`` structure with each segment made a component.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from datetime import UTC, datetime

from falhook_sinks.base import EventInfo
from falhook_sinks.naming import id_component
from falhook_sinks.options import Invalid

FIELDS = ("route", "request_id", "endpoint", "date")


def check_template(
    template: str, option: str, fields: Iterable[str] = FIELDS, *, required: Iterable[str] = ()
) -> None:
    """Invalid naming `option` for unknown fields, format specs, unbalanced braces, or a
    `required` field missing."""
    allowed = set(fields)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise Invalid(option, f"is not a valid template: {exc}") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in allowed or spec or conversion:
            names = ", ".join("{" + f + "}" for f in sorted(allowed))
            raise Invalid(option, f"unknown placeholder {{{field}}} (use {names})")
    used = {field for _, field, _, _ in parsed if field}
    for field in required:
        if field not in used:
            raise Invalid(option, f"must contain {{{field}}}, or events overwrite each other")


def endpoint_path(endpoint: str | None) -> str:
    """`luma/agent/ray/v3.2/reframe` stays a path; anything odd in it is replaced."""
    if not endpoint:
        return "unknown"
    parts = [id_component(p) for p in endpoint.split("/") if p.strip()]
    return "/".join(parts) or "unknown"


def event_values(event: EventInfo) -> dict[str, str]:
    return {
        "route": id_component(event.route),
        "request_id": id_component(event.request_id),
        "endpoint": endpoint_path(event.endpoint),
        "date": _utc(event).strftime("%Y-%m-%d"),
    }


def _utc(event: EventInfo) -> datetime:
    at = event.received_at
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def render(template: str, event: EventInfo) -> str:
    return template.format_map(event_values(event))
