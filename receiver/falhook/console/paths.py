"""Where the console is: `/console` under the path the app is mounted at (ASGI `root_path`,
e.g. `/fal` when a host application does `app.mount("/fal", falhook_app)`). Every link,
redirect, cookie path, API call and asset the console emits starts with that base."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

PREFIX = "/console"


class ConsoleBase:
    """Notes the console's base for this request, before any route is matched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            root = str(scope.get("root_path", "")).rstrip("/")
            scope.setdefault("state", {})["console_base"] = root + PREFIX
        await self.app(scope, receive, send)


def base_of(conn: HTTPConnection) -> str:
    """The console's base path for this request: `/console`, or `<root_path>/console`."""
    return str(conn.scope.get("state", {}).get("console_base", PREFIX))


def safe_next(value: str | None, base: str) -> str:
    """Where to go after logging in: a console path of ours, never another site."""
    if not value or urlsplit(value).netloc:
        return base + "/"
    ours = value == base or value.startswith((base + "/", base + "?"))
    return value if ours else base + "/"
