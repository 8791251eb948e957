"""The list's filters from a query string, a form or a JSON object, checked: a mistake is a
ParamError naming the parameter (400)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from falhook.metadata import MetadataError, parse_pairs
from falhook.store.models import EventQuery
from falhook.store.states import DELIVERY_STATES, EVENT_STATES, SUBMISSION_STATES

FILTERS = ("state", "route", "endpoint", "fal_status", "q", "since", "until")
STATES = tuple(dict.fromkeys((*EVENT_STATES, *DELIVERY_STATES)))
FAL_STATUSES = ("OK", "ERROR")
MAX_LIMIT = 500


class ParamError(ValueError):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


def _text(values: Mapping[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ParamError(name, "must be a string")
    if len(value) > 500:
        raise ParamError(name, "is too long (500 characters at most)")
    return value


def parse_time(name: str, value: str | None) -> datetime | None:
    """ISO 8601 (`2026-11-23T19:12:29Z`, a date, or a browser's local `datetime-local`
    value, taken as UTC) or unix seconds."""
    if value is None:
        return None
    try:
        if value.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(value), UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise ParamError(name, "must be an ISO 8601 time or unix seconds") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def event_query(values: Mapping[str, Any]) -> EventQuery:
    state = _text(values, "state")
    if state is not None and state not in STATES:
        raise ParamError("state", f"must be one of {', '.join(STATES)}")
    fal_status = _text(values, "fal_status")
    if fal_status is not None and fal_status not in FAL_STATUSES:
        raise ParamError("fal_status", "must be OK or ERROR")
    return EventQuery(
        state=state,
        route=_text(values, "route"),
        endpoint=_text(values, "endpoint"),
        fal_status=fal_status,
        q=_text(values, "q"),
        since=parse_time("since", _text(values, "since")),
        until=parse_time("until", _text(values, "until")),
        meta=meta_filters(values),
    )


def meta_filters(values: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """`meta.KEY=VALUE` parameters (and the list form's `meta` field, `KEY=VALUE`): events
    whose submission's metadata holds each pair."""
    pairs: list[str] = []
    for name in _meta_names(values):
        value = _text(values, name)
        if value is not None:
            pairs.append(value if name == "meta" else f"{name[5:]}={value}")
    try:
        return tuple(parse_pairs(pairs, "meta").items())
    except MetadataError as exc:
        raise ParamError("meta", str(exc)) from None


def _meta_names(values: Mapping[str, Any]) -> list[str]:
    return sorted(name for name in values if name == "meta" or name.startswith("meta."))


def submission_state(values: Mapping[str, Any]) -> str | None:
    """The `state` filter of the submissions list, if given."""
    state = values.get("state") or None
    if state is not None and state not in SUBMISSION_STATES:
        raise ParamError("state", f"must be one of {', '.join(SUBMISSION_STATES)}")
    return state


def limit_of(values: Mapping[str, Any], default: int) -> int:
    raw = values.get("limit")
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise ParamError("limit", "must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ParamError("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


def filters_of(values: Mapping[str, Any]) -> dict[str, str]:
    """The filters given, as strings (to carry them in links and forms)."""
    names = [*FILTERS, *_meta_names(values)]
    return {k: str(values[k]) for k in names if values.get(k) not in (None, "")}
