"""Turning rows read since a mark into the console's change messages, once each.

Rows are read in two parts. What is new since the mark is read by keyset, (stamp, a unique
tie-breaker) after the last row read, LIMIT rows at a time, so a thousand deliveries stamped
in one instant (a bulk replay) are all reported and a busy moment never stalls the reader.
And the OVERLAP seconds before the mark are read again (at most LIMIT rows, newest first):
a transaction that stamped its rows before the mark but committed after the last read is
still seen. What was already reported inside that window is remembered in the mark and not
reported again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from falhook.store.models import Change, ChangeMark

OVERLAP = 2.0  # seconds read again before the mark
LIMIT = 1000  # rows read per part and call; the next call continues
ACCEPTED = "(accepted)"  # the state part of an accept's key among those seen

# (request_id, sink, state, stamp as epoch seconds, tie-breaker)
Row = Sequence[Any]


def delivery_changes(
    mark: ChangeMark, late: Sequence[Row], new: Sequence[Row], accepted: set[str]
) -> tuple[list[Change], ChangeMark]:
    """The rows' changes not reported before (not the pending deliveries an accept just
    made: the accept says it), and the mark after them (its event part unchanged)."""
    changes: list[Change] = []
    seen = set(mark.seen)
    for rid, sink, state, stamp, *_ in [*late, *new]:
        key = (rid, sink, state, stamp)
        if key in seen:
            continue
        seen.add(key)
        if state == "pending" and rid in accepted:
            continue
        changes.append(Change(request_id=rid, kind="delivery", sink=sink, state=state))
    at, after = (new[-1][3], new[-1][4]) if new else (mark.at, mark.after)
    window = frozenset(k for k in seen if k[2] == ACCEPTED or k[3] > at - OVERLAP)
    return changes, ChangeMark(mark.event_key, at, window, after, mark.event_after)
