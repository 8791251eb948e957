"""What sinks after the S3 sink read (``after = ["archive"]``): presigned GET links to every
stored object and to ``event.json``, valid ``presign_seconds`` (SigV4 allows 7 days)."""

from __future__ import annotations

from typing import Any

from falhook_sinks.aws import ThreadedClient

MAX_PRESIGN = 7 * 24 * 3600  # SigV4's limit


async def linked_output(
    aws: ThreadedClient,
    bucket: str,
    seconds: int,
    event_key: str,
    objects: dict[str, Any],
    *,
    uploaded: bool | None = None,
) -> dict[str, Any]:
    """The sink's output: each object with its link, and the event's key and link."""
    keys = [obj["key"] for obj in objects.values()]
    *urls, event_url = await aws.run(presign_all, bucket, [*keys, event_key], seconds)
    linked: dict[str, dict[str, Any]] = {}
    for (path, obj), url in zip(objects.items(), urls, strict=True):
        entry = {"bucket": bucket, **obj, "url": url}
        if uploaded is not None:
            entry["uploaded"] = uploaded
        linked[path] = entry
    return {"bucket": bucket, "objects": linked, "event_key": event_key, "event_url": event_url}


def presign_all(client: Any, bucket: str, keys: list[str], seconds: int) -> list[str]:
    # Off the loop, all in one hand-off: no request, but refreshing temporary
    # credentials may make one.
    return [
        client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
        )
        for key in keys
    ]
