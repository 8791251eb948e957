"""Whether the console may be served at all, decided once at start-up from the settings.

Without `[console].token` the console trusts loopback clients. That is safe only where
loopback means the operator's own machine: a reverse proxy on the same host that adds no
forwarding header (nginx with `proxy_pass` alone) makes every internet client a loopback
client. When `[receiver].public_url` says falhook is reached at a non-loopback address, a
console without a token is therefore not served (404), and start-up says why.

Imported by the app at start-up: nothing here loads Jinja2 or the console's pages.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import structlog

from falhook.config import Settings

log = structlog.get_logger("falhook.console")


def is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def unguarded_reason(settings: Settings) -> str | None:
    """Why an enabled console must stay off (a public address and no token), or None."""
    console, public_url = settings.console, settings.receiver.public_url
    if console.token or is_loopback_url(public_url):
        return None
    return (
        f"is empty while [receiver].public_url ({public_url}) is not a loopback address:"
        " the console stays off (404) until a token is set"
    )


def console_served(settings: Settings) -> bool:
    """Whether to serve the console; logs a warning when it stays off for lack of a token."""
    if not settings.console.enabled:
        return False
    reason = unguarded_reason(settings)
    if reason is not None:
        log.warning(f"[console].token: {reason}")
        return False
    return True
