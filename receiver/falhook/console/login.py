"""Logging in and out: the form that turns the console token into a session cookie (its
path the console's base), with wrong tokens limited per client and overall (limits.py)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from falhook.console.access import SESSION_COOKIE, Access, same_origin
from falhook.console.guard import client_of, form_fields, too_many
from falhook.console.limits import LoginLimiter
from falhook.console.paths import base_of, safe_next
from falhook.console.render import page


def login_page(
    base: str,
    target: str | None,
    error: str | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    context = {"base": base, "next": safe_next(target, base), "error": error}
    response = page("login.html", context, status)
    response.headers.update(headers or {})
    return response


class Login:
    def __init__(self, access: Access, limiter: LoginLimiter) -> None:
        self.access = access
        self.limiter = limiter

    async def form(self, request: Request) -> Response:
        base = base_of(request)
        if not self.access.token:
            return RedirectResponse(base + "/", status_code=303)
        return login_page(base, request.query_params.get("next"))

    async def submit(self, request: Request) -> Response:
        base = base_of(request)
        form = form_fields(request.headers, await request.body())
        target = safe_next(form.get("next"), base)
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, request):
            return Response("cross-origin login refused", status_code=403)
        client = client_of(request)
        refused = too_many(self.limiter, client)
        if refused is not None:
            headers = {"Retry-After": str(refused.retry_after)}
            return login_page(base, target, refused.reason, 429, headers)
        if not self.access.token_matches(form.get("token", "")):
            self.limiter.failed(client)
            return login_page(base, target, "Wrong token.", 401)
        self.limiter.succeeded(client)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.access.new_session(),
            max_age=int(self.access.session_seconds),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=base,
        )
        return response

    async def logout(self, request: Request) -> Response:
        """Behind the guard: only the operator's own page can log them out."""
        base = base_of(request)
        response = RedirectResponse(base + "/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=base)
        return response
