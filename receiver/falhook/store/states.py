"""The states of deliveries and events, and the one rule that sums an event's deliveries up.

The rule is data (``EVENT_RULE``): checked in order, the first that holds names the event's
state. ``summarise_state`` applies it to Python values and ``state_predicates`` turns it into
SQL for the stores, so the contract's rule is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

DeliveryState = Literal["pending", "delivering", "retrying", "delivered", "dead", "skipped"]
DELIVERY_STATES: tuple[str, ...] = (
    "pending",
    "delivering",
    "retrying",
    "delivered",
    "dead",
    "skipped",  # the sink's filter did not match the event: done, nothing delivered
)
EVENT_STATES: tuple[str, ...] = ("pending", "retrying", "delivered", "dead")
SUBMISSION_STATES: tuple[str, ...] = ("pending", "completed", "recovered", "lost", "unknown")
DONE_STATES: frozenset[str] = frozenset({"delivered", "skipped"})  # nothing more will happen
# What one attempt (or decision) came to, as a delivery's history records it.
ATTEMPT_OUTCOMES: tuple[str, ...] = ("delivered", "retry", "dead", "skipped", "expired")
# Outcomes after which the delivery waits for another attempt (the rest end it).
AGAIN_OUTCOMES: tuple[str, ...] = ("retry", "expired")
# Deliveries still to be done: the backlog.
BACKLOG_STATES: tuple[str, ...] = ("pending", "retrying", "delivering")

# (event state, quantifier, delivery states): "any" holds when some delivery is in one of
# the states, "all" when there is at least one delivery and every one is; the last entry
# holds when no other does.
EVENT_RULE: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("dead", "any", frozenset({"dead"})),
    ("retrying", "any", frozenset({"retrying"})),
    ("delivered", "all", DONE_STATES),  # skipped deliveries count as done
    ("pending", "otherwise", frozenset()),
)


def summarise_state(states: Iterable[str]) -> str:
    """The contract's rule: dead > retrying > delivered (all) > pending."""
    seen = set(states)
    for state, quantifier, wanted in EVENT_RULE:
        if quantifier == "any" and seen & wanted:
            return state
        if quantifier == "all" and seen and seen <= wanted:
            return state
        if quantifier == "otherwise":
            return state
    raise AssertionError("EVENT_RULE ends with an 'otherwise' entry")  # pragma: no cover


def state_predicates(exists: Callable[[str], str], column: str = "d.state") -> dict[str, str]:
    """A SQL condition on an event for each event state, from EVENT_RULE.

    ``exists(condition)`` is the dialect's "the event has a delivery `d` with condition"
    (an EXISTS subquery on the event's own deliveries); `column` is how the condition names
    the delivery's state.
    """
    holds: dict[str, str] = {}
    earlier: list[str] = []
    named: set[str] = set()  # states that an earlier "any" entry claims
    for state, quantifier, wanted in EVENT_RULE:
        listed = ", ".join(f"'{s}'" for s in sorted(wanted))
        if quantifier == "any":
            condition = exists(f"{column} IN ({listed})")
            named |= wanted
        elif quantifier == "all":
            condition = f"{exists('1 = 1')} AND NOT {exists(f'{column} NOT IN ({listed})')}"
        else:
            condition = "1 = 1"
        # Every delivery in `wanted` already rules out the earlier "any" entries when none
        # of their states is wanted: no need to test them again.
        implied = quantifier == "all" and not (wanted & named)
        negated = [] if implied else [f"NOT ({c})" for c in earlier]
        holds[state] = " AND ".join([*negated, f"({condition})"])
        earlier.append(condition)
    return holds
