"""What the two stores share, written once against a small `Dialect`: how an engine writes a
placeholder, a list of values, an event's "has a delivery that ..." and false, and how it
stores times and JSON. Built on it: the listing filters (`query_where`), the state filters,
the row-to-view builders with their column lists, the submission's derived state, and an
accepted event's row. Leases, accepts, finishes and full-text search stay per engine
(sqlite.py, postgres.py), where they differ for good reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from falhook.store.models import (
    AttemptView,
    DeliveryView,
    EventQuery,
    EventView,
    NewEvent,
    SubmissionView,
)
from falhook.store.states import DELIVERY_STATES, state_predicates

Row = Sequence[Any]  # a sqlite3 row or an asyncpg Record: both index by position


class Params:
    """The values of a statement being built, and their placeholders in its dialect."""

    def __init__(self, numbered: bool) -> None:
        self.numbered = numbered
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}" if self.numbered else "?"


@dataclass(frozen=True)
class Dialect:
    numbered: bool  # $1, $2, ... (PostgreSQL); ? (SQLite)
    event_key: str  # the column of `e` that deliveries `d` point at
    delivery_key: str  # that column in deliveries
    state_column: str  # how a condition names a delivery's state
    false: str
    time_in: Callable[[datetime], Any]  # a time as stored
    time_out: Callable[[Any], datetime | None]
    json_in: Callable[[Any], Any]  # a document as the accept statement takes it
    json_out: Callable[[Any], Any]
    in_list: Callable[[Params, Sequence[str]], str]  # "IN (?, ?)" / "= ANY($1::text[])"
    # A submission's metadata value by key (keys are plain names: falhook.metadata).
    meta_value: Callable[[Params, str], str]
    epoch_of: Callable[[str], str]  # a stored time column as epoch seconds, a float
    floor_int: Callable[[str], str]  # a non-negative number rounded down, as an integer

    def params(self) -> Params:
        return Params(self.numbered)

    def has(self, condition: str) -> str:
        """The event `e` has a delivery `d` for which `condition` holds."""
        return (
            f"EXISTS (SELECT 1 FROM deliveries d WHERE d.{self.delivery_key} = e.{self.event_key}"
            f" AND {condition})"
        )

    def state_where(self, state: str, p: Params) -> str:
        """Events in an event state, or holding a delivery in a delivery state
        ("delivering"); an unknown state matches nothing."""
        if state in _EVENT_STATES[self]:
            return _EVENT_STATES[self][state]
        if state in DELIVERY_STATES:
            return self.has(f"{self.state_column} = {p(state)}")
        return self.false


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:  # a naive time is taken as UTC, never as the host's zone
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _json_path(key: str) -> str:
    """SQLite's JSON path to a metadata key: quoted, a plain name is literal."""
    return '$."' + key + '"'


SQLITE = Dialect(
    numbered=False,
    event_key="id",
    delivery_key="event_id",
    # `+d.state` keeps SQLite from answering through the state index (every dead delivery,
    # for each event listed) instead of the event's own few deliveries by their key.
    state_column="+d.state",
    false="0",
    time_in=_epoch,
    time_out=_from_epoch,
    json_in=msgspec.json.encode,
    json_out=msgspec.json.decode,
    in_list=lambda p, values: f"IN ({','.join(p(v) for v in values) or 'NULL'})",
    meta_value=lambda p, key: f"json_extract(metadata, {p(_json_path(key))})",
    epoch_of=lambda column: column,  # stored as epoch seconds
    floor_int=lambda value: f"CAST({value} AS INTEGER)",  # truncates: the floor when >= 0
)
POSTGRES = Dialect(
    numbered=True,
    event_key="request_id",
    delivery_key="request_id",
    state_column="d.state",
    false="false",
    time_in=_as_utc,
    time_out=lambda value: value,  # timestamptz comes back as an aware datetime
    json_in=lambda value: msgspec.json.encode(value).decode(),
    json_out=lambda value: value,  # the json codec decodes it (postgres._init_connection)
    in_list=lambda p, values: f"= ANY({p(list(values))}::text[])",
    meta_value=lambda p, key: f"metadata->>{p(key)}",
    # float8, not extract's numeric: dividing numerics is slow over a day of attempts.
    epoch_of=lambda column: f"extract(epoch FROM {column})::float8",
    floor_int=lambda value: f"floor({value})::int",  # a cast alone would round
)
_EVENT_STATES = {d: state_predicates(d.has, column=d.state_column) for d in (SQLITE, POSTGRES)}


