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
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from falhook.config import Settings
from falhook.delivery import media, ordering
from falhook.delivery.arrivals import Arrival
from falhook.delivery.files import described_all, event_info, refs_of, with_downloads
from falhook.delivery.retry import RetryPolicy
from falhook.delivery.routing import Router
from falhook.delivery.traced import TracedFetcher
from falhook.delivery.transfer import JobFiles
from falhook.downloads.cache import EventSpool, sweep
from falhook.downloads.fal_media import FalMediaSigner
from falhook.downloads.fetch import Fetcher, FetchError
from falhook.downloads.ranged import RangePlan
from falhook.intake.envelope import FileRef
from falhook.intake.offload import OFF_LOOP_BYTES, off_loop
from falhook.metrics import Metrics
from falhook.store.models import (
    FINISHED_STATE,
    EventView,
    Finish,
    Job,
    LeasedDelivery,
    NewEvent,
    utcnow,
)
from falhook.store.roles import DeliveryQueue
from falhook.store.states import DONE_STATES
from falhook.telemetry import Telemetry
from falhook_sinks.base import DeliveryContext, EventInfo, LocalFile, Permanent, Retryable, Sink

log = structlog.get_logger("falhook.worker")
FINISHED = DONE_STATES | {"dead"}  # nothing more will happen to these deliveries
PRUNE_EVERY = 3600.0  # seconds between two prunings of old history
EVENT_DELIVERIES = 1000  # one event's deliveries leased at once, at most: all of them


@dataclass
class _Attempt:
    """One leased delivery's fate within a job."""

    lease: LeasedDelivery
    outcome: str | None = None  # "delivered" | "retry" | "dead" | "skipped" once decided
    error: str | None = None
    retry_after: float | None = None
    output: dict[str, Any] | None = None
    waits_for: list[str] | None = None  # not tried: its `after` sinks have not delivered
    tried: bool = True  # False: decided without calling the sink (no attempt is counted)
    recorded: bool = False  # its Finish is in the store
    duration_ms: int | None = None  # how long the attempt took, for the history


@dataclass
class _JobRun:
    """What one job's steps share: the event (as updated by the downloads), its attempts,
    the outputs of delivered sinks, and the streaming sinks running beside the download."""

    event: EventView
    attempts: dict[str, _Attempt]
    outputs: dict[str, dict[str, Any]]
    problems: list[dict[str, str]]
    big: bool
    streams: dict[str, asyncio.Task[bool]] = field(default_factory=dict)

    async def settle_streams(self) -> list[str]:
        """Wait for the streaming sinks; a delivered one's output is there for `after`.
        The streaming sinks that delivered."""
        delivered = []
        for sink, task in self.streams.items():
            if await task:
                self.outputs[sink] = self.attempts[sink].output or {}
                delivered.append(sink)
        self.streams.clear()
        return delivered

    def deliver_again(self, sinks: list[str]) -> None:
        """These sinks run once more in this attempt, with the whole files."""
        for sink in sinks:
            self.attempts[sink].outcome = self.attempts[sink].output = None
            self.outputs.pop(sink, None)


