"""The trends' statements (`ConsoleReader.delivery_trends`), written once for both engines
through their `Dialect` (dialect.py); trends.py says what each reads and puts the rows into
buckets. Each function returns the statement and its values, in the dialect's placeholders.

A bucket is `floor((time - since) / step)` on epoch seconds. Every statement reads only
times at or after the window's start, so the bucket is never negative.
"""

from __future__ import annotations

from typing import Any

from falhook.store.dialect import SQLITE, Dialect, Params
from falhook.store.models import TrendWindow
from falhook.store.states import AGAIN_OUTCOMES, BACKLOG_STATES
from falhook.store.trends import PERCENTILES

Statement = tuple[str, list[Any]]

_AGAIN = f"({', '.join(repr(o) for o in AGAIN_OUTCOMES)})"
_BACKLOG = f"({', '.join(repr(s) for s in BACKLOG_STATES)})"
# The rows of a window function (the k-th of n, per bucket and sink) at a percentile's
# nearest rank, ceil(n * p / 100) in integers (trends.rank).
_PERCENTILE_ROWS = " OR ".join(f"k = (n * {p} + 99) / 100" for p in PERCENTILES)


def _bucket(d: Dialect, column: str, p: Params, window: TrendWindow) -> str:
    start, step = p(window.since.timestamp()), p(window.step)
    return d.floor_int(f"({d.epoch_of(column)} - {start}) / {step}")


def _within(column: str, p: Params, d: Dialect, window: TrendWindow) -> str:
    return f"{column} >= {p(d.time_in(window.since))} AND {column} < {p(d.time_in(window.until))}"


def backlog_now() -> str:
    return f"SELECT count(*) FROM deliveries WHERE state IN {_BACKLOG}"


def received(d: Dialect, window: TrendWindow) -> Statement:
    """(bucket, count) of the webhooks that arrived in the window."""
    p = d.params()
    sql = (
        f"SELECT {_bucket(d, 'e.received_at', p, window)} AS b, count(*) FROM events e"
        f" WHERE {_within('e.received_at', p, d, window)} AND e.source = 'webhook' GROUP BY b"
    )
    return sql, p.values


def outcomes(d: Dialect, window: TrendWindow) -> Statement:
    """(bucket, outcome, count) of the attempts made in the window."""
    p = d.params()
    sql = (
        f"SELECT {_bucket(d, 'a.at', p, window)} AS b, a.outcome, count(*) FROM attempts a"
        f" WHERE {_within('a.at', p, d, window)} GROUP BY b, a.outcome"
    )
    return sql, p.values


def latencies(d: Dialect, window: TrendWindow) -> Statement:
    """(bucket, sink, n, k, seconds): each delivered attempt's latency (received to
    delivered) at the rank k of n in its bucket and sink, only at the percentiles' ranks."""
    p = d.params()
    latency = f"{d.epoch_of('a.at')} - {d.epoch_of('e.received_at')}"
    sql = f"""
WITH l AS (
    SELECT {_bucket(d, "a.at", p, window)} AS b, a.sink, {latency} AS latency
    FROM attempts a JOIN events e ON e.{d.event_key} = a.{d.delivery_key}
    WHERE {_within("a.at", p, d, window)} AND a.outcome = 'delivered'
), r AS (
    SELECT b, sink, latency, count(*) OVER (PARTITION BY b, sink) AS n,
           row_number() OVER (PARTITION BY b, sink ORDER BY latency) AS k
    FROM l
)
SELECT b, sink, n, k, latency FROM r WHERE {_PERCENTILE_ROWS}"""
    return sql, p.values


