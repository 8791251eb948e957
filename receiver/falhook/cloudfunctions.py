"""Google Cloud Functions (2nd gen, and Cloud Run functions) entry point:
`falhook.cloudfunctions:falhook_webhook`, an HTTP function for `functions-framework`'s ASGI
mode (`pip install 'falhook[gcf]'`).

    # main.py, deployed beside falhook.toml
    from falhook.cloudfunctions import falhook_webhook  # noqa: F401

    gcloud functions deploy falhook --gen2 --runtime python311 --trigger-http \\
        --allow-unauthenticated --entry-point falhook_webhook --source . \\
        --set-env-vars FALHOOK_CONFIG=falhook.toml

The entry point's name must stay `falhook_webhook`: functions-framework finds an ASGI
function by the name it was declared under. Every request goes to falhook's own app
(`/webhooks/<route>`, `/healthz`, `/readyz`), built once per instance, and `[serverless]
mode` applies as on Lambda: `inline` runs the route's sinks before answering (a function's
CPU is only there during a request; a sink that fails makes the answer 503, and fal's
retries are the schedule), `enqueue` stores and answers, and `falhook worker` processes
elsewhere deliver from the shared PostgreSQL store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from functions_framework import aio
from starlette.requests import Request
from starlette.responses import Response

from falhook.config import load_config
from falhook.logs import configure_logging
from falhook.serverless import build_app, warn_if_sqlite

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from falhook.app import Falhook

_app: Falhook | None = None


def _falhook() -> Falhook:
    """falhook's app, built on the instance's first request (a config mistake fails that
    request, and the next one tries again)."""
    global _app
    if _app is None:
        configure_logging()
        settings = load_config(None)
        warn_if_sqlite(settings)
        _app = build_app(settings)
    return _app


class _Passthrough(Response):
    """The answer of falhook's own app to the request (its body still unread), streamed to
    the client as falhook sends it."""

    def __init__(self, app: Falhook) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@aio.http
async def falhook_webhook(request: Request) -> Response:
    """Every request of the function: falhook's endpoint, probes and console."""
    return _Passthrough(_falhook())
