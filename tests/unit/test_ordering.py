"""The order of a route's sinks by `after` (falhook.delivery.ordering): pure, in-process.

The worker's tests (tests/inprocess/test_worker.py) run the same rules through leases and a
store; these pin the rules themselves, case by case.
"""

from __future__ import annotations

import pytest

from falhook.delivery.ordering import blocked_verdict, next_wave, unmet, waits_last

# archive → (slack, notify); notify → page: a chain and a fan-out in one route
AFTER = {"slack": ["archive"], "notify": ["archive"], "page": ["notify", "archive"]}
ALL = {"archive", "slack", "notify", "page"}


def waves(waiting: set[str], after: dict[str, list[str]]) -> list[set[str]]:
    """Every wave when each sink delivers as soon as it runs: the worker's loop, pure."""
    delivered: set[str] = set()
    found = []
    for _ in range(len(waiting)):  # each wave runs at least one sink, or none is left
        if not waiting:
            break
        ready, waiting = next_wave(waiting, after, delivered)
        if not ready:
            break
        assert not ready & waiting, "a sink is both ready and still waiting"
        found.append(ready)
        delivered |= ready
    return found


def test_unmet_keeps_the_configured_order() -> None:
    assert unmet(["notify", "archive"], delivered=set()) == ["notify", "archive"]
    assert unmet(["notify", "archive"], delivered={"archive"}) == ["notify"]
    assert unmet(["notify", "archive"], delivered={"archive", "notify"}) == []
    assert unmet([], delivered=set()) == []


def test_sinks_run_in_waves_of_what_their_prerequisites_allow() -> None:
    assert waves(set(ALL), AFTER) == [{"archive"}, {"slack", "notify"}, {"page"}]


def test_sinks_without_after_all_run_in_the_first_wave() -> None:
    assert waves({"a", "b", "c"}, {}) == [{"a", "b", "c"}]


def test_a_prerequisite_outside_the_job_counts_once_delivered() -> None:
    # archive delivered in an earlier attempt: its dependants are ready now.
    ready, blocked = next_wave({"slack", "page"}, AFTER, delivered={"archive"})
    assert (ready, blocked) == ({"slack"}, {"page"})


def test_a_prerequisite_that_never_delivers_blocks_its_dependants_only() -> None:
    ready, blocked = next_wave({"slack", "notify", "page", "other"}, AFTER, delivered=set())
    assert ready == {"other"}
    assert blocked == {"slack", "notify", "page"}


def test_a_cycle_never_becomes_ready() -> None:
    # Config validation refuses cycles; should one reach the worker, nothing spins.
    assert waves({"a", "b"}, {"a": ["b"], "b": ["a"]}) == []


@pytest.mark.parametrize(
    ("states", "verdict"),
    [
        (["retry"], "wait"),
        (["pending", "leased"], "wait"),
        (["retry", "dead"], "dead"),
        (["dead"], "dead"),
        ([], "wait"),
    ],
)
def test_a_blocked_sink_is_dead_only_when_a_prerequisite_is(
    states: list[str], verdict: str
) -> None:
    assert blocked_verdict(states) == verdict


def test_waiting_sinks_are_recorded_last_in_their_order() -> None:
    assert waits_last(["page", "archive", "slack", "notify"], waiting={"page", "slack"}) == [
        "archive",
        "notify",
        "page",
        "slack",
    ]
    assert waits_last(["a", "b"], waiting=set()) == ["a", "b"]
