"""The delivery worker: the whole life of a delivery in one place.

    lease due deliveries ─▶ download each File of the event once ─▶ run the route's sinks
    (those with `after` once their prerequisites delivered) ─▶ record delivered │ retry │ dead

Leases are kept alive by a heartbeat while work is in flight (a 1 GiB download outlives
`lease_seconds`); a crashed worker's leases expire and another worker takes them. On shutdown
the worker stops leasing, lets in-flight work finish for `shutdown_grace` seconds, then
cancels what is left and gives those leases back without counting an attempt.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from falhook.config import Settings
from falhook.delivery import media, ordering
from falhook.delivery.files import (
    OFF_LOOP_BYTES,
    download_all,
    event_info,
    off_loop,
    refs_of,
    with_downloads,
)
from falhook.delivery.retry import RetryPolicy
from falhook.downloads.fal_media import FalMediaSigner
from falhook.downloads.fetch import Fetcher, FetchError
from falhook.metrics import Metrics
from falhook.sinks.base import DeliveryContext, EventInfo, LocalFile, Permanent, Retryable, Sink
from falhook.sinks.naming import id_component
from falhook.store.models import EventView, Finish, Job, LeasedDelivery, utcnow
from falhook.store.roles import DeliveryQueue

log = structlog.get_logger("falhook.worker")
FINISHED = ("delivered", "dead", "skipped")
PRUNE_EVERY = 3600.0  # seconds between two prunings of old history


@dataclass
class _Attempt:
    """One leased delivery's fate within a job."""

    lease: LeasedDelivery
    outcome: str | None = None  # "delivered" | "retry" | "dead" once decided
    error: str | None = None
    retry_after: float | None = None
    output: dict[str, Any] | None = None
    waits_for: list[str] | None = None  # not tried: its `after` sinks have not delivered
    tried: bool = True  # False: decided without calling the sink (no attempt is counted)
    recorded: bool = False  # its Finish is in the store
    duration_ms: int | None = None  # how long the attempt took, for the history


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: DeliveryQueue,
        sinks: Mapping[str, Sink],
        *,
        fetcher: Fetcher | None = None,
        metrics: Metrics | None = None,
        owner: str | None = None,
        signer: FalMediaSigner | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sinks = dict(sinks)
        self.after = {name: s.after for name, s in settings.sinks.items()}
        d = settings.delivery
        self.policy = RetryPolicy(d.max_attempts, d.backoff_initial, d.backoff_max)
        dl = settings.downloads
        self.fetcher = fetcher or Fetcher(
            max_file_bytes=dl.max_file_bytes,
            timeout=dl.timeout,
            allow_private_hosts=dl.allow_private_hosts,
            deadline=dl.deadline,
            min_rate=dl.min_rate,
            rate_window=dl.rate_window,
        )
        # Private fal files are read through signed URLs, with FAL_KEY from the environment.
        self.signer = signer or FalMediaSigner(
            dl.fal_sign_url, dl.fal_media_hosts, os.environ.get("FAL_KEY")
        )
        self.metrics = metrics or Metrics()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.spool = settings.spool_path
        self._held: dict[str, tuple[str, str]] = {}  # token -> (request_id, sink)
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Lease and deliver until `stop` is set, then shut down gracefully."""
        d = self.settings.delivery
        heartbeat = asyncio.create_task(self._heartbeat(), name="falhook-heartbeat")
        log.info("worker started", owner=self.owner, concurrency=d.concurrency)
        try:
            while not stop.is_set():
                free = d.concurrency - len(self._tasks)
                leased = 0
                if free > 0:
                    leased = await self._lease_and_start(free)
                if leased == 0 or len(self._tasks) >= d.concurrency:
                    await self._idle(stop, d.poll_interval)
        finally:
            await self._drain(d.shutdown_grace)
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            log.info("worker stopped", owner=self.owner)

    async def run_once(self, limit: int | None = None) -> int:
        """Lease one batch and deliver it all before returning (CLI `--now`, serverless
        drains). Returns how many deliveries were attempted."""
        jobs = await self._lease(limit or self.settings.delivery.concurrency)
        await asyncio.gather(*(self.process(job) for job in jobs))
        return sum(len(job.deliveries) for job in jobs)

    async def deliver_now(self, request_id: str, *, deadline: float) -> list[str]:
        """Run this event's unfinished deliveries now, due or not, within `deadline` seconds
        (serverless inline mode: fal's retry is the schedule). The sinks still not finished
        (delivered or dead) afterwards; dead ones count as finished, since fal's retries
        cannot help them and `events replay` can."""
        try:
            async with asyncio.timeout(deadline):
                jobs = await self.store.lease(
                    owner=self.owner,
                    limit=max(1, len(self.sinks)),
                    lease_seconds=max(deadline * 2, self.settings.delivery.lease_seconds),
                    request_id=request_id,
                )
                for job in jobs:
                    await self.process(job)  # a timeout cancels it: leases are handed back
        except TimeoutError:
            log.warning("inline delivery ran out of time", request_id=request_id, deadline=deadline)
        view = await self.store.get_event(request_id)
        if view is None:
            return ["(event missing)"]
        return sorted(k for k, d in view.deliveries.items() if d.state not in FINISHED)

    async def _lease(self, limit: int) -> list[Job]:
        try:
            return await self.store.lease(
                owner=self.owner, limit=limit, lease_seconds=self.settings.delivery.lease_seconds
            )
        except Exception as exc:  # the store may be briefly away; never kill the loop
            log.warning("lease failed", error=f"{type(exc).__name__}: {exc}")
            return []

    async def _lease_and_start(self, free: int) -> int:
        jobs = await self._lease(free)
        for job in jobs:
            task = asyncio.create_task(self.process(job), name=f"deliver-{job.event.request_id}")
            self._tasks.add(task)
            task.add_done_callback(self._job_done)
        return sum(len(job.deliveries) for job in jobs)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # process() ends every attempt itself; this only keeps a bug from going unseen.
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", task=task.get_name(), error=repr(task.exception()))

    async def _idle(self, stop: asyncio.Event, poll: float) -> None:
        """Wait for new work, a free slot, or stop, whichever comes first."""
        waiters: list[asyncio.Task[Any]] = [
            asyncio.create_task(self.store.wait_for_work(poll)),
            asyncio.create_task(stop.wait()),
        ]
        if self._tasks:
            waiters.append(
                asyncio.create_task(
                    asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
                )
            )
        try:
            await asyncio.wait(waiters, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _heartbeat(self) -> None:
        lease = self.settings.delivery.lease_seconds
        pruned = 0.0
        while True:
            await asyncio.sleep(max(0.5, lease / 3))
            if self._held:
                try:
                    await self.store.extend(list(self._held), lease)
                except Exception as exc:
                    log.warning("lease extension failed", error=f"{type(exc).__name__}: {exc}")
            if time.monotonic() - pruned > PRUNE_EVERY:
                pruned = time.monotonic()
                await self._prune_history()

    async def _prune_history(self) -> None:
        """Attempts older than [store].history_days leave the history (bounded growth;
        every worker may do it, deleting twice is harmless)."""
        cutoff = utcnow() - timedelta(days=self.settings.store.history_days)
        try:
            removed = await self.store.prune_history(cutoff)
        except Exception as exc:
            log.warning("history pruning failed", error=f"{type(exc).__name__}: {exc}")
            return
        if removed:
            log.info("history pruned", attempts=removed, older_than=cutoff.isoformat())

    async def _drain(self, grace: float) -> None:
        if not self._tasks:
            return
        log.info("finishing in-flight deliveries", count=len(self._tasks), grace=grace)
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # --- one job -----------------------------------------------------------------------------

    async def process(self, job: Job) -> None:
        event = job.event
        attempts = {d.sink: _Attempt(d) for d in job.deliveries}
        for d in job.deliveries:
            self._held[d.token] = (event.request_id, d.sink)
        spool_dir = self.spool / f"{id_component(event.request_id)}.{secrets.token_hex(4)}"
        with structlog.contextvars.bound_contextvars(
            request_id=event.request_id, route=event.route
        ):
            try:
                await self._deliver_job(event, attempts, spool_dir)
            except asyncio.CancelledError:
                await self._give_back(event, attempts)
                raise
            except Exception as exc:
                # Whatever broke, the attempt ends here with its cause, never as a lease
                # that expires with nobody knowing why.
                log.exception("delivery attempt failed")
                await self._fail_unrecorded(event, attempts, exc)
            finally:
                # Unlinking a 1 GiB spool file takes a while: not on the event loop.
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, spool_dir, True))
                for d in job.deliveries:
                    self._held.pop(d.token, None)

    async def _deliver_job(
        self, event: EventView, attempts: dict[str, _Attempt], spool_dir: Path
    ) -> None:
        self._settle_before_download(event, attempts)
        runnable = [s for s, a in attempts.items() if a.outcome is None]
        if not runnable:
            return await self._record_all(event, attempts)
        big = len(event.body) > OFF_LOOP_BYTES  # thousands of Files: parsed off the loop
        refs, problems = await off_loop(big, refs_of, event)
        # Written back to disk as it arrives only when a sink of this job keeps it.
        keep = any(self.sinks[s].keeps_files for s in runnable)
        started = time.perf_counter()
        try:
            local = await download_all(
                self.fetcher, self.metrics, refs, spool_dir, keep=keep, signer=self.signer
            )
        except FetchError as exc:
            error = Retryable(exc.message) if exc.retryable else Permanent(exc.message)
            for s in runnable:
                self._decide(attempts[s], error)
                attempts[s].duration_ms = round((time.perf_counter() - started) * 1000)
            return await self._record_all(event, attempts)
        if local:
            local = await media.enrich(local, spool_dir)  # falhook[media]: video facts, posters
            event = await self._record_files(event, local)
        info = await off_loop(big, event_info, event, event.files, problems)
        outputs: dict[str, dict[str, Any]] = {
            name: d.output or {} for name, d in event.deliveries.items() if d.state == "delivered"
        }
        await self._run_sinks(event, info, local, attempts, outputs)
        await self._record_all(event, attempts)

    def _settle_before_download(self, event: EventView, attempts: dict[str, _Attempt]) -> None:
        """Decide, without calling them, the sinks that cannot run in this job."""
        for name, a in attempts.items():
            if name not in self.sinks:  # removed from the config since the event arrived
                self._decide(a, Permanent(f"sink {name!r} is not configured"))
        # Prerequisites neither delivered nor part of this job: wait (no download for this
        # sink alone, no attempt spent), or go dead with a dead prerequisite.
        for name, a in attempts.items():
            if a.outcome is None:
                outside = [d for d in self.after.get(name, ()) if d not in attempts]
                delivered = [
                    d for d in outside if self._dep_state(event, attempts, d) == "delivered"
                ]
                deps = ordering.unmet(outside, delivered)
                if deps:
                    self._wait_or_fail(event, attempts, name, deps)
        for a in attempts.values():
            # Taken over from workers that died mid-attempt max_attempts times: this event
            # kills whoever tries it, so it is dead-lettered rather than tried again.
            if a.outcome is None and a.lease.attempts >= self.policy.max_attempts:
                stored = event.deliveries.get(a.lease.sink)
                last = stored.last_error if stored else None
                a.outcome, a.tried = "dead", False
                a.error = f"no attempts left ({a.lease.attempts} made); last: {last}"

    async def _run_sinks(
        self,
        event: EventView,
        info: EventInfo,
        files: list[LocalFile],
        attempts: dict[str, _Attempt],
        outputs: dict[str, dict[str, Any]],
    ) -> None:
        """Run sinks in waves: each wave holds those whose prerequisites have delivered."""
        waiting = {s for s, a in attempts.items() if a.outcome is None}
        while waiting:
            wave, blocked = ordering.next_wave(waiting, self.after, outputs)
            if not wave:
                for s in blocked:
                    deps = ordering.unmet(self.after.get(s, ()), outputs)
                    self._wait_or_fail(event, attempts, s, deps)
                return
            ordered = sorted(wave)
            results = await asyncio.gather(
                *(self._call_sink(s, attempts[s], event, info, files, outputs) for s in ordered)
            )
            for s, ok in zip(ordered, results, strict=True):
                if ok:
                    outputs[s] = attempts[s].output or {}
            waiting = blocked

    def _wait_or_fail(
        self, event: EventView, attempts: dict[str, _Attempt], name: str, deps: list[str]
    ) -> None:
        """A sink whose `after` sinks have not delivered: dead if one of them is dead,
        otherwise rescheduled for when they are next due, without counting an attempt."""
        states = [self._dep_state(event, attempts, d) for d in deps]
        if ordering.blocked_verdict(states) == "dead":
            self._decide(attempts[name], Permanent(f"runs after {deps}, which is dead"))
            return
        a = attempts[name]
        a.outcome, a.waits_for, a.tried = "retry", deps, False
        a.error = f"waiting for {deps} to deliver"

    def _dep_state(self, event: EventView, attempts: dict[str, _Attempt], dep: str) -> str:
        if dep in attempts and attempts[dep].outcome is not None:
            return attempts[dep].outcome or "retry"
        d = event.deliveries.get(dep)
        return d.state if d else "dead"

    async def _call_sink(
        self,
        name: str,
        attempt: _Attempt,
        event: EventView,
        info: EventInfo,
        files: list[LocalFile],
        outputs: dict[str, dict[str, Any]],
    ) -> bool:
        sink_log = log.bind(sink=name)
        previous = event.deliveries.get(name)
        ctx = DeliveryContext(
            event=info,
            files=files,
            sink=name,
            attempt=attempt.lease.attempts + 1,
            log=sink_log,
            outputs={k: outputs[k] for k in self.after.get(name, ()) if k in outputs},
            previous=previous.output if previous else None,
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.delivery.attempt_timeout):
                output = await self.sinks[name].deliver(ctx)
            sink_log.debug("sink finished", seconds=round(time.perf_counter() - started, 3))
        except (Retryable, Permanent) as exc:
            self._decide(attempt, exc)
            return False
        except TimeoutError:
            self._decide(attempt, Retryable("attempt timed out"))
            return False
        except Exception as exc:
            # A bug in a sink must not lose the event: retry it, then dead-letter it.
            sink_log.exception("sink raised an unexpected error")
            self._decide(attempt, Retryable(f"{type(exc).__name__}: {exc}"))
            return False
        finally:
            attempt.duration_ms = round((time.perf_counter() - started) * 1000)
        attempt.outcome, attempt.output = "delivered", output if isinstance(output, dict) else None
        return True

    def _decide(self, attempt: _Attempt, exc: Retryable | Permanent) -> None:
        tried = attempt.lease.attempts + 1
        verdict = self.policy.decide(tried, permanent=isinstance(exc, Permanent))
        attempt.outcome = verdict
        attempt.error = str(exc) or type(exc).__name__
        attempt.retry_after = exc.retry_after if isinstance(exc, Retryable) else None

    # --- recording ---------------------------------------------------------------------------

    async def _record_all(self, event: EventView, attempts: dict[str, _Attempt]) -> None:
        due: dict[str, datetime] = {}  # when each sink retried in this job is next due
        waiting = {s for s, a in attempts.items() if a.waits_for is not None}
        for sink in ordering.waits_last(attempts, waiting):
            a = attempts[sink]
            if a.recorded:
                continue
            outcome = a.outcome or "retry"
            next_at = None
            if a.waits_for is not None:
                next_at = self._when_due(event, a.waits_for, due)
            elif outcome == "retry":
                delay = self.policy.delay(a.lease.attempts + 1, retry_after=a.retry_after)
                next_at = utcnow() + timedelta(seconds=delay)
                due[sink] = next_at
            finish = Finish(
                request_id=event.request_id,
                sink=sink,
                token=a.lease.token,
                outcome=outcome,  # type: ignore[arg-type]
                error=a.error,
                next_attempt_at=next_at,
                output=a.output,
                counted=a.tried,
                duration_ms=a.duration_ms,
            )
            held = await self.store.finish(finish)
            a.recorded = True
            label = "waiting" if sink in waiting else outcome
            self.metrics.deliveries.labels(sink=sink, outcome=label).inc()
            level = "info" if outcome == "delivered" or sink in waiting else "warning"
            getattr(log, level)(
                "delivery " + label,
                sink=sink,
                attempt=a.lease.attempts + a.tried,
                error=a.error,
                retry_at=next_at.isoformat() if next_at else None,
                lease_lost=not held or None,
            )

    def _when_due(self, event: EventView, deps: list[str], due: dict[str, datetime]) -> datetime:
        """The latest next attempt among deps; the first backoff step when one is unknown
        (leased by another worker right now, say)."""
        fallback = utcnow() + timedelta(seconds=self.policy.delay(1))
        times = []
        for dep in deps:
            stored = event.deliveries.get(dep)
            when = due.get(dep) or (stored.next_attempt_at if stored else None)
            times.append(when if when is not None and when > utcnow() else fallback)
        return max(times)

    async def _fail_unrecorded(
        self, event: EventView, attempts: dict[str, _Attempt], exc: Exception
    ) -> None:
        cause = Retryable(f"{type(exc).__name__}: {exc}")
        for a in attempts.values():
            if a.outcome is None:  # what was decided (a sink that delivered) stays decided
                self._decide(a, cause)
        try:
            await self._record_all(event, attempts)
        except Exception:  # the store itself: the lease expires and is retaken
            log.exception("could not record a failed attempt")

    async def _give_back(self, event: EventView, attempts: dict[str, _Attempt]) -> None:
        for sink, a in attempts.items():
            try:
                await asyncio.shield(self.store.release(event.request_id, sink, a.lease.token))
            except Exception as exc:  # the lease will expire and be retaken anyway
                log.warning("release failed", sink=sink, error=str(exc))

    async def _record_files(self, event: EventView, local: list[LocalFile]) -> EventView:
        """Store the files' sizes and digests (informational: delivery goes on without)."""
        files = media.annotate(with_downloads(event.files, local), local)
        try:
            await self.store.record_files(event.request_id, files)
        except Exception as exc:
            log.warning("could not record file digests", error=str(exc))
        return replace(event, files=files)

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        await self.signer.aclose()
