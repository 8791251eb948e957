"""The order of a route's sinks by `after`: pure functions, no I/O.

A sink with ``after = ["archive"]`` runs once `archive` has delivered (and reads its output).
Within one job the worker runs sinks in waves: those whose prerequisites have all delivered
first, concurrently, then the ones those unblock. A sink whose prerequisite is still to
deliver waits (rescheduled, no attempt spent); one whose prerequisite is dead is dead too.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Literal

After = Mapping[str, Sequence[str]]  # sink -> the sinks it runs after


def unmet(after: Sequence[str], delivered: Collection[str]) -> list[str]:
    """The prerequisites (in their configured order) that have not delivered."""
    return [dep for dep in after if dep not in delivered]


def next_wave(
    waiting: Collection[str], after: After, delivered: Collection[str]
) -> tuple[set[str], set[str]]:
    """(ready, blocked): the waiting sinks whose prerequisites have all delivered, and the
    rest."""
    ready = {s for s in waiting if not unmet(after.get(s, ()), delivered)}
    return ready, set(waiting) - ready


def blocked_verdict(prerequisite_states: Iterable[str]) -> Literal["dead", "wait"]:
    """A sink blocked by prerequisites in these states: dead if one of them is dead (it can
    never run), otherwise it waits for them."""
    return "dead" if "dead" in prerequisite_states else "wait"


def waits_last(sinks: Iterable[str], waiting: Collection[str]) -> list[str]:
    """Sinks in the order their results are recorded: waiting ones last, so they become due
    with the sinks they wait for and one lease takes both."""
    listed = list(sinks)
    return [s for s in listed if s not in waiting] + [s for s in listed if s in waiting]
