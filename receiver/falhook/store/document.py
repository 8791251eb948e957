"""The event as JSON: the contract's EVENT document (`falhook events show --json`, the
console's API), and the parts of it the worker hands to sinks."""

from __future__ import annotations

from typing import Any

import msgspec

from falhook.store.models import EventView, SubmissionView, iso, iso_ms


def payload_of(view: EventView) -> Any:
    try:
        return msgspec.json.decode(view.body).get("payload")
    except (msgspec.DecodeError, AttributeError):
        return None


def submission_doc(view: EventView) -> dict[str, Any] | None:
    sub = view.submission
    if sub is None:
        return None
    return {
        "endpoint": sub.endpoint,
        "route": sub.route,
        "input": sub.input,
        "submitted_at": iso(sub.submitted_at),
        "seconds_to_webhook": round((view.received_at - sub.submitted_at).total_seconds(), 3),
        "metadata": dict(sub.metadata),
    }


def submission_record(view: SubmissionView) -> dict[str, Any]:
    """A submission as `falhook submissions list --json` and the console's API show it."""
    waited = None
    if view.received_at is not None:
        waited = round((view.received_at - view.submitted_at).total_seconds(), 3)
    return {
        "request_id": view.request_id,
        "endpoint": view.endpoint,
        "route": view.route,
        "state": view.state,
        "detail": view.detail,
        "submitted_at": iso(view.submitted_at),
        "checked_at": iso(view.checked_at),
        "received_at": iso(view.received_at),
        "seconds_to_result": waited,
        "input": view.input,
        "metadata": dict(view.metadata),
    }


def file_views(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The event's files as documents show them: the contract's keys, then what is known."""
    return [
        {k: f.get(k) for k in ("path", "url", "content_type", "size", "sha256")}
        | {
            k: f[k]
            for k in ("file_name", "name", "error", "media", "poster_of")
            if f.get(k) is not None
        }
        for f in files
    ]


def event_document(view: EventView, *, with_payload: bool = False) -> dict[str, Any]:
    """Keys of the contract first; more may be added, never renamed."""
    doc: dict[str, Any] = {
        "request_id": view.request_id,
        "route": view.route,
        "fal_status": view.fal_status,
        "error": view.error,
        "payload_error": view.payload_error,
        "received_at": iso(view.received_at),
        "state": view.state,
        "deliveries": {
            name: {
                "state": d.state,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "next_attempt_at": iso(d.next_attempt_at)
                if d.state in ("pending", "retrying")
                else None,
                "history": [
                    {
                        "at": iso_ms(h.at),
                        "outcome": h.outcome,
                        "error": h.error,
                        "duration_ms": h.duration_ms,
                    }
                    for h in d.history
                ],
            }
            for name, d in sorted(view.deliveries.items())
        },
        "files": file_views(view.files),
        "gateway_request_id": view.gateway_request_id,
        "source": view.source,
        "submission": submission_doc(view),
    }
    if with_payload:
        doc["payload"] = payload_of(view)
    return doc
