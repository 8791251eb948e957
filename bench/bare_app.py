"""The intake baseline: a bare Starlette app that reads the body and answers 200."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def webhook(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"status": "accepted"})


app = Starlette(routes=[Route("/webhooks/{route}", webhook, methods=["POST"])])
