"""The console as an ASGI app, built on Starlette's own seams:

    /console              → 308 to /console/
    /console/static/...   its stylesheet, script and icon (no guard: the login page uses them)
    /console/login        the login form (GET, POST)
    /console/api/...      Mount: ConsoleAuth → CsrfGuard → JSON errors   (api.py)
    /console/...          Mount: ConsoleAuth → CsrfGuard → page errors   (pages.py, logout)

Both groups share the guard (guard.py) and answer refusals and problems their own way
(errors.py). Every path is under the app's `root_path` (paths.py).

    app, console = console_app(settings, store)

The console holds the store roles it reads and the actions it may take, never the store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from starlette.applications import Starlette
from starlette.authentication import AuthenticationError
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from falhook.config import Settings
from falhook.console import errors
from falhook.console.actions import Actions, Reconciliation, Replays
from falhook.console.api import Api
from falhook.console.errors import Handler
from falhook.console.guard import ConsoleAuth, CsrfGuard
from falhook.console.login import Login
from falhook.console.pages import Pages
from falhook.console.paths import PREFIX, ConsoleBase, base_of
from falhook.console.state import ConsoleState
from falhook.fal.reconcile import ReconcileStore
from falhook.store.roles import ConsoleReader, SubmissionReader

STATIC = Path(__file__).parent / "static"
Refusal = Callable[[HTTPConnection, AuthenticationError], Response]


class Console:
    def __init__(
        self,
        settings: Settings,
        events: ConsoleReader,
        submissions: SubmissionReader,
        actions: Actions,
    ) -> None:
        self.state = ConsoleState(settings, events, submissions, actions)
        self.api = Api(self.state)
        self.pages = Pages(self.state)
        self.login = Login(self.state.access, self.state.limiter)

    def _guarded(
        self, refusal: Refusal, handlers: dict[object, Handler], *, forms: bool
    ) -> list[Middleware]:
        access = self.state.access
        return [
            Middleware(AuthenticationMiddleware, backend=ConsoleAuth(access, self.state.limiter),
                       on_error=refusal),
            Middleware(CsrfGuard, access=access, forms=forms),
            Middleware(ExceptionMiddleware, handlers=handlers),
        ]  # fmt: skip

    def routes(self) -> list[BaseRoute]:
        api = self._guarded(errors.api_refusal, errors.API_HANDLERS, forms=False)
        pages = self._guarded(
            errors.page_refusal, errors.page_handlers(self.pages.message), forms=True
        )
        page_routes = [Route("/logout", self.login.logout, methods=["POST"]), *self.pages.routes()]
        return [
            Route(PREFIX, _to_the_list),
            Mount(
                PREFIX,
                routes=[
                    Mount("/static", StaticFiles(directory=STATIC), name="static"),
                    Route("/login", self.login.form, methods=["GET"]),
                    Route("/login", self.login.submit, methods=["POST"]),
                    Mount("/api", routes=self.api.routes(), middleware=api),
                    Mount("", routes=page_routes, middleware=pages),
                ],
            ),
        ]

    def asgi(self) -> Starlette:
        return Starlette(routes=self.routes(), middleware=[Middleware(ConsoleBase)])

    async def aclose(self) -> None:
        """End the live streams (a server stopping must not wait for open tabs)."""
        await self.state.feed.close()


async def _to_the_list(request: Request) -> Response:
    return RedirectResponse(base_of(request) + "/", 308)


class ConsoleStore(ConsoleReader, ReconcileStore, Protocol):
    """What the console is built from: the roles it reads (submissions among
    reconciliation's), and reconciliation's."""


def console_app(settings: Settings, store: ConsoleStore) -> tuple[Starlette, Console]:
    actions = Actions(
        replays=Replays(store, settings), reconciliation=Reconciliation(store, settings)
    )
    console = Console(settings, events=store, submissions=store, actions=actions)
    return console.asgi(), console
