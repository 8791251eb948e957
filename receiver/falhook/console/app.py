"""The console as an ASGI app: its routes behind the gate, the login form, its static files.

app, console = console_app(settings, store)   # served under /console/
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from falhook.config import Settings
from falhook.console.access import SESSION_COOKIE, same_origin
from falhook.console.api import Api
from falhook.console.gate import (
    COOKIE_PATH,
    Handler,
    api_problem,
    api_refusal,
    gate,
    read_form,
)
from falhook.console.pages import Pages
from falhook.console.render import page
from falhook.console.state import ConsoleState
from falhook.store.roles import Store

STATIC = Path(__file__).parent / "static"


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a console path of ours, never another site."""
    if value and value.startswith("/console") and not urlsplit(value).netloc:
        return value
    return "/console/"


class Console:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.state = ConsoleState(settings, store)
        self.api = Api(self.state)
        self.pages = Pages(self.state)

    # --- refusals ----------------------------------------------------------------------------

    async def page_refusal(self, request: Request, status: int, reason: str) -> Response:
        if status == 401:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return page("login.html", {"next": _safe_next(target), "error": None}, 401)
        return Response(reason, status_code=status, media_type="text/plain")

    async def page_problem(self, request: Request, status: int, detail: str) -> Response:
        return page("message.html", _bare(detail), status)

    # --- login -------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if not self.state.access.token:
            return RedirectResponse("/console/", status_code=303)
        target = _safe_next(request.query_params.get("next"))
        return page("login.html", {"next": target, "error": None})

    async def login(self, request: Request) -> Response:
        access = self.state.access
        form = await read_form(request)
        target = _safe_next(str(form.get("next") or ""))
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, request):
            return Response("cross-origin login refused", status_code=403)
        if not access.token_matches(str(form.get("token") or "")):
            return page("login.html", {"next": target, "error": "Wrong token."}, 401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            access.new_session(),
            max_age=int(access.session_seconds),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=COOKIE_PATH,
        )
        return response

    async def logout(self, request: Request, _: object) -> Response:
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        return response

    # --- routes ------------------------------------------------------------------------------

    def _page(self, path: str, handler: Handler, methods: tuple[str, ...] = ("GET",)) -> Route:
        endpoint = gate(self.state.access, handler, self.page_refusal, self.page_problem, api=False)
        return Route(path, endpoint, methods=list(methods))

    def _api(self, path: str, handler: Handler, methods: tuple[str, ...] = ("GET",)) -> Route:
        endpoint = gate(self.state.access, handler, api_refusal, api_problem, api=True)
        return Route(path, endpoint, methods=list(methods))

    def routes(self) -> list[BaseRoute]:
        api, pages, post = self.api, self.pages, ("POST",)
        return [
            Route("/console/login", self.login_form, methods=["GET"]),
            Route("/console/login", self.login, methods=["POST"]),
            self._page("/console/logout", self.logout, post),
            Mount("/console/static", StaticFiles(directory=STATIC), name="static"),
            self._api("/console/api/events", api.events),
            self._api("/console/api/events/count", api.count),
            self._api("/console/api/events/{request_id}", api.event),
            self._api("/console/api/events/{request_id}/replay", api.replay, post),
            self._api("/console/api/replay", api.bulk_replay, post),
            self._api("/console/api/stream", api.stream),
            self._api("/console/api/submissions", api.submissions),
            self._api("/console/api/submissions/reconcile", api.reconcile, post),
            self._api("/console/api/stats", api.stats),
            self._api("/console/api/dead", api.dead),
            self._page("/console/", pages.events),
            self._page("/console/fragments/rows", pages.rows),
            self._page("/console/events/{request_id}", pages.event),
            self._page("/console/events/{request_id}/replay", pages.replay, post),
            self._page("/console/replay", pages.bulk_form),
            self._page("/console/replay", pages.bulk_replay, post),
            self._page("/console/actions", pages.actions),
            self._page("/console/submissions", pages.submissions),
            self._page("/console/submissions/reconcile", pages.reconcile, post),
            self._page("/console/overview", pages.overview),
            self._page("/console/files/{request_id}", pages.file),
            Route("/console", lambda _: RedirectResponse("/console/", 308)),
        ]

    async def aclose(self) -> None:
        """End the live streams (a server stopping must not wait for open tabs)."""
        await self.state.feed.close()


def _bare(text: str) -> dict[str, object]:
    return {"csrf": "", "auth": None, "nav": "", "dead": 0, "flash": None, "title": "Problem",
            "text": text}  # fmt: skip


def console_app(settings: Settings, store: Store) -> tuple[Starlette, Console]:
    console = Console(settings, store)
    return Starlette(routes=console.routes()), console
