"""Turning rows read since a mark into the console's change messages, once each.

Stores read a little before their mark (OVERLAP seconds): a transaction that stamped its
rows before the mark but committed after the last read is still seen. What was already
reported inside that window is remembered in the mark and not reported again.
"""

from __future__ import annotations

from collections.abc import Iterable

from falhook.store.models import Change, ChangeMark

OVERLAP = 5.0  # seconds read again before the mark
ACCEPTED = "(accepted)"  # the state part of an accept's key among those seen
LIMIT = 1000  # rows read per call; the next call continues


def delivery_changes(
    mark: ChangeMark, rows: Iterable[tuple[str, str, str, float]], accepted: set[str]
) -> tuple[list[Change], float, frozenset[tuple[str, str, str, float]]]:
    """Rows (request_id, sink, state, updated_at epoch) oldest first: the new ones as
    changes (not the pending deliveries an accept just made: the accept says it), the
    new clock, and what is still inside the overlap window."""
    changes: list[Change] = []
    seen = set(mark.seen)
    at = mark.at
    for rid, sink, state, stamp in rows:
        key = (rid, sink, state, stamp)
        if key in seen:
            continue
        seen.add(key)
        at = max(at, stamp)
        if state == "pending" and rid in accepted:
            continue
        changes.append(Change(request_id=rid, kind="delivery", sink=sink, state=state))
    window = frozenset(k for k in seen if k[3] > at - OVERLAP)
    return changes, at, window
