"""The overview's figures: the last hour's numbers (stats) and the last day's charts (trends),
for the overview page and /console/api/stats and /console/api/trends.

Charts are a list: a new one is a function from the trends (or any other series over a
TrendWindow) to Chart objects, added to `CHARTS`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from falhook.console.charts import Chart, Series, nice_seconds
from falhook.console.render import seconds
from falhook.store.models import DeliveryStats, DeliveryTrends, TrendWindow, iso, utcnow
from falhook.store.roles import ConsoleReader
from falhook.store.states import BACKLOG_STATES
from falhook.store.trends import advance, window_ending


def traffic(trends: DeliveryTrends) -> list[Chart]:
    outcomes = trends.outcomes
    series = [
        Series("received", trends.received, "info", fill=True),
        Series("delivered", outcomes["delivered"], "ok"),
        Series("retried", outcomes["retry"], "warn"),
        Series("dead", outcomes["dead"], "bad"),
    ]
    note = "webhooks received and delivery attempts by outcome, per 15 minutes"
    return [Chart.over(trends.window, "traffic", "Webhooks and deliveries", series, note=note)]


def backlog(trends: DeliveryTrends) -> list[Chart]:
    series = [Series("waiting", trends.backlog, "accent", fill=True)]
    now = trends.backlog[-1] if trends.backlog else 0
    return [
        Chart.over(
            trends.window, "backlog", "Backlog", series, summary=lambda _: f"{now:,} now",
            note="deliveries pending, retrying or in flight at the end of each 15 minutes",
        )
    ]  # fmt: skip


def latency(trends: DeliveryTrends) -> list[Chart]:
    tones = {"p50": "ok", "p90": "warn", "p99": "bad"}
    charts = []
    for sink, by_percentile in trends.latency.items():
        series = [Series(name, values, tones[name]) for name, values in by_percentile.items()]
        charts.append(
            Chart.over(
                trends.window, f"latency-{sink}", f"Delivery latency · {sink}", series,
                fmt=lambda v: seconds(v), summary=_latest, ceiling=nice_seconds,
                note="received → delivered, percentiles of each 15 minutes",
            )
        )  # fmt: skip
    return charts


def _latest(series: Series) -> str:
    last = next((v for v in reversed(series.values) if v is not None), None)
    return f"last {seconds(last)}"


CHARTS: list[Callable[[DeliveryTrends], list[Chart]]] = [traffic, backlog, latency]


class DayTrends:
    """The last day's trends, shared by every tab and the API. The whole day is read once
    (and every FULL_EVERY seconds); each look after that reads only the newest buckets, the
    ones that can still change, and moves the rest along (store/trends.py `advance`): an
    overview that follows the live stream costs minutes of history per look, not a day."""

    RECENT = 2  # buckets read again on each look: the current one and the one before it
    FULL_EVERY = 300.0  # seconds between whole reads (a replay changes an older bucket)
    REUSE = 1.0  # seconds a read serves every tab that asks (tabs refresh together) ...

    def __init__(
        self,
        events: ConsoleReader,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        changes_seen: Callable[[], int] = lambda: 0,
    ) -> None:
        self.events = events
        self.clock = clock
        self.monotonic = monotonic
        # ... unless the live feed has seen a change since: a tab refreshing because of a
        # change must get a read made after it.
        self.changes_seen = changes_seen
        self._seen = -1
        self._lock = asyncio.Lock()
        self._last: DeliveryTrends | None = None
        self._read_at = self._whole_at = -math.inf

    async def get(self) -> DeliveryTrends:
        async with self._lock:  # one read at a time; the tabs waiting get its result
            window = window_ending(self.clock())
            last, now, seen = self._last, self.monotonic(), self.changes_seen()
            recent = now - self._read_at < self.REUSE and seen == self._seen
            if last is not None and last.window == window and recent:
                return last
            if last is None or now - self._whole_at > self.FULL_EVERY:
                fresh = await self._whole(window, now)
            else:
                fresh = await self._newest(last, window) or await self._whole(window, now)
            self._last, self._read_at, self._seen = fresh, now, seen
            return fresh

    async def _whole(self, window: TrendWindow, now: float) -> DeliveryTrends:
        self._whole_at = now
        return await self.events.delivery_trends(window)

    async def _newest(self, last: DeliveryTrends, window: TrendWindow) -> DeliveryTrends | None:
        """The last read moved on to `window`, its newest buckets read again; None when
        too much time has passed for that."""
        shift = round((window.since - last.window.since).total_seconds() / window.step)
        if not 0 <= shift <= window.buckets - self.RECENT:
            return None
        count = self.RECENT + shift
        recent = TrendWindow(window.starts()[-count], window.step, count)
        return advance(last, await self.events.delivery_trends(recent), window)


def trend_charts(trends: DeliveryTrends) -> list[Chart]:
    return [chart for build in CHARTS for chart in build(trends)]


def trends_document(trends: DeliveryTrends) -> dict[str, Any]:
    """The JSON of /console/api/trends."""
    window = trends.window
    return {
        "since": iso(window.since),
        "step_seconds": window.step,
        "buckets": [iso(start) for start in window.starts()],
        "received": trends.received,
        "outcomes": trends.outcomes,
        "backlog": trends.backlog,
        "latency_seconds": trends.latency,
    }


# --- the last hour --------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def stats_document(stats: DeliveryStats, now: datetime | None = None) -> dict[str, Any]:
    """The JSON of /console/api/stats."""
    now = now or utcnow()
    oldest = stats.oldest_due_at
    age = max(0.0, (now - oldest).total_seconds()) if oldest and oldest <= now else 0.0
    latency = {f"p{round(f * 100)}": percentile(stats.latencies, f) for f in (0.5, 0.9, 0.99)}
    durations = [float(d) for d in stats.durations_ms]
    return {
        "backlog": sum(stats.by_state.get(s, 0) for s in BACKLOG_STATES),
        "deliveries_by_state": stats.by_state,
        "dead": stats.by_state.get("dead", 0),
        "oldest_due_age_seconds": round(age, 3),
        "last_hour": {"outcomes_by_sink": stats.outcomes},
        "delivery_latency_seconds": {**latency, "samples": len(stats.latencies)},
        "attempt_duration_ms": {
            f"p{round(f * 100)}": percentile(durations, f) for f in (0.5, 0.9, 0.99)
        },
    }


async def last_hour_stats(store: ConsoleReader) -> dict[str, Any]:
    """The overview's figures: /console/api/stats and the overview page."""
    return stats_document(await store.delivery_stats(utcnow() - timedelta(hours=1)))
