"""The console's charts (charts.py) and the trends' buckets (store/trends.py): pure
geometry and arithmetic, no browser, no store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from falhook.console.charts import (
    Chart,
    Segment,
    Series,
    bucket_label,
    nice_ceiling,
    nice_seconds,
    time_ticks,
)
from falhook.store.models import TrendWindow
from falhook.store.trends import advance, assemble, bucket_of, rank, window_ending

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WINDOW = TrendWindow(since=START, step=900, buckets=4)


def test_a_series_is_one_point_per_bucket_scaled_to_a_nice_top() -> None:
    chart = Chart.over(WINDOW, "t", "Traffic", [Series("received", [0, 3, 7, 2])])
    [line] = chart.lines
    assert chart.top == "10" and line.points == 4 and line.summary == "12"
    assert line.segments == [Segment("0.5,100 1.5,70 2.5,30 3.5,80")]
    assert line.tone == "info" and line.area == []
    assert chart.tips[1] == "12:15\u201312:30 UTC · received 3"
    assert [label for _, label in chart.ticks] == ["1 h ago", "45 min ago", "30 min ago",
                                                   "15 min ago", "now"]  # fmt: skip


def test_missing_values_break_the_line_and_a_lone_value_is_a_dot() -> None:
    chart = Chart.over(WINDOW, "l", "Latency", [Series("p50", [1.0, None, 2.0, 2.0], fill=True)])
    [line] = chart.lines
    assert line.points == 3
    assert line.segments == [Segment("0.15,50 0.85,50", lone=True), Segment("2.5,0 3.5,0")]
    assert line.area == ["0.15,100 0.15,50 0.85,50 0.85,100", "2.5,100 2.5,0 3.5,0 3.5,100"]
    assert chart.tips[1].endswith("p50 \u2013")


def test_tones_go_round_unless_a_series_names_its_own() -> None:
    chart = Chart.over(WINDOW, "x", "X", [Series(f"s{i}", [1, 1, 1, 1]) for i in range(7)]
                       + [Series("mine", [0, 0, 0, 0], "bad")])  # fmt: skip
    assert [line.tone for line in chart.lines] == [
        "info", "ok", "warn", "bad", "accent", "idle", "info", "bad"
    ]  # fmt: skip
    assert not chart.empty
    assert Chart.over(WINDOW, "e", "E", [Series("none", [0, None, 0, 0])]).empty


@pytest.mark.parametrize(
    ("value", "top"),
    [(0, 1), (0.3, 0.5), (1, 1), (1.2, 2), (2.2, 2.5), (3, 5), (7, 10), (10, 10), (11, 20),
     (240, 250), (999, 1000)],
)  # fmt: skip
def test_the_top_of_the_axis_is_a_round_number(value: float, top: float) -> None:
    assert nice_ceiling(value) == pytest.approx(top)


@pytest.mark.parametrize(
    ("seconds", "top"),
    [(0, 1), (0.04, 0.05), (7, 10), (45, 50), (55, 60), (60, 60), (61, 120), (200, 300),
     (1900, 3000), (3500, 3600), (3700, 2 * 3600), (5 * 3600, 5 * 3600)],
)  # fmt: skip
def test_a_duration_axis_tops_at_round_seconds_minutes_or_hours(seconds: float, top: float) -> None:
    assert nice_seconds(seconds) == pytest.approx(top)


def test_labels_for_days_and_ticks_for_a_day() -> None:
    assert bucket_label(START, 86400) == "2026-11-23"
    day = TrendWindow(since=START, step=900, buckets=96)
    assert [label for _, label in time_ticks(day)] == ["1 d ago", "18 h ago", "12 h ago",
                                                       "6 h ago", "now"]  # fmt: skip


def test_the_window_is_aligned_and_its_last_bucket_holds_now() -> None:
    now = START + timedelta(minutes=37, seconds=12)
    window = window_ending(now, step=900, buckets=96)
    assert window.since == START + timedelta(minutes=30) - timedelta(minutes=15 * 95)
    assert bucket_of(now, window) == 95 and window.until > now
    assert len(window.starts()) == 96


def test_nearest_ranks_in_integers() -> None:
    assert [rank(10, p) for p in (50, 90, 99)] == [5, 9, 10]
    assert [rank(1, p) for p in (50, 90, 99)] == [1, 1, 1]
    assert [rank(200, p) for p in (50, 90, 99)] == [100, 180, 198]


def test_the_backlog_is_rebuilt_backwards_from_now() -> None:
    trends = assemble(
        WINDOW,
        received=[(0, 1), (2, 1), (9, 5)],  # a bucket outside the window is ignored
        outcomes=[(1, "delivered", 2), (1, "retry", 1)],
        latencies=[(1, "local", 3, 2, 4.0), (1, "local", 3, 3, 9.0), (7, "local", 1, 1, 1.0)],
        backlog_now=1,
        backlog_changes=[(0, 2), (1, -2), (2, 2), (3, -1)],
    )
    assert trends.received == [1, 0, 1, 0]
    assert trends.outcomes["delivered"] == [0, 2, 0, 0] and trends.outcomes["dead"] == [0] * 4
    assert trends.backlog == [2, 0, 2, 1]
    # count 3: p50 is rank 2, p90 and p99 rank 3
    assert trends.latency["local"]["p50"][1] == 4.0 and trends.latency["local"]["p99"][1] == 9.0


HISTORY = {  # minutes after START: arrivals, attempts (outcome, sink, latency in seconds)
    "received": [5, 20, 21, 50, 64, 70],
    "attempts": [(6, "delivered", "a", 60.0), (22, "retry", "b", 0.0), (30, "delivered", "b", 3.0),
                 (55, "dead", "a", 0.0), (66, "delivered", "a", 2.0), (71, "delivered", "b", 9.0)],
}  # fmt: skip


def read(window: TrendWindow) -> Any:
    """What a store would answer for this window of HISTORY (each arrival makes one
    delivery that waits; attempts change it as their outcome says)."""

    def bucket(minute: float) -> int:
        return bucket_of(START + timedelta(minutes=minute), window)

    attempts = HISTORY["attempts"]
    latencies = [
        (bucket(m), sink, 1, 1, seconds) for m, outcome, sink, seconds in attempts
        if outcome == "delivered"
    ]  # fmt: skip
    changes = [(bucket(m), 1) for m in HISTORY["received"]]
    changes += [(bucket(m), 0 if outcome == "retry" else -1) for m, outcome, _, _ in attempts]
    waiting = len(HISTORY["received"]) - sum(o != "retry" for _, o, _, _ in attempts)
    return assemble(
        window,
        received=[(bucket(m), 1) for m in HISTORY["received"]],
        outcomes=[(bucket(m), outcome, 1) for m, outcome, _, _ in attempts],
        latencies=latencies,
        backlog_now=waiting,
        backlog_changes=changes,
    )


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_trends_moved_on_with_their_newest_buckets_read_again_equal_a_whole_read(
    shift: int,
) -> None:
    earlier = TrendWindow(since=START, step=900, buckets=6)
    later = TrendWindow(since=START + timedelta(minutes=15 * shift), step=900, buckets=6)
    count = 2 + shift
    recent = TrendWindow(later.starts()[-count], 900, count)
    assert advance(read(earlier), read(recent), later) == read(later)


def test_trends_too_far_apart_are_not_moved_on() -> None:
    earlier = TrendWindow(since=START, step=900, buckets=6)
    later = TrendWindow(since=START + timedelta(minutes=45), step=900, buckets=6)
    recent = TrendWindow(later.starts()[-2], 900, 2)  # 3 buckets later, only 2 read
    with pytest.raises(ValueError, match="do not continue"):
        advance(read(earlier), read(recent), later)
