"""The console's trends over a window (`ConsoleReader.delivery_trends`): what both stores'
SQL returns, put into buckets the same way. Pure: no I/O.

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

from falhook.store.models import DeliveryTrends, TrendWindow
from falhook.store.states import ATTEMPT_OUTCOMES

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
    backlog = []
    after = 0  # the net change after the end of the bucket at hand
    for bucket in reversed(range(window.buckets)):
        backlog.append(max(0, backlog_now - after))
        after += changes[bucket]
    return DeliveryTrends(
        window=window,
        received=_series(window, received),
        outcomes={o: _series(window, rows) for o, rows in by_outcome.items()},
        latency=dict(sorted(latency.items())),
        backlog=backlog[::-1],
    )


def bucket_of(at: datetime, window: TrendWindow) -> int:
    """The bucket of a time (for tests and callers that bucket in Python)."""
    return math.floor((at - window.since) / timedelta(seconds=window.step))
