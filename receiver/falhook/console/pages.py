"""The console's pages: server-rendered HTML whose forms work without JavaScript (console.js
adds live updates and progress on top)."""

from __future__ import annotations

import asyncio
import dataclasses
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from falhook.console.actions import ActionError
from falhook.console.guard import csrf_of, operator, read_form
from falhook.console.links import INLINE_TYPES, disk_copy
from falhook.console.overview import last_hour_stats, trend_charts
from falhook.console.params import (
    FAL_STATUSES,
    STATES,
    event_query,
    filters_of,
    limit_of,
    submission_state,
)
from falhook.console.paths import base_of
from falhook.console.render import page, query_string
from falhook.console.state import ConsoleState
from falhook.console.views import detail, prompt_of, row
from falhook.store.states import ATTEMPT_OUTCOMES, SUBMISSION_STATES

ZIP_ENTRIES_SHOWN = 200


def _flash(request: Request) -> str | None:
    return request.query_params.get("flash") or None


def _form_flag(form: dict[str, str], name: str) -> bool:
    return form.get(name) in ("1", "on", "true")


def _zip_entries(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()[:ZIP_ENTRIES_SHOWN]
    except (OSError, zipfile.BadZipFile):
        return None


class Pages:
    """The handlers of the console's pages (behind the guard: errors.py answers what they
    raise, as a page)."""

    def __init__(self, state: ConsoleState) -> None:
        self.state = state
        self.store = state.events
        self.actions = state.actions

    def routes(self) -> list[BaseRoute]:
        post = ["POST"]
        return [
            Route("/", self.events),
            Route("/fragments/rows", self.rows),
            Route("/events/{request_id}", self.event),
            Route("/events/{request_id}/replay", self.replay, methods=post),
            Route("/replay", self.bulk_form),
            Route("/replay", self.bulk_replay, methods=post),
            Route("/actions", self.actions_page),
            Route("/submissions", self.submissions),
            Route("/submissions/reconcile", self.reconcile, methods=post),
            Route("/overview", self.overview),
            Route("/files/{request_id}", self.file),
        ]

    async def _render(
        self, request: Request, name: str, nav: str, status: int = 200, **ctx: Any
    ) -> Response:
        shared = {
            "base": base_of(request),
            "csrf": csrf_of(request),
            "auth": operator(request).auth,
            "nav": nav,
            "dead": await self.state.dead_count(),
            "flash": _flash(request),
        }
        return page(name, shared | ctx, status)

    async def events(self, request: Request) -> Response:
        params = request.query_params
        filters = filters_of(params)
        cursor = params.get("cursor") or None
        limit = limit_of(params, self.state.settings.console.page_size)
        listing = await self.store.find_events(event_query(params), limit=limit, cursor=cursor)
        return await self._render(
            request,
            "events.html",
            "events",
            rows=[row(v, self.state.roots, base_of(request)) for v in listing.events],
            filters=filters,
            cursor=cursor,
            next_cursor=listing.next_cursor,
            live=cursor is None,
            states=STATES,
            fal_statuses=FAL_STATUSES,
            routes=sorted(self.state.settings.routes),
        )

    async def rows(self, request: Request) -> Response:
        """Rows of the given events (`ids`) that match the list's filters, or the newest
        page of them: the live view's fragments, so new events show only where they
        belong."""
        params = request.query_params
        query = event_query(params)
        if "ids" in params:  # else the newest page: a tab catching up after (re)connecting
            ids = tuple(i for i in params["ids"].split(",") if i)[:100]
            query = dataclasses.replace(query, request_ids=ids)
        limit = self.state.settings.console.page_size
        listing = await self.store.find_events(query, limit=100 if "ids" in params else limit)
        base = base_of(request)
        rows = [row(v, self.state.roots, base) for v in listing.events]
        return page("_rows.html", {"rows": rows, "base": base})

    async def event(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        view = await self.store.get_event(request_id)
        if view is None:
            raise ActionError(404, f"No event {request_id}.")
        parts = detail(view, self.state.roots, base_of(request))
        for file in parts["files"]:
            if file["kind"] == "zip":
                file["entries"] = await self._entries(view, str(file.get("path")))
        return await self._render(request, "event.html", "events", **parts)

    async def _entries(self, view: Any, path: str) -> list[str] | None:
        for sink in self.state.roots:
            found = disk_copy(view, sink, path, self.state.roots)
            if found is not None:
                return await asyncio.to_thread(_zip_entries, found)
        return None

    async def replay(self, request: Request) -> Response:
        form = await read_form(request)
        request_id = request.path_params["request_id"]
        sink = str(form.get("sink") or "") or None
        count = await self.actions.replays.one(request_id, sink, _form_flag(form, "force"))
        flash = f"Scheduled {count} deliver{'y' if count == 1 else 'ies'} again."
        where = f"{base_of(request)}/events/{quote(request_id, safe='')}"
        target = where + query_string({}, flash=flash)
        return RedirectResponse(target, status_code=303)

    async def bulk_form(self, request: Request) -> Response:
        filters = filters_of(request.query_params)
        count = await self.store.count_events(event_query(filters))
        sinks = sorted({s for r in self.state.settings.routes.values() for s in r.sinks})
        return await self._render(
            request, "replay.html", "events", filters=filters, count=count, sinks=sinks
        )

    async def bulk_replay(self, request: Request) -> Response:
        form = await read_form(request)
        done = await self.actions.replays.matching(
            event_query(form),
            sink=form.get("sink") or None,
            force=_form_flag(form, "force"),
        )
        flash = f"Scheduled {done.scheduled} deliveries of {done.events} events again."
        target = f"{base_of(request)}/" + query_string(filters_of(form), flash=flash)
        return RedirectResponse(target, status_code=303)

    async def actions_page(self, request: Request) -> Response:
        groups = await self.store.dead_groups()
        return await self._render(request, "actions.html", "actions", groups=groups)

    async def submissions(self, request: Request) -> Response:
        state = submission_state(request.query_params)
        found = await self.state.submissions.list_submissions(state=state, limit=200)
        shown = [s.__dict__ | {"prompt": prompt_of(s.input)} for s in found]
        return await self._render(
            request,
            "submissions.html",
            "submissions",
            submissions=shown,
            state=state,
            states=SUBMISSION_STATES,
        )

    async def reconcile(self, request: Request) -> Response:
        counts = await self.actions.reconciliation.now()
        flash = ", ".join(f"{k} {v}" for k, v in counts.items())
        target = f"{base_of(request)}/submissions" + query_string({}, flash=flash)
        return RedirectResponse(target, status_code=303)

    async def overview(self, request: Request) -> Response:
        stats = await last_hour_stats(self.store)
        charts = trend_charts(await self.state.trends.get())
        return await self._render(
            request,
            "overview.html",
            "overview",
            stats=stats,
            outcomes=ATTEMPT_OUTCOMES,
            charts=charts,
        )

    async def file(self, request: Request) -> Response:
        """A disk sink's copy of a file, served only from inside that sink's root; a type a
        browser could run (HTML, SVG, ...) is a download in a sandbox, never a page."""
        request_id = request.path_params["request_id"]
        sink = request.query_params.get("sink", "")
        path = request.query_params.get("path", "")
        view = await self.store.get_event(request_id)
        found = disk_copy(view, sink, path, self.state.roots) if view is not None else None
        if view is None or found is None:
            return Response("no such file", status_code=404, media_type="text/plain")
        recorded = next((f for f in view.files if f.get("path") == path), {})
        content_type = str(recorded.get("content_type") or "").split(";")[0].strip().lower()
        inline = content_type in INLINE_TYPES
        return FileResponse(
            found,
            media_type=content_type if inline else "application/octet-stream",
            content_disposition_type="inline" if inline else "attachment",
            filename=found.name,
            headers={
                "Content-Security-Policy": "default-src 'none'; sandbox",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, max-age=300",
            },
        )

    async def message(self, request: Request, status: int, text: str) -> Response:
        """A problem as a page of the console (errors.py's handlers call it)."""
        title = {400: "Bad request", 404: "Not found", 409: "Cannot do that now"}
        return await self._render(
            request, "message.html", "", status=status, title=title.get(status, "Problem"),
            text=text,
        )  # fmt: skip
