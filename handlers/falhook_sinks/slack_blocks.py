"""The Block Kit message for one event: a pure function of the delivery context.

Slack's limits are kept here so a message is never refused for size: header text 150
characters, section text 3000, at most 10 fields of 2000, image URLs up to 3000, 50 blocks.
Text from the payload (file names, errors) is escaped for mrkdwn (``& < >``), so it can
neither inject links nor mentions, and is cut cleanly (never inside an escape) with ``…``.
"""

from __future__ import annotations

from typing import Any

from falhook_sinks.base import DeliveryContext, LocalFile, iso_utc
from falhook_sinks.links import best_link, stored_link
from falhook_sinks.units import size_text

MAX_BLOCKS = 50
HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
URL_MAX = 3000
ALT_MAX = 2000
FALLBACK_MAX = 3000
PREVIEW_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/gif"})
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape(text: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in text)


def fit(text: str, limit: int, *, mrkdwn: bool = True) -> str:
    """`text` escaped (for mrkdwn) and cut to at most `limit` characters, ending in `…`."""
    out: list[str] = []
    used = 0
    for char in text:
        piece = _ESCAPES.get(char, char) if mrkdwn else char
        if used + len(piece) > limit - 1:
            return "".join(out) + "…"
        out.append(piece)
        used += len(piece)
    return "".join(out)


def human_size(size: int | None) -> str:
    return "size unknown" if size is None else size_text(size)


def _display_name(file: LocalFile) -> str:
    return file.file_name or file.name


def _file_line(ctx: DeliveryContext, file: LocalFile) -> str:
    name = _display_name(file)
    link = best_link(ctx, file)
    details = [human_size(file.size)]
    if file.content_type:
        details.append(file.content_type)
    if stored_link(ctx, file):
        details.append("stored copy")
    # The content type comes from the payload or the file server: bounded like the rest.
    tail = " · ".join(fit(d, 100) for d in details) + f"  `{fit(file.path, 200)}`"
    budget = SECTION_MAX - len(tail) - 8
    if link and len(link) + 200 < budget and "|" not in link and ">" not in link:
        label = fit(name, min(200, budget - len(link)))
        return f"*<{link}|{label}>* · {tail}"
    return f"*{fit(name, 200)}* · {tail}"


def _preview(ctx: DeliveryContext, file: LocalFile) -> dict[str, Any] | None:
    content_type = (file.content_type or "").split(";", 1)[0].strip().lower()
    link = best_link(ctx, file)
    if content_type not in PREVIEW_TYPES or not link or len(link) > URL_MAX:
        return None
    return {
        "type": "image",
        "image_url": link,
        "alt_text": fit(_display_name(file), ALT_MAX, mrkdwn=False),
    }


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": f"*{label}*\n" + fit(value, FIELD_MAX - len(label) - 4)}


def build_message(ctx: DeliveryContext, *, previews: bool = True) -> dict[str, Any]:
    """`{"text": fallback, "blocks": [...]}` for this event."""
    ev = ctx.event
    if ev.alert is not None:
        return build_alert(ctx, ev.alert)
    failed = not ev.ok or ev.payload_error
    title = f"fal request {'failed' if failed else 'done'} · {ev.route}"
    blocks = _head(ctx, title)
    tail = [_context(f"falhook · received {iso_utc(ev.received_at)}")]
    if ev.metadata:  # the user's own labels: which customer, which order
        tail.insert(0, _context(" · ".join(f"{k}={v}" for k, v in ev.metadata.items())))
    # Room for the files: keep one block for "and N more" and the closing context.
    blocks += _file_blocks(ctx, MAX_BLOCKS - len(blocks) - len(tail) - 1, previews=previews)
    blocks += tail
    summary = f"{title} ({ev.request_id})"
    if ev.error:
        summary += f": {ev.error}"
    return {"text": fit(summary, FALLBACK_MAX), "blocks": blocks}


def _head(ctx: DeliveryContext, title: str) -> list[dict[str, Any]]:
    """The title, the event's facts and its errors."""
    ev = ctx.event
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": fit(title, HEADER_MAX, mrkdwn=False)},
        },
        {
            "type": "section",
            "fields": [
                _field("Route", ev.route),
                _field("Endpoint", ev.endpoint or "unknown"),
                _field("Status", ev.fal_status),
                _field("Request", ev.request_id),
            ],
        },
    ]
    for label, problem in (("Error", ev.error), ("Payload error", ev.payload_error)):
        if problem:
            body = fit(problem, SECTION_MAX - len(label) - 12)
            blocks.append(_text(f"*{label}*\n```{body}```"))
    return blocks


def _file_blocks(ctx: DeliveryContext, room: int, *, previews: bool) -> list[dict[str, Any]]:
    """A line (and a preview) per file, as many as fit in `room` blocks, then how many more.
    A video's poster frame (falhook[media]) is its preview, shown once stored (S3)."""
    blocks: list[dict[str, Any]] = []
    shown = 0
    posters = {f.extras["poster_of"]: f for f in ctx.files if f.extras.get("poster_of")}
    listed = [f for f in ctx.files if not f.extras.get("poster_of")]
    for file in listed:
        file_blocks = [_text(_file_line(ctx, file))]
        preview = _preview(ctx, posters.get(file.path, file)) if previews else None
        if preview is not None:
            file_blocks.append(preview)
        if len(file_blocks) > room:
            break
        blocks.extend(file_blocks)
        room -= len(file_blocks)
        shown += 1
    if shown < len(listed):
        blocks.append(_text(f"…and {len(listed) - shown} more file(s), not listed"))
    return blocks


def _text(mrkdwn: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}


def _context(mrkdwn: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": fit(mrkdwn, 300)}]}


def build_alert(ctx: DeliveryContext, alert: dict[str, Any]) -> dict[str, Any]:
    """An alert (a route's `on_dead`): what went dead, where, why, and a link to look."""
    sink, route = str(alert.get("sink")), str(alert.get("route"))
    title = f"⚠️ Delivery dead · {sink} · {route}"
    error = str(alert.get("last_error") or "no error recorded")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": fit(title, HEADER_MAX, mrkdwn=False)},
        },
        {
            "type": "section",
            "fields": [
                _field("Sink", sink),
                _field("Route", route),
                _field("Request", str(alert.get("request_id"))),
                _field("Attempts", str(alert.get("attempts"))),
            ],
        },
        _text(f"*Last error*\n```{fit(error, SECTION_MAX - 40)}```"),
    ]
    link = alert.get("console_url")
    if _linkable(link):
        blocks.append(_text(f"<{link}|Open the event in falhook's console>"))
    blocks.append(_context(f"falhook alert {ctx.event.request_id} · `falhook events replay`"))
    summary = (
        f"falhook: delivery of {alert.get('request_id')} to {sink} ({route}) is dead after "
        f"{alert.get('attempts')} attempt(s): {error}"
    )
    return {"text": fit(summary, FALLBACK_MAX), "blocks": blocks}


def _linkable(link: Any) -> bool:
    """An http(s) URL that can sit in a mrkdwn link as it is."""
    return (
        isinstance(link, str)
        and link.startswith(("https://", "http://"))
        and len(link) < URL_MAX
        and not any(c in link for c in "|<> ")
    )
