"""Where a file can be fetched from: a stored copy made by an earlier sink, else fal's URL.

A sink that stores files (S3) returns ``{"objects": {file.path: {"url": ...}}}``; sinks that
run ``after`` it find those links in ``ctx.outputs`` without knowing which sink made them.
"""

from __future__ import annotations

from falhook.sinks.base import DeliveryContext, LocalFile


def stored_link(ctx: DeliveryContext, file: LocalFile) -> str | None:
    for output in ctx.outputs.values():
        objects = output.get("objects") if isinstance(output, dict) else None
        entry = objects.get(file.path) if isinstance(objects, dict) else None
        url = entry.get("url") if isinstance(entry, dict) else None
        if isinstance(url, str) and url.startswith(("https://", "http://")):
            return url
    return None


def fal_link(file: LocalFile) -> str | None:
    """fal's own URL, unless it was a data: URI (nothing to link to)."""
    return file.url if file.url.startswith(("https://", "http://")) else None


def best_link(ctx: DeliveryContext, file: LocalFile) -> str | None:
    return stored_link(ctx, file) or fal_link(file)


def stored_event_link(ctx: DeliveryContext) -> str | None:
    """A link to the whole event document stored by an earlier sink (the S3 sink's
    ``event_url``): where a message too large to carry the payload points instead."""
    for output in ctx.outputs.values():
        url = output.get("event_url") if isinstance(output, dict) else None
        if isinstance(url, str) and url.startswith(("https://", "http://")):
            return url
    return None
