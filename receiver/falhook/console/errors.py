"""How each group of the console answers what it refuses (the guard's `Refused`) and what a
handler could not do as asked (exceptions, mapped by Starlette's exception handlers):

- the API: the contract's JSON error `{"error", "detail"}`;
- the pages: the login form (401, 429), a plain refusal (403), or a message page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.authentication import AuthenticationError
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from falhook.console.actions import ActionError
from falhook.console.guard import Refused
from falhook.console.login import login_page
from falhook.console.params import ParamError
from falhook.console.paths import base_of
from falhook.store.paging import InvalidCursor

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    429: "too_many_requests",
}
Handler = Callable[[Request, Exception], Awaitable[Response]]


def _status_and_detail(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, ActionError):
        return exc.status, exc.detail
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    return 400, str(exc)  # ParamError, InvalidCursor: the request asked for nonsense


def refusal_headers(exc: Refused) -> dict[str, str]:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return headers


def api_error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    code = CODES.get(status, "error")
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


# --- the API ---------------------------------------------------------------------------------


def api_refusal(_: HTTPConnection, exc: AuthenticationError) -> Response:
    assert isinstance(exc, Refused)
    return api_error(exc.status, exc.reason, refusal_headers(exc))


async def api_problem(_: Request, exc: Exception) -> Response:
    return api_error(*_status_and_detail(exc))


API_HANDLERS: dict[Any, Handler] = dict.fromkeys(
    (ParamError, InvalidCursor, ActionError, HTTPException), api_problem
)


# --- the pages -------------------------------------------------------------------------------


def page_refusal(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    assert isinstance(exc, Refused)
    if exc.status in (401, 429):
        here = conn.url.path + (f"?{conn.url.query}" if conn.url.query else "")
        error = exc.reason if exc.status == 429 else None
        return login_page(base_of(conn), here, error, exc.status, refusal_headers(exc))
    return Response(exc.reason, status_code=exc.status, media_type="text/plain")


Message = Callable[[Request, int, str], Awaitable[Response]]


def page_handlers(message: Message) -> dict[Any, Handler]:
    """Problems shown as a page of the console (its navigation around the message)."""

    async def problem(request: Request, exc: Exception) -> Response:
        status, detail = _status_and_detail(exc)
        return await message(request, status, detail)

    return {
        ParamError: problem,
        InvalidCursor: problem,
        ActionError: problem,
        HTTPException: problem,
    }
