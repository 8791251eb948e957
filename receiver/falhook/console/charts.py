"""Charts the console draws itself: generic series over buckets of time, turned into the
geometry of an inline SVG (templates/charts.html draws it; the page's CSS colours it, so it
follows the light and dark themes). Pure: no I/O, no JavaScript needed to see one.

    chart = Chart.over(window, "Backlog", [Series("waiting", trends.backlog)])

A chart is any list of series with one value per bucket (None: nothing to show there).
Adding one to the overview is building it here and appending it to the list (overview.py).

Geometry: the SVG's viewBox is one unit per bucket wide and 100 high, stretched to the
card's width (`preserveAspectRatio="none"`, strokes that do not scale), so it fits a phone
and a wide screen alike; labels are HTML around it, never stretched text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from falhook.store.models import TrendWindow

HEIGHT = 100.0
NONE = "\u2013"  # an en dash: no value in that bucket
TONES = ("info", "ok", "warn", "bad", "accent", "idle")  # CSS classes (console.css)
Format = Callable[[float], str]


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    tone: str = ""  # one of TONES; "" takes the next one in order
    fill: bool = False  # shade the area under the line


@dataclass(frozen=True)
class Segment:
    """An unbroken run of values as SVG polyline points; a lone value is drawn as a dot."""

    points: str
    lone: bool = False


@dataclass(frozen=True)
class Line:
    """One series as drawn: polylines (a gap where a value is missing), its legend."""

    name: str
    tone: str
    fill: bool
    segments: list[Segment]
    area: list[str]  # SVG polygon points under each segment (when filled)
    points: int  # values shown
    summary: str  # the legend's figure


@dataclass(frozen=True)
class Chart:
    key: str  # the element id: a test or a script finds it by this
    title: str
    buckets: int
    lines: list[Line]
    top: str  # the y axis' top label (0 is the bottom)
    ticks: list[tuple[float, str]]  # (x as a fraction of the width, label)
    tips: list[str]  # one per bucket: when, and each series' value
    note: str = ""
    empty: bool = field(default=False)

    @staticmethod
    def over(  # long: the chart's parts each take a few lines; one place shows them all
        window: TrendWindow,
        key: str,
        title: str,
        series: Sequence[Series],
        *,
        fmt: Format = lambda v: f"{v:,.0f}",
        summary: Callable[[Series], str] | None = None,
        note: str = "",
        ceiling: Callable[[float], float] | None = None,
    ) -> Chart:
        """A chart of these series over the window's buckets, values shown with `fmt`;
        each legend entry says `summary(series)` (by default the total); the y axis tops
        at `ceiling(largest value)` (a round number: nice_ceiling, or nice_seconds)."""
        highest = max((v for s in series for v in s.values if v is not None), default=0)
        top = (ceiling or nice_ceiling)(highest)
        lines = []
        for n, s in enumerate(series):
            tone = s.tone or TONES[n % len(TONES)]
            segments = _segments(s.values, top)
            shown = sum(v is not None for v in s.values)
            total = (summary or _total(fmt))(s)
            area = [_area(seg.points) for seg in segments] if s.fill else []
            lines.append(Line(s.name, tone, s.fill, segments, area, shown, total))
        tips = [
            bucket_label(start, window.step) + "".join(
                f" · {s.name} {fmt(v) if (v := s.values[b]) is not None else NONE}" for s in series
            )
            for b, start in enumerate(window.starts())
        ]  # fmt: skip
        empty = all(not v for s in series for v in s.values)
        return Chart(key, title, window.buckets, lines, fmt(top), time_ticks(window), tips,
                     note, empty)  # fmt: skip


def _total(fmt: Format) -> Callable[[Series], str]:
    return lambda s: fmt(sum(v for v in s.values if v is not None))


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten at or above value (1 for none)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def nice_seconds(value: float) -> float:
    """A round ceiling for durations, in the smallest unit where it stays below the next:
    seconds up to a minute, then minutes up to an hour, then hours (200 s tops at 5 min,
    not 3.3; 55 s at 1 min, not 100 s)."""
    for unit, below in ((1.0, 60.0), (60.0, 3600.0)):
        top = nice_ceiling(value / unit) * unit
        if top <= below:
            return top
    return nice_ceiling(value / 3600.0) * 3600.0


def _y(value: float, top: float) -> float:
    return round(HEIGHT - value / top * HEIGHT, 2)


def _segments(values: Sequence[float | None], top: float) -> list[Segment]:
    """Runs of values as polyline points, x at each bucket's middle; a lone value is a
    short dash, drawn as a dot (a polyline of one point draws nothing)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for b, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((b + 0.5, _y(value, top)))
    drawn = []
    for run in (r for r in runs if r):
        lone = len(run) == 1
        if lone:
            (x, y) = run[0]
            run = [(x - 0.35, y), (x + 0.35, y)]
        drawn.append(Segment(" ".join(f"{x:g},{y:g}" for x, y in run), lone))
    return drawn


def _area(segment: str) -> str:
    points = segment.split(" ")
    first, last = points[0].split(",")[0], points[-1].split(",")[0]
    return f"{first},{HEIGHT:g} {segment} {last},{HEIGHT:g}"


def bucket_label(start: datetime, step: float) -> str:
    """'14:00-14:15 UTC' (an en dash), or the date for buckets of a day or more."""
    start = start.astimezone(UTC)
    end = start + timedelta(seconds=step)
    if step >= 86400:
        return start.strftime("%Y-%m-%d")
    return f"{start:%H:%M}\u2013{end:%H:%M} UTC"


def time_ticks(window: TrendWindow, count: int = 4) -> list[tuple[float, str]]:
    """A few labels along the x axis, as time before now: '24 h ago' … 'now'."""
    span = window.step * window.buckets
    ticks = []
    for n in range(count + 1):
        fraction = n / count
        ago = span * (1 - fraction)
        ticks.append((fraction, "now" if ago == 0 else f"{_duration(ago)} ago"))
    return ticks


def _duration(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} d"
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min"