def query_where(
    d: Dialect, query: EventQuery, p: Params, search: Callable[[str, Params], str]
) -> list[str]:
    """The conditions on events `e` of every filter of the query; `search(q, p)` is the
    engine's condition for the search text."""
    where: list[str] = []
    for column, value in (("e.route", query.route), ("e.fal_status", query.fal_status)):
        if value is not None:
            where.append(f"{column} = {p(value)}")
    if query.endpoint is not None:
        submitted = f"SELECT request_id FROM submissions WHERE endpoint = {p(query.endpoint)}"
        where.append(f"e.request_id IN ({submitted})")
    if query.request_ids is not None:
        where.append(f"e.request_id {d.in_list(p, query.request_ids)}")
    for key, value in query.meta:
        labelled = f"SELECT request_id FROM submissions WHERE {d.meta_value(p, key)} = {p(value)}"
        where.append(f"e.request_id IN ({labelled})")
    if query.since is not None:
        where.append(f"e.received_at >= {p(d.time_in(query.since))}")
    if query.until is not None:
        where.append(f"e.received_at < {p(d.time_in(query.until))}")
    if query.state is not None:
        where.append(d.state_where(query.state, p))
    if query.q:
        where.append(search(query.q, p))
    return where


# --- an accepted event ------------------------------------------------------------------------

EVENT_COLUMNS = (
    "request_id, route, fal_status, error, payload_error, gateway_request_id, received_at,"
    " headers, body, files, source, trace_context"
)


def accept_row(d: Dialect, event: NewEvent) -> tuple[Any, ...]:
    """The event's values in EVENT_COLUMNS order, as the dialect stores them."""
    return (
        event.request_id,
        event.route,
        event.fal_status,
        event.error,
        event.payload_error,
        event.gateway_request_id,
        d.time_in(event.received_at),
        d.json_in(event.headers),
        event.body,
        d.json_in(event.files),
        event.source,
        event.trace_context,
    )


def accepted_sinks(event: NewEvent) -> tuple[str, ...]:
    """The event's deliveries, in the route's order: a sink named twice is one delivery."""
    return tuple(dict.fromkeys(event.sinks))


# --- rows to views ----------------------------------------------------------------------------

# Derived on read: "completed" once the event is there, "recovered" when polling brought it.
SUBMISSION_STATE_SQL = """
    CASE
        WHEN e.source = 'poll' THEN 'recovered'
        WHEN e.request_id IS NOT NULL THEN 'completed'
        ELSE s.state
    END
"""
SUBMISSION_COLUMNS = (
    "s.request_id, s.endpoint, s.route, s.input, s.status_url, s.response_url, s.cancel_url,"
    f" s.submitted_at, {SUBMISSION_STATE_SQL} AS state, s.detail, s.checked_at, e.received_at,"
    " s.metadata"
)
DELIVERY_COLUMNS = "sink, state, attempts, last_error, next_attempt_at, updated_at, output"
ATTEMPT_COLUMNS = "at, outcome, error, duration_ms"


def event_view(
    d: Dialect,
    r: Row,
    deliveries: dict[str, DeliveryView],
    submission: SubmissionView | None,
) -> EventView:
    """An event from a row of EVENT_COLUMNS."""
    received = d.time_out(r[6])
    assert received is not None
    return EventView(
        request_id=r[0],
        route=r[1],
        fal_status=r[2],
        error=r[3],
        payload_error=r[4],
        gateway_request_id=r[5],
        received_at=received,
        headers=d.json_out(r[7]),
        body=bytes(r[8]),
        files=d.json_out(r[9]),
        deliveries=deliveries,
        source=r[10],
        submission=submission,
        trace_context=r[11],
    )


def delivery_view(d: Dialect, r: Row, history: Sequence[AttemptView]) -> DeliveryView:
    """A delivery from a row of DELIVERY_COLUMNS."""
    return DeliveryView(
        sink=r[0],
        state=r[1],
        attempts=r[2],
        last_error=r[3],
        next_attempt_at=d.time_out(r[4]),
        updated_at=d.time_out(r[5]),
        output=d.json_out(r[6]) if r[6] is not None else None,
        history=tuple(history),
    )


def attempt_view(d: Dialect, r: Row) -> AttemptView:
    """An entry of a delivery's history from a row of ATTEMPT_COLUMNS."""
    at = d.time_out(r[0])
    assert at is not None
    return AttemptView(at, r[1], r[2], r[3])


def submission_view(d: Dialect, r: Row) -> SubmissionView:
    """A submission from a row of SUBMISSION_COLUMNS."""
    submitted = d.time_out(r[7])
    assert submitted is not None
    return SubmissionView(
        request_id=r[0],
        endpoint=r[1],
        route=r[2],
        input=d.json_out(r[3]),
        status_url=r[4],
        response_url=r[5],
        cancel_url=r[6],
        submitted_at=submitted,
        state=r[8],
        detail=r[9],
        checked_at=d.time_out(r[10]),
        received_at=d.time_out(r[11]),
        metadata=d.json_out(r[12]),
    )
