"""What the pages show, built from stored events: rows of the list, one event's parts, the
Plain dicts for the templates; every string still goes through the
templates' autoescaping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from falhook.console.links import FileLinks, file_links, kind_of
from falhook.store.document import event_document, payload_of
from falhook.store.models import EventView
from falhook.store.states import BACKLOG_STATES

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
        copies = links.get(path, FileLinks(None, None, None))
        problem = fetch_problem(view, file)
        shown.append(
            {
                **file,
                "kind": kind_of(file),
                "links": copies,
                "poster": poster,
                "display_name": file.get("file_name") or file.get("name") or path,
                # No copy of ours and fal's could not be fetched: say why, not a dead player.
                "unavailable": problem if not (copies.disk or copies.s3) else None,
                "digest": file.get("sha256") or digest_note(view, problem),
            }
        )
    return shown


def fetch_problem(view: EventView, file: dict[str, Any]) -> str | None:
    """Why the file could not be fetched: its intake error, or the download error a
    delivery recorded for it (downloads name the file: '<path>: <reason>')."""
    if file.get("error"):
        return str(file["error"])
    prefix = f"{file.get('path', '')}: "
    for delivery in view.deliveries.values():
        errors = (delivery.last_error, *(a.error for a in reversed(delivery.history)))
        for error in errors:
            if error and error.startswith(prefix):
                return error[len(prefix) :]
    return None


def digest_note(view: EventView, problem: str | None) -> str:
    """What the sha256 line says when there is none: why it is missing."""
    if problem is not None:
        return f"not downloaded: {problem}"
    states = {d.state for d in view.deliveries.values()}
    if states & set(BACKLOG_STATES):
        return "not downloaded yet"
    failed = next((d.last_error for d in view.deliveries.values() if d.state == "dead"), None)
    if failed:
        return f"not downloaded: the delivery died ({failed})"
    return "not downloaded: no sink of this route reads files"


def preview_of(files: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The list row's small preview: a video's poster, else an image, else the first
    previewable file's kind."""
    for file in files:
        if file["kind"] == "video" and file["poster"]:
            return {"kind": "image", "url": file["poster"]}
    for file in files:
        shown = file["links"].best and not file["unavailable"]  # not a link known to fail
        if file["kind"] == "image" and not file.get("poster_of") and shown:
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


SIGNATURE_HEADER = "x-fal-webhook-signature"
SIGNATURE_SHOWN = 16  # hex digits: enough to tell two apart, not the signature to copy around


def shown_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    """The stored fal headers as the event page shows them: the signature cut short (the
    API and `events show --json` keep it whole, for audits)."""
    shown = []
    for name, value in sorted(headers.items()):
        if name.lower() == SIGNATURE_HEADER and len(value) > SIGNATURE_SHOWN:
            value = value[:SIGNATURE_SHOWN] + "…"
        shown.append((name, value))
    return shown


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
        "headers": shown_headers(view.headers),
        "prompt": prompt_of(submission["input"]) if submission else None,
        "submission_json": msgspec.json.format(
            msgspec.json.encode(submission["input"]), indent=2
        ).decode()
        if submission
        else None,
    }
