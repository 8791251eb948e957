"""``event.json``, the S3 sink's commit marker.

It is written last, beside the files: the event as received, each file's final size and
sha256, and ``objects``, where each file was stored (key, size, sha256). A reader that waits
for it never sees half an event. A later delivery (a retry, a replay) that finds a marker
listing exactly the event's files with the digests the event has recorded uploads nothing.
"""

from __future__ import annotations

import json
from typing import Any

from falhook_sinks.base import ArrivingFile, DeliveryContext, LocalFile, json_document
from falhook_sinks.s3.arrivals import Whole

_MARKER_MAX = 16 * 1024 * 1024  # an event.json larger than this is not an earlier marker

Digests = dict[str, tuple[int | None, str | None]]  # path -> (size, sha256)


def stored_marker(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The event.json an earlier delivery left, when there is one to trust (in a thread)."""
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read(_MARKER_MAX)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (403, 404):
            return None
        raise
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def known_digests(ctx: DeliveryContext, files: list[ArrivingFile]) -> Digests | None:
    """Each file's size and sha256 when every one is known before uploading (a whole file,
    or one an earlier download recorded on the event); else None: no marker can match."""
    recorded = {v.get("path"): v for v in ctx.event.files}
    known: Digests = {}
    for file in files:
        whole = file.file if isinstance(file, Whole) else None
        view = recorded.get(file.path) or {}
        size = whole.size if whole is not None else view.get("size")
        sha256 = whole.sha256 if whole is not None else view.get("sha256")
        if size is None or sha256 is None:
            return None
        known[file.path] = (size, sha256)
    return known


def marker_matches(marker: dict[str, Any], known: Digests | None) -> bool:
    """An earlier delivery's event.json lists exactly these files with these bytes."""
    objects = marker.get("objects")
    if known is None or not isinstance(objects, dict) or set(objects) != set(known):
        return False
    return all(
        isinstance(objects[path], dict)
        and (objects[path].get("size"), objects[path].get("sha256")) == digest
        for path, digest in known.items()
    )


def marker_bytes(
    ctx: DeliveryContext, finals: dict[str, LocalFile], objects: dict[str, dict[str, Any]]
) -> bytes:
    """The event as received, its files' final sizes and digests, and where they are."""
    doc = ctx.event.document()
    doc["files"] = [
        view | {"size": finals[view["path"]].size, "sha256": finals[view["path"]].sha256}
        if view.get("path") in finals
        else view
        for view in doc["files"]
    ]
    doc["objects"] = {
        path: {k: obj[k] for k in ("key", "size", "sha256")} for path, obj in objects.items()
    }
    return json_document(doc)