def backlog_changes(d: Dialect, window: TrendWindow) -> Statement:
    """(bucket, net change) of the backlog, in three parts (trends.py): deliveries of the
    events that arrived (+1 each); each attempt against the outcome before it (none, or one
    to try again, means the delivery was waiting); deliveries replayed and not tried since,
    at their last change (+1)."""
    p = d.params()
    key = d.delivery_key
    lookups = _looks_up(d, window)
    sql = f"""
{(_arrivals_by_lookup if lookups else _arrivals_by_join)(d, p, window)}
UNION ALL
{(_attempts_by_lookup if lookups else _attempts_by_lag)(d, p, window)}
UNION ALL
SELECT {_bucket(d, "d.updated_at", p, window)} AS b, count(*) FROM deliveries d
    WHERE d.state IN {_BACKLOG} AND d.updated_at >= {p(d.time_in(window.since))}
    AND (SELECT a.outcome NOT IN {_AGAIN} FROM attempts a
         WHERE a.{key} = d.{key} AND a.sink = d.sink ORDER BY a.at DESC LIMIT 1)
    GROUP BY b"""
    return sql, p.values


# The backlog's changes read either a row at a time through the delivery's indexes, or the
# window's rows all at once (a join, a sort for lag()). Measured over a day of 100,000 events
# (bench/console_trends.py): SQLite, whose joins are loops over indexes anyway, sorts for
# lag() three times slower than it looks up; PostgreSQL joins and sorts a whole day two to
# three times faster than it looks each row up, and looks up a few buckets (the live
# refresh after a whole read) three to six times faster than it scans for them.
FEW_BUCKETS = 8


def _looks_up(d: Dialect, window: TrendWindow) -> bool:
    return d is SQLITE or window.buckets <= FEW_BUCKETS


_WAITS_AFTER = f"CASE WHEN h.outcome IN {_AGAIN} THEN 1 ELSE 0 END"
_WAITED_BEFORE = f"CASE WHEN h.before IS NULL OR h.before IN {_AGAIN} THEN 1 ELSE 0 END"


def _arrivals_by_join(d: Dialect, p: Params, window: TrendWindow) -> str:
    return f"""SELECT {_bucket(d, "e.received_at", p, window)} AS b, count(*) FROM deliveries d
    JOIN events e ON e.{d.event_key} = d.{d.delivery_key}
    WHERE e.received_at >= {p(d.time_in(window.since))} GROUP BY b"""


def _arrivals_by_lookup(d: Dialect, p: Params, window: TrendWindow) -> str:
    deliveries = f"SELECT count(*) FROM deliveries d WHERE d.{d.delivery_key} = e.{d.event_key}"
    bucket = _bucket(d, "e.received_at", p, window)
    return f"""SELECT {bucket} AS b, sum(({deliveries})) FROM events e
    WHERE e.received_at >= {p(d.time_in(window.since))} GROUP BY b"""


def _attempts_by_lag(d: Dialect, p: Params, window: TrendWindow) -> str:
    """Each attempt in the window with the outcome before it, by lag() over the attempts of
    the deliveries tried in the window."""
    key, since = d.delivery_key, d.time_in(window.since)
    return f"""SELECT {_bucket(d, "h.at", p, window)} AS b, sum({_WAITS_AFTER} - {_WAITED_BEFORE})
FROM (
    SELECT a.at, a.outcome,
           lag(a.outcome) OVER (PARTITION BY a.{key}, a.sink ORDER BY a.at) AS before
    FROM attempts a
    WHERE (a.{key}, a.sink) IN (SELECT {key}, sink FROM attempts WHERE at >= {p(since)})
) h WHERE h.at >= {p(since)} GROUP BY b"""


def _attempts_by_lookup(d: Dialect, p: Params, window: TrendWindow) -> str:
    """Each attempt in the window with the outcome before it, looked up in the delivery's
    index (attempts_by_delivery); on SQLite, rowid orders attempts made at the same time."""
    key, since = d.delivery_key, d.time_in(window.since)
    earlier = "(p.at, p.rowid) < (a.at, a.rowid)" if d is SQLITE else "p.at < a.at"
    order = "p.at DESC, p.rowid DESC" if d is SQLITE else "p.at DESC"
    before = f"""(SELECT p.outcome FROM attempts p
        WHERE p.{key} = a.{key} AND p.sink = a.sink AND {earlier} ORDER BY {order} LIMIT 1)"""
    return f"""SELECT {_bucket(d, "h.at", p, window)} AS b, sum({_WAITS_AFTER} - {_WAITED_BEFORE})
FROM (SELECT a.at, a.outcome, {before} AS before FROM attempts a WHERE a.at >= {p(since)}) h
GROUP BY b"""
