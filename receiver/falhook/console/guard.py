"""The console's guard as Starlette middleware, the same for its pages and its API:
authentication (Starlette's AuthenticationMiddleware with the console's backend) first,
then CSRF for POSTs. Each group answers refusals its own way (errors.py).

- `ConsoleAuth`: who is asking (bearer token, session cookie, or a loopback client when no
  token is set), or `Refused` with 401, 403 or 429 (too many wrong tokens: limits.py).
- `CsrfGuard`: a browser's POST must come from the console's origin and carry its CSRF
  token; a loopback browser without a session gets a cookie to bind that token to.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
)
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from falhook.console.access import BROWSER_COOKIE, Access, Auth
from falhook.console.limits import LoginLimiter
from falhook.console.paths import base_of

FORM_MAX = 64 * 1024  # the console's forms are a few fields


class Refused(AuthenticationError):
    """No access: 401 (no or wrong credentials), 403 (a client the console does not
    answer) or 429 (too many wrong tokens; `retry_after` seconds)."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class Operator(BaseUser):
    """The authenticated caller: how (bearer, session, loopback)."""

    auth: Auth

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.auth


def client_of(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client is not None else ""


def too_many(limiter: LoginLimiter, client: str) -> Refused | None:
    wait = limiter.retry_after(client)
    if wait is None:
        return None
    return Refused(429, f"too many wrong tokens: try again in {wait} s", wait)


class ConsoleAuth(AuthenticationBackend):
    def __init__(self, access: Access, limiter: LoginLimiter) -> None:
        self.access = access
        self.limiter = limiter

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        access = self.access
        if not access.token:
            verdict = access.check(conn)
            if verdict.auth is None:
                raise Refused(verdict.status, verdict.reason)
            return AuthCredentials(["console"]), Operator(verdict.auth)
        header = conn.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            client = client_of(conn)
            refused = too_many(self.limiter, client)
            if refused is not None:
                raise refused
            if not access.token_matches(header[7:].strip()):
                self.limiter.failed(client)
                raise Refused(401, "wrong token")
            return AuthCredentials(["console"]), Operator("bearer")
        verdict = access.check(conn)  # a session cookie: no token to guess, never limited
        if verdict.auth is None:
            raise Refused(verdict.status, verdict.reason)
        return AuthCredentials(["console"]), Operator(verdict.auth)


def operator(conn: HTTPConnection) -> Operator:
    user = conn.scope.get("user")
    assert isinstance(user, Operator), "behind ConsoleAuth only"
    return user


def csrf_of(conn: HTTPConnection) -> str:
    """The CSRF token this caller's pages carry ('' for bearer calls)."""
    return str(conn.scope.get("state", {}).get("csrf", ""))


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the console's forms have no files), read once."""
    state = request.scope.setdefault("state", {})
    cached = state.get("form")
    if isinstance(cached, dict):
        return cached
    body = await request.body()
    state["form"] = form_fields(request.headers, body)
    return dict(state["form"])


def form_fields(headers: Mapping[str, str], body: bytes) -> dict[str, str]:
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded" or len(body) > FORM_MAX:
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


class CsrfGuard:
    """After ConsoleAuth: the caller's CSRF token in scope state, a binding cookie for a
    loopback browser that has none, and every POST checked (forms: the `csrf` field;
    scripts: the X-CSRF-Token header)."""

    def __init__(self, app: ASGIApp, access: Access, *, forms: bool) -> None:
        self.app = app
        self.access = access
        self.forms = forms  # pages: the token may come in a form field

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        auth = operator(request).auth
        binding = self.access.binding(request)
        new_binding = None
        if not binding and auth == "loopback":
            binding = new_binding = secrets.token_urlsafe(24)
        scope.setdefault("state", {})["csrf"] = self.access.csrf_token(binding)
        if request.method == "POST":
            given = request.headers.get("x-csrf-token")
            if given is None and self.forms:
                given = (await read_form(request)).get("csrf")
                receive = _replay(await request.body(), receive)
            reason = self.access.csrf_refusal(request, auth, given)
            if reason is not None:
                refusal = JSONResponse({"error": "csrf", "detail": reason}, status_code=403)
                await refusal(scope, receive, send)
                return
        if new_binding is not None:
            send = _with_cookie(send, new_binding, base_of(request), request.url.scheme)
        await self.app(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the already-read body to the handler, then the real one (which
    tells of a disconnect)."""
    sent = False

    async def replaying() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replaying


def _with_cookie(send: Send, binding: str, path: str, scheme: str) -> Send:
    cookie = binding_cookie(binding, path, secure=scheme == "https")

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            MutableHeaders(scope=message).append("set-cookie", cookie)
        await send(message)

    return sending


def binding_cookie(value: str, path: str, *, secure: bool) -> str:
    """The Set-Cookie value binding a loopback browser's CSRF token (Starlette writes it)."""
    carrier = Response()
    carrier.set_cookie(
        BROWSER_COOKIE, value, httponly=True, samesite="strict", secure=secure, path=path
    )
    return carrier.headers["set-cookie"]
