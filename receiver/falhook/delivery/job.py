"""One job: a leased event and those of its deliveries this worker holds, from the lease to
the record. ``JobRun.run`` is the whole life of a job, read from top to bottom:

    decide what needs no sink call (filters, missing prerequisites, no attempts left)
      ─▶ the event's files: kept in the spool or downloaded once (streaming sinks start now)
      ─▶ the sinks in waves by `after`          (posters are made after the sinks that
      ─▶ record every outcome in the store        need none, or before a sink that shows
      ─▶ only then: logs, metrics, the spool      them, and added to those that stored files)

Every attempt (delivery/attempt.py) ends decided and recorded, or, when the worker shuts down
mid-job, handed back uncounted; a job that breaks records its cause instead of leaving a lease
to expire with nobody knowing why.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from falhook.config import Settings
from falhook.delivery import media, ordering
from falhook.delivery.attempt import Attempt
from falhook.delivery.batches import Recorder, SinkBatcher
from falhook.delivery.retry import RetryPolicy
from falhook.delivery.routing import Router
from falhook.delivery.upkeep import Holdings
from falhook.downloads.arrivals import Arrival
from falhook.downloads.cache import EventSpool
from falhook.downloads.errors import FetchError
from falhook.downloads.files import (
    Downloader,
    StoredEvent,
    described_all,
    parse_stored,
    with_downloads,
)
from falhook.downloads.transfer import JobFiles
from falhook.intake.offload import OFF_LOOP_BYTES, off_loop
from falhook.logs import LineBatch
from falhook.metrics import Metrics
from falhook.store.document import file_views, submission_doc
from falhook.store.models import EventView, Finish, Job, NewEvent, utcnow
from falhook.store.states import DONE_STATES
from falhook.telemetry import Telemetry
from falhook_sinks.base import DeliveryContext, EventInfo, LocalFile, Permanent, Retryable, Sink

log = structlog.get_logger("falhook.worker")
FINISHED = DONE_STATES | {"dead"}  # nothing more will happen to these deliveries


@dataclass(frozen=True)
class JobParts:
    """What every job of one worker shares."""

    settings: Settings
    sinks: Mapping[str, Sink]
    batchers: Mapping[str, SinkBatcher]  # the sinks that take batches, by name
    policy: RetryPolicy
    routing: Router
    downloader: Downloader
    recorder: Recorder
    holdings: Holdings
    telemetry: Telemetry
    metrics: Metrics
    spool: Path  # the spool's root: each event's files in a folder of their own
    trail: LineBatch  # the log line of the deliveries recorded together


class JobRun:
    """One job's attempts, files and outputs, and its record."""

    def __init__(self, job: Job, parts: JobParts) -> None:
        self.parts = parts
        self.event = job.event
        self.attempts = {d.sink: Attempt(d) for d in job.deliveries}
        # The outputs of delivered sinks, for the sinks `after` them: earlier jobs' first.
        self.outputs: dict[str, dict[str, Any]] = {
            name: d.output or {}
            for name, d in job.event.deliveries.items()
            if d.state == "delivered"
        }
        self.after = parts.routing.after(job.event)
        self.big = len(job.event.body) > OFF_LOOP_BYTES  # thousands of Files: off the loop
        self.spool = EventSpool(parts.spool, job.event.request_id)
        self.files: list[LocalFile] = []
        self.files_changed = False  # the downloads told us sizes and digests to record
        self.posters_due = False  # videos to probe and make posters of (falhook[media])
        self.unposted: set[str] = set()  # sinks that stored the files before the posters
        self.streams: dict[str, asyncio.Task[bool]] = {}
        self.recording = False  # the outcomes went to the recorder: nothing to give back

    async def run(self) -> None:
        """The job, from its lease to its record; never raises but a cancellation."""
        event, parts = self.event, self.parts
        tokens = [a.lease.token for a in self.attempts.values()]
        parts.holdings.take(tokens, self.spool.folder.name)
        with (
            structlog.contextvars.bound_contextvars(request_id=event.request_id, route=event.route),
            parts.telemetry.job(event.request_id, event.route, event.trace_context),
        ):
            try:
                await self._lifecycle()
            except asyncio.CancelledError:
                await self._give_back()
                raise
            except Exception as exc:
                # Whatever broke, the attempt ends here with its cause, never as a lease that
                # expires with nobody knowing why.
                log.exception("delivery attempt failed")
                await self._fail_unrecorded(exc)
            finally:
                last = parts.holdings.drop(tokens, self.spool.folder.name)
                await asyncio.shield(self._release_spool(last))

    async def _lifecycle(self) -> None:  # long: the life of a job, in order, in one place
        event, parts = self.event, self.parts
        # 1. What is decided without calling a sink.
        await self._skip_filtered()
        self._settle_before_download()
        runnable = [s for s, a in self.attempts.items() if not a.decided]
        if not runnable:
            return await self._record()

        # 2. The files: from the spool or downloaded once, for the sinks that read them.
        stored = await off_loop(self.big, parse_stored, event)
        readers = [s for s in runnable if parts.sinks[s].reads_files]
        started = time.perf_counter()
        try:
            self.files = await self._files(stored, readers)
        except FetchError as exc:
            # The download failed: so did every sink that reads files (streaming ones too);
            # the sinks that only link them still run.
            await self._settle_streams()
            error = Retryable(exc.message) if exc.retryable else Permanent(exc.message)
            for s in readers:
                self.attempts[s].fail(error, parts.policy)
                self.attempts[s].took(time.perf_counter() - started)
            self.files = await off_loop(self.big, described_all, stored.refs, event.files)
        else:
            if any(f.local_path is not None for f in self.files):
                self._note_downloads()
                self.posters_due = await off_loop(self.big, media.worth_probing, self.files)
            streamed = await self._settle_streams()
            if self.posters_due:  # they stored the files: the posters will be added to them
                self.unposted.update(streamed)
        info = await off_loop(self.big, event_info, self.event, stored)

        # 3. The sinks in waves: each wave holds those whose prerequisites have delivered
        # (or were skipped by their filter).
        skipped = {s for s, a in self.attempts.items() if a.outcome == "skipped"}
        skipped |= {s for s, d in event.deliveries.items() if d.state == "skipped"}
        waiting = {s for s, a in self.attempts.items() if not a.decided}
        while waiting:
            wave, blocked = ordering.next_wave(waiting, self.after, self.outputs.keys() | skipped)
            if not wave:
                for s in blocked:
                    deps = ordering.unmet(self.after.get(s, ()), self.outputs.keys() | skipped)
                    self._wait_or_fail(s, deps)
                break
            if any(parts.sinks[s].shows_posters for s in wave):
                info = await self._add_posters(info, stored)
            await self._run_wave(sorted(wave), info)
            waiting = blocked
        # The posters, made once the sinks that need none have run: added to those that
        # stored the files.
        await self._add_posters(info, stored)

        # 4. The record: durable before anything else hears of the outcomes.
        await self._record()

    # --- deciding without a sink call ---------------------------------------------------------

    async def _skip_filtered(self) -> None:
        """Sinks whose filter the event does not match: skipped, nothing downloaded for them."""
        routing = self.parts.routing
        names = [s for s, a in self.attempts.items() if not a.decided and s in self.parts.sinks]
        if not routing.filters_any(self.event, names):
            return
        for sink, why in (await off_loop(self.big, routing.skips, self.event, names)).items():
            self.attempts[sink].skip(why)

    def _settle_before_download(self) -> None:
        """Decide the sinks that cannot run in this job."""
        policy = self.parts.policy
        for name, a in self.attempts.items():
            if name not in self.parts.sinks:  # removed from the config since the event arrived
                a.fail(Permanent(f"sink {name!r} is not configured"), policy)
        # Prerequisites neither delivered nor part of this job: wait (no download for this
        # sink alone, no attempt spent), or go dead with a dead prerequisite. A skipped
        # prerequisite counts as done: the sink runs without its output.
        for name, a in self.attempts.items():
            if not a.decided:
                outside = [d for d in self.after.get(name, ()) if d not in self.attempts]
                done = [d for d in outside if self._state_of(d) in DONE_STATES]
                deps = ordering.unmet(outside, done)
                if deps:
                    self._wait_or_fail(name, deps)
        for a in self.attempts.values():
            # Taken over from workers that died mid-attempt max_attempts times: this event
            # kills whoever tries it, so it is dead-lettered rather than tried again.
            if not a.decided and a.lease.attempts >= policy.max_attempts:
                stored = self.event.deliveries.get(a.sink)
                last = stored.last_error if stored else None
                why = f"no attempts left ({a.lease.attempts} made); last: {last}"
                a.fail(Permanent(why), policy, counted=False)

    def _wait_or_fail(self, name: str, deps: list[str]) -> None:
        """A sink whose `after` sinks have not delivered: dead if one of them is dead,
        otherwise rescheduled for when they are next due, without counting an attempt."""
        if ordering.blocked_verdict(self._state_of(d) for d in deps) == "dead":
            self.attempts[name].fail(
                Permanent(f"runs after {deps}, which is dead"), self.parts.policy
            )
        else:
            self.attempts[name].wait(deps)

    def _state_of(self, sink: str) -> str:
        """A sink's state as this job leaves it: its attempt's outcome here, or as stored."""
        attempt = self.attempts.get(sink)
        if attempt is not None and attempt.decided:
            return attempt.outcome or "retry"
        stored = self.event.deliveries.get(sink)
        return stored.state if stored else "dead"

    # --- files --------------------------------------------------------------------------------

    async def _files(self, stored: StoredEvent, readers: list[str]) -> list[LocalFile]:
        """The job's files: from the spool or downloaded once for the sinks that read them
        (those that stream get them as they arrive), described for the others."""
        refs = stored.refs
        if not refs or not readers:
            return await off_loop(self.big, described_all, refs, self.event.files)
        sinks = self.parts.sinks
        keep = any(sinks[s].keeps_files for s in readers)  # written back as it arrives
        files = JobFiles(self.parts.downloader, self.spool, self.event, refs, keep=keep)
        await files.prepare()
        streamers = [s for s in readers if self._streams_now(s)] if files.missing else []
        if streamers:
            info = await off_loop(self.big, event_info, self.event, stored)
            arriving = files.arriving()
            for s in streamers:
                self.streams[s] = asyncio.create_task(self._call(s, info, [], arriving))
        return await files.download()

    def _streams_now(self, sink: str) -> bool:
        """A streaming sink whose prerequisites are done may take the files as they come."""
        if not self.parts.sinks[sink].streams_files:
            return False
        done = {s for s, d in self.event.deliveries.items() if d.state in DONE_STATES}
        return not ordering.unmet(self.after.get(sink, ()), done)

    async def _settle_streams(self) -> list[str]:
        """Wait for the streaming sinks; the ones that delivered (their outputs are there
        for `after`)."""
        delivered = []
        for sink, task in self.streams.items():
            if await task:
                self.outputs[sink] = self.attempts[sink].output or {}
                delivered.append(sink)
        self.streams.clear()
        return delivered

    def _note_downloads(self) -> None:
        """The event as sinks see it gets the files' sizes and digests (recorded with the
        outcomes)."""
        files = with_downloads(self.event.files, [f for f in self.files if f.sha256])
        if files != self.event.files:  # a later attempt with the kept files: nothing new
            self.event = replace(self.event, files=files)
            self.files_changed = True

    async def _add_posters(self, info: EventInfo, stored: StoredEvent) -> EventInfo:
        """Make the posters (falhook[media]), not before they are needed: the files gain them
        and the videos' facts, and the sinks that stored the files before then are called
        once more with all of them (their writes are idempotent). Made after the sinks that
        need none, so probing a video never competes with their work. The event as sinks see
        it, updated."""
        if not self.posters_due:
            return info
        self.posters_due = False
        try:
            files = await media.enrich_in_thread(self.files, self.spool.folder)
        except Exception as exc:  # the files go out as they are, as without falhook[media]
            log.warning("video facts failed", error=f"{type(exc).__name__}: {exc}")
            return info
        if files == self.files:
            return info
        self.files = files
        self.event = replace(self.event, files=media.annotate(self.event.files, files))
        self.files_changed = True
        info = await off_loop(self.big, event_info, self.event, stored)
        again = sorted(s for s in self.unposted if self.attempts[s].outcome == "delivered")
        for s in again:
            self.attempts[s].reopen()
            self.outputs.pop(s, None)
        await self._run_wave(again, info)
        return info

    # --- sinks --------------------------------------------------------------------------------

    async def _run_wave(self, wave: Sequence[str], info: EventInfo) -> None:
        if len(wave) == 1:  # most routes have one sink: no task of its own for it
            results = [await self._call(wave[0], info, self.files)]
        else:
            results = await asyncio.gather(*(self._call(s, info, self.files) for s in wave))
        for s, delivered in zip(wave, results, strict=True):
            if delivered:
                self.outputs[s] = self.attempts[s].output or {}
                sink = self.parts.sinks[s]
                if self.posters_due and (sink.keeps_files or sink.streams_files):
                    self.unposted.add(s)  # stored the files; the posters are still to come

    async def _call(
        self,
        name: str,
        info: EventInfo,
        files: list[LocalFile],
        arriving: Sequence[Arrival] | None = None,
    ) -> bool:
        """One call of a sink (as it streams the files, when `arriving`); its attempt
        decided by the result. Whether it delivered."""
        parts, attempt = self.parts, self.attempts[name]
        sink = parts.sinks[name]
        previous = self.event.deliveries.get(name)
        span = parts.telemetry.attempt(
            name,
            attempt.number,
            request_id=self.event.request_id,
            trace_context=self.event.trace_context,
        )
        with span:
            ctx = DeliveryContext(
                event=info,
                files=files,
                sink=name,
                attempt=attempt.number,
                log=log.bind(sink=name),
                outputs={k: self.outputs[k] for k in self.after.get(name, ()) if k in self.outputs},
                previous=previous.output if previous else None,
                headers=span.headers,
            )
            batcher = parts.batchers.get(name) if arriving is None else None
            started = time.perf_counter()
            try:
                if batcher is not None:  # with the other events bound for it now (the
                    output = await batcher.deliver(ctx)  # batcher holds it to the timeout)
                else:
                    async with asyncio.timeout(parts.settings.delivery.attempt_timeout):
                        if arriving is not None:
                            output = await sink.deliver_streaming(ctx, arriving)
                        else:
                            output = await sink.deliver(ctx)
            except (Retryable, Permanent) as exc:
                attempt.fail(exc, parts.policy)
            except TimeoutError:
                attempt.fail(Retryable("attempt timed out"), parts.policy)
            except Exception as exc:
                # A bug in a sink must not lose the event: retry it, then dead-letter it.
                ctx.log.exception("sink raised an unexpected error")
                attempt.fail(Retryable(f"{type(exc).__name__}: {exc}"), parts.policy)
            else:
                attempt.deliver(output if isinstance(output, dict) else None)
                ctx.log.debug("sink finished", seconds=round(time.perf_counter() - started, 3))
            finally:
                attempt.took(time.perf_counter() - started)
            span.outcome(attempt.outcome or "retry", attempt.error)
        return attempt.outcome == "delivered"

    # --- the record ---------------------------------------------------------------------------

    async def _record(self) -> None:
        """Every attempt's outcome, in one commit (with other jobs' outcomes). Logs and
        metrics only once the store holds them."""
        parts, event = self.parts, self.event
        due: dict[str, datetime] = {}  # when each sink retried in this job is next due
        waiting = {s for s, a in self.attempts.items() if a.waits_for is not None}
        finishes = []
        for sink in ordering.waits_last(self.attempts, waiting):
            a = self.attempts[sink]
            next_at = None
            if a.waits_for is not None:
                next_at = self._when_due(a.waits_for, due)
            elif a.outcome in (None, "retry"):
                delay = parts.policy.delay(a.number, retry_after=a.retry_after)
                next_at = due[sink] = utcnow() + timedelta(seconds=delay)
            alerts: tuple[NewEvent, ...] = ()
            if a.outcome == "dead":
                alerts = parts.routing.alerts(
                    event,
                    sink,
                    attempts=a.lease.attempts + a.counted,
                    error=a.error,
                    token=a.lease.token,
                    trace_context=parts.telemetry.traceparent(),
                )
            finishes.append(a.finish(event.request_id, next_at, alerts))
        files = {event.request_id: event.files} if self.files_changed else None
        # Once handed to the recorder, the outcomes are written even if this job is
        # cancelled meanwhile (the worker waits for the recorder at shutdown).
        self.recording = True
        held = await parts.recorder.record(finishes, files)
        self._report(finishes, held)

    def _report(self, finishes: list[Finish], held: list[bool]) -> None:
        """Metrics and logs of outcomes the store holds (`held`: whether each lease did)."""
        parts, event = self.parts, self.event
        for finish, kept in zip(finishes, held, strict=True):
            a = self.attempts[finish.sink]
            label = "waiting" if a.waits_for is not None else finish.outcome
            parts.metrics.delivered(finish.sink, label)
            if kept and finish.alerts:
                parts.metrics.alerts.labels(route=event.route, sink=finish.sink).inc(
                    len(finish.alerts)
                )
                for alert in finish.alerts:
                    log.warning(
                        "alert raised",
                        sink=finish.sink,
                        alert=alert.request_id,
                        alert_sinks=list(alert.sinks),
                    )
            fields = {
                "sink": finish.sink,
                "attempt": a.lease.attempts + a.counted,
                "error": a.error,
                "retry_at": finish.next_attempt_at.isoformat() if finish.next_attempt_at else None,
            }
            if not kept:  # another worker holds it now: this outcome was not written
                log.warning("delivery " + label, **fields, lease_lost=True)
            elif finish.outcome in ("delivered", "skipped") or a.waits_for is not None:
                # One line for all the deliveries recorded together (docs/performance.md);
                # at debug level, one each as well.
                parts.trail.add(label, finish.sink, event.request_id)
                log.debug("delivery " + label, **fields)
            else:
                log.warning("delivery " + label, **fields)

    def _when_due(self, deps: list[str], due: dict[str, datetime]) -> datetime:
        """The latest next attempt among deps; the first backoff step when one is unknown
        (leased by another worker right now, say). A time this job just set is followed even
        when it has passed already (a short backoff on a slow store): the dependency is due
        then, and one lease takes both."""
        fallback = utcnow() + timedelta(seconds=self.parts.policy.delay(1))
        times = []
        for dep in deps:
            if dep in due:
                times.append(due[dep])
                continue
            stored = self.event.deliveries.get(dep)
            when = stored.next_attempt_at if stored else None
            times.append(when if when is not None and when > utcnow() else fallback)
        return max(times)

    async def _fail_unrecorded(self, exc: Exception) -> None:
        if self.recording:  # the record itself failed: the leases will expire
            return
        cause = Retryable(f"{type(exc).__name__}: {exc}")
        for a in self.attempts.values():
            if not a.decided:  # what was decided (a sink that delivered) stays decided
                a.fail(cause, self.parts.policy)
        try:
            await self._record()
        except Exception:  # the store itself: the lease expires and is retaken
            log.exception("could not record a failed attempt")

    async def _give_back(self) -> None:
        """Shutting down mid-job: a record on its way is let finish; otherwise the leases go
        back, due now, without counting an attempt."""
        for task in self.streams.values():
            task.cancel()
        if self.recording:
            return
        store = self.parts.recorder.store
        for sink, a in self.attempts.items():
            try:
                await asyncio.shield(store.release(self.event.request_id, sink, a.lease.token))
            except Exception as exc:  # the lease will expire and be retaken anyway
                log.warning("release failed", sink=sink, error=str(exc))

    async def _release_spool(self, last: bool) -> None:
        """Keep the event's files for its later attempts while a delivery that reads files
        is left to do; remove them once none is (unlinking 1 GiB takes a while: in a
        thread). `last`: no other job here uses the folder."""
        if not last:
            return
        sinks = self.parts.sinks
        states = {s: d.state for s, d in self.event.deliveries.items()}
        states |= {s: a.state_after for s, a in self.attempts.items()}
        done = not any(
            state not in FINISHED and sink in sinks and sinks[sink].reads_files
            for sink, state in states.items()
        )
        # Most events never had a folder (none without files): one stat here costs far less
        # than a thread's hand-off, which waits for the GIL behind the loop's own work.
        if done and self.event.files and os.path.lexists(self.spool.folder):  # noqa: ASYNC240
            await asyncio.to_thread(self.spool.remove)


def event_info(event: EventView, stored: StoredEvent) -> EventInfo:
    """The event as sinks see it."""
    return EventInfo(
        request_id=event.request_id,
        route=event.route,
        fal_status=event.fal_status,
        error=event.error,
        payload_error=event.payload_error,
        payload=stored.payload,
        gateway_request_id=event.gateway_request_id,
        received_at=event.received_at,
        files=file_views(event.files),
        file_problems=stored.problems,
        submission=submission_doc(event),
        source=event.source,
    )
