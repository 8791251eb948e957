"""The pages' templates (Jinja2, autoescaped: everything from payloads renders as text) and
the small formatting filters they use. Imported only when the console serves a page."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.responses import HTMLResponse

from falhook.store.models import iso, utcnow
from falhook_sinks.units import size_text

# The console's own scripts and styles only: no inline script can run, whatever a payload
# holds. Media may come from fal's and S3's hosts (http for S3-compatible stores on a LAN).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' https: http: data:;"
    " media-src 'self' https: http:; connect-src 'self'; frame-ancestors 'none';"
    " base-uri 'none'; form-action 'self'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Presigned links and request ids stay out of other sites' logs ("no-referrer" would
    # also make browsers send `Origin: null` on the console's own forms).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return ""
    seconds = max(0.0, ((now or utcnow()) - value).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def human_size(value: Any) -> str:
    return size_text(value) if isinstance(value, int) else "?"


def seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "\u2013"  # an en dash: no value
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def query_string(values: dict[str, Any], **changes: Any) -> str:
    merged = {**values, **changes}
    kept = {k: v for k, v in merged.items() if v not in (None, "")}
    return "?" + urlencode(kept) if kept else ""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("falhook.console", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=ago, size=human_size, seconds=seconds, iso=lambda v: iso(v) or "")
    env.globals.update(qs=query_string)
    return env


ENV = _environment()


def page(name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    body = ENV.get_template(name).render(**context)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)
