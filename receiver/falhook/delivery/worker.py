"""The delivery worker: a loop that leases due deliveries and runs a job for each event.

    lease up to `batch_size` due deliveries (one store call, grouped by event)
      ─▶ a JobRun per event (delivery/job.py), at most `concurrency` at once
      ─▶ wait for new work (a notification, or the next poll), a free slot, or stop

Beside the loop, each in a supervised task of its own (delivery/upkeep.py): lease extension
(a 1 GiB download outlives `lease_seconds`), history pruning, the spool sweep. Between the jobs
and the outside world, the batch path (delivery/batches.py): events bound for a sink that takes
batches go in one call, and finished jobs' outcomes in one commit.

A crashed worker's leases expire and another worker takes them. On shutdown the worker stops
leasing, lets the jobs in flight finish for `shutdown_grace` seconds, then cancels what is left,
and those leases go back without counting an attempt.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from falhook.config import Settings
from falhook.delivery import upkeep
from falhook.delivery.batches import Recorder, SinkBatcher
from falhook.delivery.job import FINISHED, JobParts, JobRun
from falhook.delivery.retry import RetryPolicy
from falhook.delivery.routing import Router
from falhook.downloads.files import Downloader
from falhook.logs import LineBatch
from falhook.metrics import Metrics
from falhook.store.models import Job
from falhook.store.roles import DeliveryQueue
from falhook.telemetry import Telemetry
from falhook_sinks.base import Sink

log = structlog.get_logger("falhook.worker")
EVENT_DELIVERIES = 1000  # one event's deliveries leased at once, at most: all of them


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: DeliveryQueue,
        sinks: Mapping[str, Sink],
        *,
        downloader: Downloader,
        metrics: Metrics | None = None,
        owner: str | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        d = settings.delivery
        self.settings = settings
        self.store = store
        self.sinks = dict(sinks)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.holdings = upkeep.Holdings()
        self.parts = JobParts(
            settings=settings,
            sinks=self.sinks,
            batchers={
                name: SinkBatcher(
                    name, sink, size=d.batch_size, linger=d.linger, timeout=d.attempt_timeout
                )
                for name, sink in self.sinks.items()
                if sink.takes_batches
            },
            policy=RetryPolicy(d.max_attempts, d.backoff_initial, d.backoff_max),
            routing=Router(settings),
            downloader=downloader,
            recorder=Recorder(store, size=d.batch_size),
            holdings=self.holdings,
            telemetry=telemetry or Telemetry(),
            metrics=metrics or Metrics(),
            spool=settings.spool_path,
            trail=LineBatch(log, "deliveries recorded"),
        )
        self._jobs: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Lease and deliver until `stop` is set, then shut down gracefully."""
        d = self.settings.delivery
        log.info("worker started", owner=self.owner, concurrency=d.concurrency)
        async with upkeep.running(upkeep.side_tasks(self.settings, self.store, self.holdings)):
            try:
                while not stop.is_set():
                    free = d.concurrency - len(self._jobs)
                    leased = 0
                    if free > 0:
                        leased = self._start(await self._lease(min(free, d.batch_size)))
                    if leased == 0 or len(self._jobs) >= d.concurrency:
                        await self._idle(stop, d.poll_interval)
            finally:
                await self._drain(d.shutdown_grace)
                await self.parts.recorder.flush()
                self.parts.trail.flush()
        log.info("worker stopped", owner=self.owner)

    async def run_once(self, limit: int | None = None) -> int:
        """Lease one batch and deliver it all before returning (CLI `--now`, serverless
        drains). Returns how many deliveries were attempted."""
        d = self.settings.delivery
        jobs = await self._lease(limit or min(d.concurrency, d.batch_size))
        await asyncio.gather(*(JobRun(job, self.parts).run() for job in jobs))
        self.parts.trail.flush()  # the caller may end the loop (a serverless drain)
        return sum(len(job.deliveries) for job in jobs)

    async def deliver_now(self, request_id: str, *, deadline: float) -> list[str]:
        """Run this event's unfinished deliveries now, due or not, within `deadline` seconds
        (serverless inline mode: fal's retry is the schedule). The sinks still not finished
        (delivered or dead) afterwards; dead ones count as finished, since fal's retries
        cannot help them and `events replay` can."""
        try:
            async with asyncio.timeout(deadline):
                # A timeout cancels the job: its leases are handed back.
                lease = max(deadline * 2, self.settings.delivery.lease_seconds)
                await self.run_event(request_id, lease_seconds=lease)
        except TimeoutError:
            log.warning("inline delivery ran out of time", request_id=request_id, deadline=deadline)
        self.parts.trail.flush()  # the caller may end the loop (serverless inline mode)
        view = await self.store.get_event(request_id)
        if view is None:
            return ["(event missing)"]
        return sorted(k for k, d in view.deliveries.items() if d.state not in FINISHED)

    async def aclose(self) -> None:
        """Wait for the outcomes still being recorded and the sink batches still in flight
        (a job cancelled at shutdown may have left them)."""
        await self.parts.recorder.flush()
        await asyncio.gather(*(b.aclose() for b in self.parts.batchers.values()))
        self.parts.trail.flush()

    async def run_event(
        self,
        request_id: str,
        *,
        sinks: Sequence[str] | None = None,
        lease_seconds: float | None = None,
    ) -> int:
        """Lease this event's pending or retrying deliveries (only `sinks`' when given),
        due or not, and deliver them before returning (`events replay --now`, inline
        mode). How many were attempted: 0 when another worker holds them."""
        jobs = await self.store.lease(
            owner=self.owner,
            limit=EVENT_DELIVERIES,
            lease_seconds=lease_seconds or self.settings.delivery.lease_seconds,
            request_id=request_id,
            sinks=sinks,
        )
        for job in jobs:
            await JobRun(job, self.parts).run()
        return sum(len(job.deliveries) for job in jobs)

    # --- the loop's steps ----------------------------------------------------------------------

    async def _lease(self, limit: int) -> list[Job]:
        try:
            return await self.store.lease(
                owner=self.owner, limit=limit, lease_seconds=self.settings.delivery.lease_seconds
            )
        except Exception as exc:  # the store may be briefly away; never kill the loop
            log.warning("lease failed", error=f"{type(exc).__name__}: {exc}")
            return []

    def _start(self, jobs: list[Job]) -> int:
        """A task per job; how many deliveries they hold."""
        for job in jobs:
            run = JobRun(job, self.parts).run()
            task = asyncio.create_task(run, name=f"deliver-{job.event.request_id}")
            self._jobs.add(task)
            task.add_done_callback(self._job_done)
        return sum(len(job.deliveries) for job in jobs)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        # A job ends every attempt itself; this only keeps a bug from going unseen.
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", task=task.get_name(), error=repr(task.exception()))

    async def _idle(self, stop: asyncio.Event, poll: float) -> None:
        """Wait for new work, a free slot, or stop, whichever comes first."""
        waiters: list[asyncio.Task[Any]] = [
            asyncio.create_task(self.store.wait_for_work(poll)),
            asyncio.create_task(stop.wait()),
        ]
        if self._jobs:
            waiters.append(
                asyncio.create_task(
                    asyncio.wait(set(self._jobs), return_when=asyncio.FIRST_COMPLETED)
                )
            )
        try:
            await asyncio.wait(waiters, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _drain(self, grace: float) -> None:
        if not self._jobs:
            return
        log.info("finishing in-flight deliveries", count=len(self._jobs), grace=grace)
        _, pending = await asyncio.wait(set(self._jobs), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
