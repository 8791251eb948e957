"""The JSON API under /console/api/ (the contract's "Console" section): events listed,
shown and replayed, bulk replay by filter, the live stream, submissions and statistics."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from falhook.console.actions import ActionError
from falhook.console.overview import last_hour_stats, trends_document
from falhook.console.params import ParamError, event_query, limit_of, submission_state
from falhook.console.state import ConsoleState
from falhook.store.document import event_document, submission_record
from falhook.store.models import iso


class JSONBody(JSONResponse):
    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise ParamError("body", "must be a JSON object") from None
    if not isinstance(value, dict):
        raise ParamError("body", "must be a JSON object")
    return value


def _sink_and_force(body: dict[str, Any]) -> tuple[str | None, bool]:
    sink = body.get("sink")
    force = body.get("force", False)
    if sink is not None and (not isinstance(sink, str) or not sink):
        raise ParamError("sink", "must be a sink name")
    if not isinstance(force, bool):
        raise ParamError("force", "must be true or false")
    return sink, force


class Api:
    """The handlers of /console/api/ (behind the guard: errors.py answers what they raise)."""

    def __init__(self, state: ConsoleState) -> None:
        self.state = state
        self.store = state.events
        self.actions = state.actions

    def routes(self) -> list[BaseRoute]:
        post = ["POST"]
        return [
            Route("/events", self.events),
            Route("/events/count", self.count),
            Route("/events/{request_id}", self.event),
            Route("/events/{request_id}/replay", self.replay, methods=post),
            Route("/replay", self.bulk_replay, methods=post),
            Route("/stream", self.stream),
            Route("/submissions", self.submissions),
            Route("/submissions/reconcile", self.reconcile, methods=post),
            Route("/stats", self.stats),
            Route("/trends", self.trends),
            Route("/dead", self.dead),
        ]

    async def events(self, request: Request) -> Response:
        params = request.query_params
        query = event_query(params)
        limit = limit_of(params, self.state.settings.console.page_size)
        page = await self.store.find_events(query, limit=limit, cursor=params.get("cursor"))
        return JSONBody(
            {"events": [event_document(v) for v in page.events], "next_cursor": page.next_cursor}
        )

    async def count(self, request: Request) -> Response:
        return JSONBody({"count": await self.store.count_events(event_query(request.query_params))})

    async def event(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        view = await self.store.get_event(request_id)
        if view is None:
            raise ActionError(404, f"no event with request_id {request_id!r}")
        return JSONBody(event_document(view, with_payload=True) | {"headers": view.headers})

    async def replay(self, request: Request) -> Response:
        sink, force = _sink_and_force(await _json_object(request))
        request_id = request.path_params["request_id"]
        return JSONBody({"scheduled": await self.actions.replays.one(request_id, sink, force)})

    async def bulk_replay(self, request: Request) -> Response:
        body = await _json_object(request)
        sink, force = _sink_and_force(body)
        limit = limit_of(body, 0) or None
        cursor = body.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise ParamError("cursor", "must be a string")
        done = await self.actions.replays.matching(
            event_query(body), sink=sink, force=force, limit=limit, cursor=cursor
        )
        answer: dict[str, Any] = {"scheduled": done.scheduled, "events": done.events}
        if limit is not None:
            answer["next_cursor"] = done.next_cursor
        return JSONBody(answer)

    async def stream(self, _: Request) -> Response:
        queue = await self.state.feed.subscribe()
        return StreamingResponse(
            self.state.feed.stream(queue),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def submissions(self, request: Request) -> Response:
        state = submission_state(request.query_params)
        limit = limit_of(request.query_params, 100)
        found = await self.state.submissions.list_submissions(state=state, limit=limit)
        return JSONBody({"submissions": [submission_record(s) for s in found]})

    async def reconcile(self, _: Request) -> Response:
        return JSONBody(await self.actions.reconciliation.now())

    async def stats(self, _: Request) -> Response:
        return JSONBody(await last_hour_stats(self.store))

    async def trends(self, _: Request) -> Response:
        return JSONBody(trends_document(await self.state.trends.get()))

    async def dead(self, _: Request) -> Response:
        groups = await self.store.dead_groups()
        return JSONBody(
            {
                "dead": await self.store.dead_count(),
                "groups": [
                    {
                        "sink": g.sink,
                        "error": g.error,
                        "count": g.count,
                        "latest": iso(g.latest),
                        "request_ids": list(g.request_ids),
                    }
                    for g in groups
                ],
            }
        )
