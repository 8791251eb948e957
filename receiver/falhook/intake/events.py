"""From a verified envelope to the NewEvent the store keeps: shared by the webhook endpoint,
the serverless handler and reconciliation (results recovered by polling)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from falhook.intake.envelope import Envelope, FileProblem, FileRef, find_files
from falhook.store.models import NewEvent

FAL_HEADERS = (
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)
_DATA_URL_SHOWN = 64


def file_view(ref: FileRef) -> dict[str, Any]:
    """The event's JSON view of a File before download (size/sha256 filled in later)."""
    url = ref.url
    if ref.is_data_uri and len(url) > _DATA_URL_SHOWN:
        # The bytes are in the stored body; the listing only needs to say what it was.
        url = url[: url.find(",") + 1] + "..." if "," in url else url[:_DATA_URL_SHOWN]
    return {
        "path": ref.path,
        "url": url,
        "content_type": ref.content_type,
        "file_name": ref.file_name,
        "size": ref.file_size,
        "sha256": None,
        "error": None,
    }


def problem_view(problem: FileProblem) -> dict[str, Any]:
    return {"path": problem.path, "url": None, "error": f"malformed File: {problem.reason}"}


def files_of(envelope: Envelope) -> tuple[list[FileRef], list[FileProblem]]:
    """Files worth downloading: only an OK payload's."""
    if not envelope.has_result:
        return [], []
    return find_files(envelope.payload)


def new_event(
    envelope: Envelope,
    *,
    route: str,
    sinks: Sequence[str],
    body: bytes,
    headers: Mapping[str, str],
    source: str = "webhook",
) -> NewEvent:
    refs, problems = files_of(envelope)
    kept = {name: headers[name] for name in FAL_HEADERS if name in headers}
    return NewEvent(
        request_id=envelope.request_id,
        route=route,
        fal_status=envelope.status,
        error=envelope.error,
        payload_error=envelope.payload_error,
        gateway_request_id=envelope.gateway_request_id,
        headers=kept,
        body=body,
        files=[file_view(r) for r in refs] + [problem_view(p) for p in problems],
        sinks=list(sinks),
        source=source,
    )
