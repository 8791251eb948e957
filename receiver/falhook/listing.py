"""What `falhook events list` prints: the columns of an event, drawn as an aligned table, CSV
or JSON Lines from the contract's event documents.

A column is a title, a CSV name and a function of the event document; a new one (say, the
job's cost) is one more entry in COLUMNS.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Doc = dict[str, Any]
REASON_WIDTH = 100  # the table cuts a longer reason (CSV, JSON and `events show` keep it whole)
NEEDS_A_REASON = ("dead", "retrying")


@dataclass(frozen=True)
class Column:
    title: str  # the table's header
    name: str  # the CSV header
    value: Callable[[Doc], str]
    width: int | None = None  # the table cuts longer values
    in_table: bool = True  # False: CSV only (too wide for a terminal)


def reason(doc: Doc) -> str:
    """Why the event is not done: each dead or retrying delivery's sink and last error."""
    return "; ".join(
        f"{sink}: {d['last_error']}"
        for sink, d in doc["deliveries"].items()
        if d["state"] in NEEDS_A_REASON and d.get("last_error")
    )


def endpoint(doc: Doc) -> str:
    submission = doc.get("submission")
    return str(submission["endpoint"]) if submission else ""


COLUMNS: tuple[Column, ...] = (
    Column("REQUEST_ID", "request_id", lambda d: d["request_id"]),
    Column("ROUTE", "route", lambda d: d["route"]),
    Column("STATE", "state", lambda d: d["state"]),
    Column("FAL", "fal_status", lambda d: d["fal_status"]),
    Column("RECEIVED_AT", "received_at", lambda d: d["received_at"]),
    Column("FILES", "files", lambda d: str(len(d["files"]))),
    Column("ENDPOINT", "endpoint", endpoint, in_table=False),
    Column("ERROR", "fal_error", lambda d: d.get("error") or "", in_table=False),
    Column("REASON", "reason", reason, width=REASON_WIDTH),
)


def _cut(text: str, width: int | None) -> str:
    text = " ".join(text.split())  # one line in a table, whatever the error held
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def table(docs: Sequence[Doc], columns: Sequence[Column] = COLUMNS) -> str:
    shown = [c for c in columns if c.in_table]
    rows = [[c.title for c in shown]]
    rows += [[_cut(c.value(d), c.width) for c in shown] for d in docs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(shown))]
    lines = ("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def csv_text(docs: Sequence[Doc], columns: Sequence[Column] = COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.name for c in columns])
    writer.writerows([c.value(d) for c in columns] for d in docs)
    return out.getvalue()


def jsonl_text(docs: Sequence[Doc]) -> str:
    return "".join(json.dumps(d) + "\n" for d in docs)
