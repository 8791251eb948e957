"""What the pages show, built from stored events: rows of the list, one event's parts, the
overview's figures. Plain dicts for the templates; every string still goes through the
templates' autoescaping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from falhook.console.links import FileLinks, file_links, kind_of
from falhook.store.document import event_document, payload_of
from falhook.store.models import DeliveryStats, EventView, utcnow
from falhook.store.roles import ConsoleReader

TREE_MAX_BYTES = 512 * 1024  # a larger payload is shown as text, not as a tree
PREVIEW_KINDS = ("video", "image")


def endpoint_of(view: EventView) -> str | None:
    return view.submission.endpoint if view.submission is not None else None


def prompt_of(value: Any) -> str | None:
    """The prompt of a submission's input (the text that made the media), if it has one."""
    if isinstance(value, dict):
        for key in ("prompt", "text", "instruction"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return None


def _files(view: EventView, links: dict[str, FileLinks]) -> list[dict[str, Any]]:
    posters = {
        str(f.get("poster_of")): str(f.get("path")) for f in view.files if f.get("poster_of")
    }
    shown = []
    for file in view.files:
        path = str(file.get("path", ""))
        poster_path = posters.get(path)
        poster = links[poster_path].best if poster_path in links else None
        shown.append(
            {
                **file,
                "kind": kind_of(file),
                "links": links.get(path, FileLinks(None, None, None)),
                "poster": poster,
                "display_name": file.get("file_name") or file.get("name") or path,
            }
        )
    return shown


def preview_of(files: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The list row's small preview: a video's poster, else an image, else the first
    previewable file's kind."""
    for file in files:
        if file["kind"] == "video" and file["poster"]:
            return {"kind": "image", "url": file["poster"]}
    for file in files:
        if file["kind"] == "image" and not file.get("poster_of") and file["links"].best:
            return {"kind": "image", "url": file["links"].best}
    for file in files:
        if file["kind"] in PREVIEW_KINDS or file["kind"] in ("zip", "exr"):
            return {"kind": file["kind"], "url": None}
    return None


def row(view: EventView, roots: dict[str, Path], base: str) -> dict[str, Any]:
    return _row(view, _files(view, file_links(view, roots, base)))


def _row(view: EventView, files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "request_id": view.request_id,
        "received_at": view.received_at,
        "route": view.route,
        "endpoint": endpoint_of(view),
        "fal_status": view.fal_status,
        "state": view.state,
        "source": view.source,
        "sinks": [(name, d.state) for name, d in sorted(view.deliveries.items())],
        "preview": preview_of(files),
        "files": len([f for f in files if not f.get("poster_of")]),
        "error": view.error or view.payload_error,
    }


def detail(view: EventView, roots: dict[str, Path], base: str) -> dict[str, Any]:
    doc = event_document(view)
    payload = payload_of(view)
    raw = msgspec.json.encode(payload)
    submission = doc.get("submission")
    files = _files(view, file_links(view, roots, base))
    return {
        "doc": doc,
        "row": _row(view, files),
        "files": files,
        "payload": payload,
        "payload_json": msgspec.json.format(raw, indent=2).decode(),
        "tree": len(raw) <= TREE_MAX_BYTES,
        "headers": sorted(view.headers.items()),
        "prompt": prompt_of(submission["input"]) if submission else None,
        "submission_json": msgspec.json.format(
            msgspec.json.encode(submission["input"]), indent=2
        ).decode()
        if submission
        else None,
    }


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
    waiting = ("pending", "retrying", "delivering")
    oldest = stats.oldest_due_at
    age = max(0.0, (now - oldest).total_seconds()) if oldest and oldest <= now else 0.0
    latency = {f"p{round(f * 100)}": percentile(stats.latencies, f) for f in (0.5, 0.9, 0.99)}
    durations = [float(d) for d in stats.durations_ms]
    return {
        "backlog": sum(stats.by_state.get(s, 0) for s in waiting),
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
