"""Every console route behind one gate: credentials first (401/403, or the login page), then
CSRF for POSTs, then the handler with what it needs to know about the caller."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from falhook.console.access import BROWSER_COOKIE, Access, Auth
from falhook.console.actions import ActionError
from falhook.console.params import ParamError
from falhook.store.paging import InvalidCursor

COOKIE_PATH = "/console"


@dataclass
class Caller:
    """Who is asking, and the CSRF token their pages carry."""

    auth: Auth
    csrf: str
    new_binding: str | None = None  # a browser cookie to set with the answer

    def finish(self, response: Response, secure: bool) -> Response:
        if self.new_binding is not None:
            response.set_cookie(
                BROWSER_COOKIE,
                self.new_binding,
                httponly=True,
                samesite="strict",
                secure=secure,
                path=COOKIE_PATH,
            )
        return response


FORM_MAX = 64 * 1024  # the console's forms are a few fields


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the console's forms have no files), read once."""
    cached = getattr(request.state, "form", None)
    if isinstance(cached, dict):
        return cached
    body = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, str] = {}
    if kind == "application/x-www-form-urlencoded" and len(body) <= FORM_MAX:
        fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    request.state.form = fields
    return fields


Handler = Callable[[Request, Caller], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]
Refuse = Callable[[Request, int, str], Awaitable[Response]]


def api_error(status: int, code: str, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def api_refusal(_: Request, status: int, reason: str) -> Response:
    return api_error(status, "unauthorized" if status == 401 else "forbidden", reason)


async def _answer(request: Request, handler: Handler, caller: Caller, problem: Refuse) -> Response:
    """The handler's answer, or a 400/404/409 for what it could not do as asked."""
    try:
        return await handler(request, caller)
    except (ParamError, InvalidCursor) as exc:
        return await problem(request, 400, str(exc))
    except ActionError as exc:
        return await problem(request, exc.status, exc.detail)


async def api_problem(_: Request, status: int, detail: str) -> Response:
    code = {400: "bad_request", 404: "not_found", 409: "conflict"}.get(status, "error")
    return api_error(status, code, detail)


def gate(
    access: Access, handler: Handler, refuse: Refuse, problem: Refuse, *, api: bool
) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        verdict = access.check(request)
        if verdict.auth is None:
            return await refuse(request, verdict.status, verdict.reason)
        binding = access.binding(request)
        new_binding = None
        if not binding and verdict.auth == "loopback":
            binding = new_binding = secrets.token_urlsafe(24)
        caller = Caller(verdict.auth, access.csrf_token(binding), new_binding)
        if request.method == "POST":
            given = request.headers.get("x-csrf-token")
            if given is None and not api:
                given = (await read_form(request)).get("csrf")
            reason = access.csrf_refusal(request, verdict.auth, given)
            if reason is not None:
                return api_error(403, "csrf", reason)
        response = await _answer(request, handler, caller, problem)
        return caller.finish(response, request.url.scheme == "https")

    return endpoint
