"""Reconciliation: a submission whose webhook has not come by its deadline is looked up on
fal's queue (status, then result). A finished one is taken in as an event marked as recovered
by polling (source "poll"), so its result is delivered even when fal's webhook retries ran
out while falhook was down. A request fal does not know is marked `lost`.

    reconciler = Reconciler(store, FalQueue(...), settings)
    counts = await reconciler.run_once()     # {"checked": 3, "recovered": 1, ...}
    await reconciler.run(stop_event)          # every `interval` seconds until stop is set
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from falhook.config import ReconcileSettings, Settings
from falhook.fal.queue import FalQueue, QueueError, queue_urls
from falhook.intake.envelope import parse_envelope
from falhook.intake.events import new_event
from falhook.progress import Progress
from falhook.store.models import SubmissionView, utcnow
from falhook.store.roles import IntakeStore, SubmissionStore

log = structlog.get_logger("falhook.reconcile")


class ReconcileStore(IntakeStore, SubmissionStore, Protocol):
    """What reconciliation needs: submissions to look up, and intake for what it finds."""


OUTCOMES = ("checked", "pending", "recovered", "completed", "lost", "errors")
# fal keeps a result of a request made with `X-Fal-Store-IO: 0` for 6 minutes when it is
# 10 KB or more: a first look at 4 minutes leaves a pass (interval 60 s) to spare.
STORE_IO_OFF_FIRST_LOOK = 240.0


class Reconciler:
    def __init__(
        self,
        store: ReconcileStore,
        queue: FalQueue,
        settings: Settings,
        reconcile: ReconcileSettings | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.queue = queue
        self.settings = settings
        self.config = reconcile or settings.reconcile
        self._clock = clock

    @property
    def first_look(self) -> float:
        """Seconds after submit before a missing webhook is looked up. Submitted with payload
        storage off (`[submit] store_io = false`), fal keeps a result only about an hour, 6
        minutes when it is 10 KB or more: the first look then comes within that window."""
        if self.settings.submit.store_io:
            return self.config.deadline
        return min(self.config.deadline, STORE_IO_OFF_FIRST_LOOK)

    async def run_once(self, progress: Progress | None = None) -> dict[str, int]:
        """One pass over overdue submissions; counts by outcome."""
        counts = dict.fromkeys(OUTCOMES, 0)
        older_than = self._clock() - timedelta(seconds=self.first_look)
        due = await self.store.overdue_submissions(older_than=older_than, limit=self.config.batch)
        for sub in due:
            if progress is not None:
                progress.update(counts["checked"], len(due))
            counts["checked"] += 1
            try:
                outcome = await self._check(sub)
            except QueueError as exc:
                # Network trouble or an unexpected answer: leave it pending, try next pass.
                log.warning("reconcile_failed", request_id=sub.request_id, error=str(exc))
                await self.store.update_submission(sub.request_id, state="pending", detail=str(exc))
                outcome = "errors"
            counts[outcome] += 1
        if progress is not None and due:
            progress.update(counts["checked"], len(due))
        if counts["checked"]:
            log.info("reconciled", **counts)
        return counts

    async def run(self, stop: asyncio.Event) -> None:
        """Passes every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # a store hiccup must not end the loop
                log.error("reconcile_pass_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.interval)

    async def _check(self, sub: SubmissionView) -> str:
        fallback = queue_urls(self.queue.queue_url, sub.endpoint, sub.request_id)
        status = await self.queue.status(sub.status_url or fallback.status_url)
        if status.status == "NOT_FOUND":
            await self._lost(sub, "fal's queue does not know this request")
            return "lost"
        if not status.done:
            detail = f"{status.status} at fal (no webhook yet)"
            await self.store.update_submission(sub.request_id, state="pending", detail=detail)
            return "pending"
        route = self.settings.routes.get(sub.route)
        if route is None:
            await self._lost(sub, f"completed, but route {sub.route!r} is not configured here")
            return "lost"
        result = await self.queue.result(sub.response_url or fallback.response_url)
        body = _envelope_body(sub.request_id, status.data, result.ok, result.payload)
        event = new_event(
            parse_envelope(body),
            route=sub.route,
            sinks=route.sinks,
            body=body,
            headers={},  # nothing fal signed: the event came from polling
            source="poll",
        )
        if await self.store.accept(event):
            log.info("recovered_by_polling", request_id=sub.request_id, route=sub.route)
            return "recovered"
        return "completed"  # the webhook came while we were looking

    async def _lost(self, sub: SubmissionView, detail: str) -> None:
        log.warning("submission_lost", request_id=sub.request_id, detail=detail)
        await self.store.update_submission(sub.request_id, state="lost", detail=detail)


def _envelope_body(request_id: str, status: dict[str, Any], ok: bool, payload: Any) -> bytes:
    """The webhook fal would have sent, from what its queue tells us."""
    doc: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK" if ok else "ERROR",
        "payload": payload,
    }
    if not ok:
        doc["error"] = status.get("error") or "the request failed at fal"
    return json.dumps(doc).encode()
