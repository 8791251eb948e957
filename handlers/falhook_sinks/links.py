"""Where a file can be fetched from: a stored copy made by an earlier sink, else fal's URL.

A sink that stores files (S3) returns ``{"objects": {file.path: {"url": ...}}}``; sinks that
run ``after`` it find those links in ``ctx.outputs`` without knowing which sink made them.
"""

from __future__ import annotations

from collections.abc import Iterable

from falhook_sinks.base import DeliveryContext, LocalFile


def web_url(value: object) -> str | None:
    """The value if it is an http(s) URL: never a `data:` or `javascript:` one."""
    return value if isinstance(value, str) and value.startswith(("https://", "http://")) else None


def link_in_outputs(outputs: Iterable[object], path: str) -> str | None:
    """The stored copy's link of the file at `path`, from the first output that has one."""
    for output in outputs:
        objects = output.get("objects") if isinstance(output, dict) else None
        entry = objects.get(path) if isinstance(objects, dict) else None
        url = web_url(entry.get("url")) if isinstance(entry, dict) else None
        if url is not None:
            return url
    return None


def stored_link(ctx: DeliveryContext, file: LocalFile) -> str | None:
    return link_in_outputs(ctx.outputs.values(), file.path)


def fal_link(file: LocalFile) -> str | None:
    """fal's own URL, unless it was a data: URI (nothing to link to)."""
    return web_url(file.url)


def best_link(ctx: DeliveryContext, file: LocalFile) -> str | None:
    return stored_link(ctx, file) or fal_link(file)


def stored_event_link(ctx: DeliveryContext) -> str | None:
    """A link to the whole event document stored by an earlier sink (the S3 sink's
    ``event_url``): where a message too large to carry the payload points instead."""
    for output in ctx.outputs.values():
        url = web_url(output.get("event_url")) if isinstance(output, dict) else None
        if url is not None:
            return url
    return None