def _state_after(attempt: _Attempt) -> str:
    outcome = attempt.outcome or "retry"
    return FINISHED_STATE.get(outcome, outcome)


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
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sinks = dict(sinks)
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
            ranges=RangePlan(dl.range_threshold, dl.range_size, dl.range_parts),
        )
        # Private fal files are read through signed URLs, with FAL_KEY from the environment.
        self.signer = signer or FalMediaSigner(
            dl.fal_sign_url, dl.fal_media_hosts, os.environ.get("FAL_KEY")
        )
        self.routing = Router(settings)
        self.telemetry = telemetry or Telemetry()
        if self.telemetry.enabled:  # a span per file downloaded
            self.fetcher = TracedFetcher.around(self.fetcher, self.telemetry)
        self.metrics = metrics or Metrics()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.spool = settings.spool_path
        self._held: dict[str, tuple[str, str]] = {}  # token -> (request_id, sink)
        self._in_use: dict[str, int] = {}  # the spool folders of jobs in flight
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
                # A timeout cancels the job: its leases are handed back.
                lease = max(deadline * 2, self.settings.delivery.lease_seconds)
                await self.run_event(request_id, lease_seconds=lease)
        except TimeoutError:
            log.warning("inline delivery ran out of time", request_id=request_id, deadline=deadline)
        view = await self.store.get_event(request_id)
        if view is None:
            return ["(event missing)"]
        return sorted(k for k, d in view.deliveries.items() if d.state not in FINISHED)

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
            await self.process(job)
        return sum(len(job.deliveries) for job in jobs)

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
            await self._sweep_spool()

    async def _sweep_spool(self) -> None:
        """Files kept for later attempts go when unused too long or over the size limit,
        least recently used first (never those of a job in flight here)."""
        dl = self.settings.downloads
        try:
            removed = await asyncio.to_thread(
                sweep,
                self.spool,
                max_bytes=dl.spool_max_bytes,
                max_age=dl.spool_max_age,
                in_use=set(self._in_use),
            )
        except Exception as exc:
            log.warning("spool sweep failed", error=f"{type(exc).__name__}: {exc}")
            return
        if removed:
            log.info("spool swept", events=removed)

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
        spool = EventSpool(self.spool, event.request_id)
        self._in_use[spool.folder.name] = self._in_use.get(spool.folder.name, 0) + 1
        with structlog.contextvars.bound_contextvars(
            request_id=event.request_id, route=event.route
        ):
            try:
                with self.telemetry.job(event.request_id, event.route, event.trace_context):
                    await self._deliver_job(event, attempts, spool)
            except asyncio.CancelledError:
                await self._give_back(event, attempts)
                raise
            except Exception as exc:
                # Whatever broke, the attempt ends here with its cause, never as a lease
                # that expires with nobody knowing why.
                log.exception("delivery attempt failed")
                await self._fail_unrecorded(event, attempts, exc)
            finally:
                await asyncio.shield(self._release_spool(event, attempts, spool))
                for d in job.deliveries:
                    self._held.pop(d.token, None)

    async def _release_spool(
        self, event: EventView, attempts: dict[str, _Attempt], spool: EventSpool
    ) -> None:
        """Keep the event's files for its later attempts while a delivery that reads files
        is left to do; remove them once none is (unlinking 1 GiB takes a while: in a
        thread)."""
        left = self._in_use[spool.folder.name] - 1
        if left:
            self._in_use[spool.folder.name] = left
            return
        del self._in_use[spool.folder.name]
        states = {s: d.state for s, d in event.deliveries.items()}
        states |= {s: _state_after(a) for s, a in attempts.items()}
        done = not any(
            state not in FINISHED and sink in self.sinks and self.sinks[sink].reads_files
            for sink, state in states.items()
        )
        # Most events never had a folder: one stat here costs far less than a thread's
        # hand-off, which waits for the GIL behind the loop's own work.
        if done and os.path.lexists(spool.folder):  # noqa: ASYNC240
            await asyncio.to_thread(spool.remove)

    async def _deliver_job(
        self, event: EventView, attempts: dict[str, _Attempt], spool: EventSpool
    ) -> None:
        await self._skip_filtered(event, attempts)
        self._settle_before_download(event, attempts)
        runnable = [s for s, a in attempts.items() if a.outcome is None]
        if not runnable:
            return await self._record_all(event, attempts)
        big = len(event.body) > OFF_LOOP_BYTES  # thousands of Files: parsed off the loop
        refs, problems = await off_loop(big, refs_of, event)
        outputs: dict[str, dict[str, Any]] = {
            name: d.output or {} for name, d in event.deliveries.items() if d.state == "delivered"
        }
        job = _JobRun(event, attempts, outputs, problems, big)
        readers = [s for s in runnable if self.sinks[s].reads_files]
        started = time.perf_counter()
        try:
            local = await self._files(job, refs, readers, spool)
        except FetchError as exc:
            # The download failed: so did every sink that reads files (streaming ones too);
            # the sinks that only link them still run.
            await job.settle_streams()
            error = Retryable(exc.message) if exc.retryable else Permanent(exc.message)
            for s in readers:
                self._decide(attempts[s], error)
                attempts[s].duration_ms = round((time.perf_counter() - started) * 1000)
            local = await off_loop(big, described_all, refs, event.files)
        else:
            downloaded = len(local)
            if any(f.local_path is not None for f in local):
                local = await media.enrich(local, spool.folder)  # falhook[media]: facts, posters
                job.event = await self._record_files(event, [f for f in local if f.sha256])
            streamed = await job.settle_streams()
            if len(local) > downloaded:
                # Posters are made once their videos are whole, after the sinks that streamed
                # the videos: those get the whole set too (their writes are idempotent).
                job.deliver_again(streamed)
        info = await off_loop(big, event_info, job.event, job.event.files, problems)
        await self._run_sinks(job.event, info, local, attempts, outputs)
        await self._record_all(job.event, attempts)

    async def _files(
        self, job: _JobRun, refs: list[FileRef], readers: list[str], spool: EventSpool
    ) -> list[LocalFile]:
        """The job's files: from the spool or downloaded once for the sinks that read them
        (those that stream get them as they arrive), described for the others."""
        if not refs or not readers:
            return await off_loop(job.big, described_all, refs, job.event.files)
        keep = any(self.sinks[s].keeps_files for s in readers)  # written back as it arrives
        files = JobFiles(self.fetcher, self.metrics, self.signer, spool, job.event, refs, keep=keep)
        await files.prepare()
        streamers = [s for s in readers if self._streams_now(job, s)] if files.missing else []
        if streamers:
            info = await off_loop(job.big, event_info, job.event, job.event.files, job.problems)
            arriving = files.arriving()
            for s in streamers:
                job.streams[s] = asyncio.create_task(
                    self._call_sink(s, job.attempts[s], job.event, info, [], job.outputs, arriving)
                )
        return await files.download()

    def _streams_now(self, job: _JobRun, sink: str) -> bool:
        """A streaming sink whose prerequisites are done may take the files as they come."""
        if not self.sinks[sink].streams_files:
            return False
        after = self.routing.after(job.event).get(sink, ())
        done = {s for s, d in job.event.deliveries.items() if d.state in DONE_STATES}
        return not ordering.unmet(after, done)

    async def _skip_filtered(self, event: EventView, attempts: dict[str, _Attempt]) -> None:
        """Sinks whose filter the event does not match: skipped, nothing downloaded for them."""
        names = [s for s, a in attempts.items() if a.outcome is None and s in self.sinks]
        if not self.routing.filters_any(event, names):
            return
        big = len(event.body) > OFF_LOOP_BYTES  # the payload is parsed to match it
        for sink, why in (await off_loop(big, self.routing.skips, event, names)).items():
            a = attempts[sink]
            a.outcome, a.error, a.tried = "skipped", why, False

    def _settle_before_download(self, event: EventView, attempts: dict[str, _Attempt]) -> None:
        """Decide, without calling them, the sinks that cannot run in this job."""
        for name, a in attempts.items():
            if name not in self.sinks:  # removed from the config since the event arrived
                self._decide(a, Permanent(f"sink {name!r} is not configured"))
        # Prerequisites neither delivered nor part of this job: wait (no download for this
        # sink alone, no attempt spent), or go dead with a dead prerequisite.
        after = self.routing.after(event)
        for name, a in attempts.items():
            if a.outcome is None:
                outside = [d for d in after.get(name, ()) if d not in attempts]
                # A skipped prerequisite counts as done: the sink runs without its output.
                delivered = [
                    d for d in outside if self._dep_state(event, attempts, d) in DONE_STATES
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
        """Run sinks in waves: each wave holds those whose prerequisites have delivered (or
        were skipped by their filter)."""
        after = self.routing.after(event)
        skipped = {s for s, a in attempts.items() if a.outcome == "skipped"}
        skipped |= {s for s, d in event.deliveries.items() if d.state == "skipped"}
        waiting = {s for s, a in attempts.items() if a.outcome is None}
        while waiting:
            wave, blocked = ordering.next_wave(waiting, after, outputs.keys() | skipped)
            if not wave:
                for s in blocked:
                    deps = ordering.unmet(after.get(s, ()), outputs.keys() | skipped)
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
        arriving: Sequence[Arrival] | None = None,
    ) -> bool:
        span = self.telemetry.attempt(
            name,
            attempt.lease.attempts + 1,
            request_id=event.request_id,
            trace_context=event.trace_context,
        )
        with span:
            ok = await self._run_sink(
                name, attempt, event, info, files, outputs, span.headers, arriving
            )
            span.outcome(attempt.outcome or "retry", attempt.error)
        return ok

    async def _run_sink(
        self,
        name: str,
        attempt: _Attempt,
        event: EventView,
        info: EventInfo,
        files: list[LocalFile],
        outputs: dict[str, dict[str, Any]],
        headers: Mapping[str, str],
        arriving: Sequence[Arrival] | None = None,
    ) -> bool:
        sink_log = log.bind(sink=name)
        previous = event.deliveries.get(name)
        after = self.routing.after(event).get(name, ())
        ctx = DeliveryContext(
            event=info,
            files=files,
            sink=name,
            attempt=attempt.lease.attempts + 1,
            log=sink_log,
            outputs={k: outputs[k] for k in after if k in outputs},
            previous=previous.output if previous else None,
            headers=headers,
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.delivery.attempt_timeout):
                sink = self.sinks[name]
                if arriving is not None:
                    output = await sink.deliver_streaming(ctx, arriving)
                else:
                    output = await sink.deliver(ctx)
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
        finally:  # a sink that streamed and then delivered again: both calls count
            took = round((time.perf_counter() - started) * 1000)
            attempt.duration_ms = (attempt.duration_ms or 0) + took
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
                alerts=self._alerts(event, sink, a) if outcome == "dead" else (),
            )
            held = await self.store.finish(finish)
            a.recorded = True
            label = "waiting" if sink in waiting else outcome
            self.metrics.deliveries.labels(sink=sink, outcome=label).inc()
            if held and finish.alerts:
                self._alerted(event, sink, finish.alerts)
            quiet = outcome in ("delivered", "skipped") or sink in waiting
            level = "info" if quiet else "warning"
            getattr(log, level)(
                "delivery " + label,
                sink=sink,
                attempt=a.lease.attempts + a.tried,
                error=a.error,
                retry_at=next_at.isoformat() if next_at else None,
                lease_lost=not held or None,
            )

    def _alerts(self, event: EventView, sink: str, a: _Attempt) -> tuple[NewEvent, ...]:
        """The alert events of the route's on_dead sinks, stored with the dead outcome."""
        return self.routing.alerts(
            event,
            sink,
            attempts=a.lease.attempts + a.tried,
            error=a.error,
            token=a.lease.token,
            trace_context=self.telemetry.traceparent(),
        )

    def _alerted(self, event: EventView, sink: str, alerts: tuple[NewEvent, ...]) -> None:
        self.metrics.alerts.labels(route=event.route, sink=sink).inc(len(alerts))
        for alert in alerts:
            log.warning(
                "alert raised", sink=sink, alert=alert.request_id, alert_sinks=list(alert.sinks)
            )

    def _when_due(self, event: EventView, deps: list[str], due: dict[str, datetime]) -> datetime:
        """The latest next attempt among deps; the first backoff step when one is unknown
        (leased by another worker right now, say). A time this job just set is followed even
        when it has passed already (a short backoff on a slow store): the dependency is due
        then, and one lease takes both."""
        fallback = utcnow() + timedelta(seconds=self.policy.delay(1))
        times = []
        for dep in deps:
            if dep in due:
                times.append(due[dep])
                continue
            stored = event.deliveries.get(dep)
            when = stored.next_attempt_at if stored else None
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
        if files == event.files:  # a later attempt with the kept files: nothing new to write
            return event
        try:
            await self.store.record_files(event.request_id, files)
        except Exception as exc:
            log.warning("could not record file digests", error=str(exc))
        return replace(event, files=files)

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        await self.signer.aclose()
