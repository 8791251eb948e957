"""The console's trends over a window (`ConsoleReader.delivery_trends`): what both stores'
SQL returns (trend_queries.py, one set of statements for both), put into buckets the same
way. Pure: no I/O.

Each engine reads, grouped by bucket (`floor((time - since) / step)`):
- webhooks received (events whose source is a webhook),
- attempts by outcome,
- the latency of each delivered attempt's rank among its bucket and sink, kept only at the
  ranks of the percentiles (`rank`: nearest rank, in integers so both engines agree),
- the backlog's changes (below), and the backlog now.

The backlog's trend is rebuilt from the attempt log, backwards from the backlog now: a
delivery joins it when its event arrives (+1), leaves it at an attempt that ends it
(delivered, dead, skipped: -1), and joins again when an attempt follows one that ended it
(a replay, counted from that attempt; +1 when the attempt is a retry, 0 when it ends it
again). A delivery replayed and not tried since joins at its last change (`updated_at`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from falhook.store.models import DeliveryTrends, TrendWindow
from falhook.store.states import ATTEMPT_OUTCOMES

T = TypeVar("T")
PERCENTILES = (50, 90, 99)
DAY_STEP = 900.0  # seconds: the overview's last day in 96 buckets of 15 minutes
DAY_BUCKETS = 96


def rank(count: int, percent: int) -> int:
    """The nearest rank of a percentile among `count` values: ceil(count * percent / 100)."""
    return (count * percent + 99) // 100


def window_ending(now: datetime, step: float = DAY_STEP, buckets: int = DAY_BUCKETS) -> TrendWindow:
    """`buckets` steps aligned on multiples of `step` (charts keep their bucket edges from
    one look to the next), the last one holding `now`."""
    epoch = now.timestamp()
    last = math.floor(epoch / step) * step
    since = datetime.fromtimestamp(last - step * (buckets - 1), UTC)
    return TrendWindow(since=since, step=step, buckets=buckets)


def _series(window: TrendWindow, rows: Iterable[tuple[int, int]]) -> list[int]:
    values = [0] * window.buckets
    for bucket, count in rows:
        if 0 <= bucket < window.buckets:
            values[bucket] += int(count)
    return values


def assemble(  # long: one list per input, each a few lines; splitting would hide the shape
    window: TrendWindow,
    *,
    received: Iterable[tuple[int, int]],
    outcomes: Iterable[tuple[int, str, int]],
    latencies: Iterable[tuple[int, str, int, int, float]],
    backlog_now: int,
    backlog_changes: Iterable[tuple[int, int]],
) -> DeliveryTrends:
    """The trends from the engines' rows:
    received (bucket, count); outcomes (bucket, outcome, count); latencies (bucket, sink,
    count in the bucket, rank, seconds); backlog_changes (bucket, net change)."""
    by_outcome: dict[str, list[tuple[int, int]]] = {o: [] for o in ATTEMPT_OUTCOMES}
    for bucket, outcome, count in outcomes:
        by_outcome.setdefault(outcome, []).append((bucket, count))
    latency: dict[str, dict[str, list[float | None]]] = {}
    for bucket, sink, count, at_rank, seconds in latencies:
        if not 0 <= bucket < window.buckets:
            continue
        series = latency.setdefault(sink, {f"p{p}": [None] * window.buckets for p in PERCENTILES})
        for p in PERCENTILES:
            if rank(count, p) == at_rank:
                series[f"p{p}"][bucket] = max(0.0, float(seconds))
    changes = _series(window, backlog_changes)
    return DeliveryTrends(
        window=window,
        received=_series(window, received),
        outcomes={o: _series(window, rows) for o, rows in by_outcome.items()},
        latency=dict(sorted(latency.items())),
        backlog=backlog_series(backlog_now, changes),
        backlog_changes=changes,
    )


def backlog_series(now: int, changes: list[int]) -> list[int]:
    """The backlog at each bucket's end, backwards from `now` (the last bucket holds now)."""
    backlog = []
    after = 0  # the net change after the end of the bucket at hand
    for change in reversed(changes):
        backlog.append(max(0, now - after))
        after += change
    return backlog[::-1]


def advance(earlier: DeliveryTrends, recent: DeliveryTrends, window: TrendWindow) -> DeliveryTrends:
    """`earlier` trends moved on to `window` (the same step and length, `shift` buckets
    later), their newest buckets replaced by `recent`, a read of the window's last buckets
    (at least `shift` of them, and those that could still change): the day without reading
    it all again."""
    shift = round((window.since - earlier.window.since).total_seconds() / window.step)
    keep = window.buckets - recent.window.buckets  # buckets taken from `earlier`
    fits = window.step == earlier.window.step == recent.window.step
    if not fits or not 0 <= shift <= recent.window.buckets or recent.window.until != window.until:
        raise ValueError("the recent buckets do not continue these trends")

    def moved(old: list[T], new: list[T]) -> list[T]:
        return old[shift : shift + keep] + new

    def percentiles(sink: str) -> dict[str, list[float | None]]:
        old, new = earlier.latency.get(sink, {}), recent.latency.get(sink, {})
        none_old: list[float | None] = [None] * earlier.window.buckets
        none_new: list[float | None] = [None] * recent.window.buckets
        return {
            f"p{p}": moved(old.get(f"p{p}", none_old), new.get(f"p{p}", none_new))
            for p in PERCENTILES
        }

    changes = moved(earlier.backlog_changes, recent.backlog_changes)
    return DeliveryTrends(
        window=window,
        received=moved(earlier.received, recent.received),
        outcomes={o: moved(earlier.outcomes[o], recent.outcomes[o]) for o in recent.outcomes},
        latency={sink: percentiles(sink) for sink in sorted({*earlier.latency, *recent.latency})},
        backlog=backlog_series(recent.backlog[-1] if recent.backlog else 0, changes),
        backlog_changes=changes,
    )


def bucket_of(at: datetime, window: TrendWindow) -> int:
    """The bucket of a time (for tests and callers that bucket in Python)."""
    return math.floor((at - window.since) / timedelta(seconds=window.step))
