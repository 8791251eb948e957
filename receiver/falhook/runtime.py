"""What a falhook process holds while it runs, built and closed in one place for every entry
point (`serve`, `worker`, `events replay --now`, the Lambda handler and drain, the CLI's
store commands):

    async with open_runtime(settings, worker="run") as rt:
        await stop.wait()

Sinks are built before anything opens, so a config mistake fails first; then the store opens,
the JWKS cache loads, and the worker and reconciliation loops start. Closing undoes it in
reverse: the loops stop (in-flight deliveries get `shutdown_grace`), then sinks and store
close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal

from falhook.config import ConfigError, Settings, config_warnings
from falhook.logs import get_logger
from falhook.metrics import Metrics
from falhook.store import Store, make_store
from falhook.telemetry import Telemetry, make_telemetry
from falhook_sinks.base import OptionError, Sink, SinkEnv, SinkProblem
from falhook_sinks.registry import build_sinks, check_sinks, close_sinks

if TYPE_CHECKING:
    from falhook.delivery.worker import Worker
    from falhook.intake.keys import FalKeys

log = get_logger("falhook.runtime")

# "run": deliver in the background for the runtime's life; "on_demand": built for callers that
# deliver specific events themselves (inline serverless, `events replay --now`, the drain).
WorkerMode = Literal["run", "on_demand"] | None
_SINK_CHECK_TTL = 10.0  # seconds: /readyz probes every few seconds must not hammer S3


def make_sinks(settings: Settings, names: Collection[str] | None = None) -> dict[str, Sink]:
    """The configured sinks (all, or those named: a command that delivers to one sink
    does not depend on another's import), built and checked; a mistake is a ConfigError
    naming the key."""
    specs = [s for n, s in settings.sinks.items() if names is None or n in names]
    try:
        return build_sinks(specs, SinkEnv(base_dir=settings.base_dir))
    except OptionError as exc:
        raise ConfigError(exc.key, exc.problem) from None


def make_keys(settings: Settings) -> FalKeys:
    from falhook.intake.keys import FalKeys

    r = settings.receiver
    return FalKeys(
        r.jwks_url,
        refetch_interval=r.jwks_refetch_interval,
        refresh_interval=r.jwks_refresh_interval,
    )


class Runtime:
    """The store, sinks, metrics, and (as asked) JWKS keys, worker and reconciliation of one
    process. ``start()`` / ``close()``, or ``open_runtime`` around both."""

    def __init__(
        self,
        settings: Settings,
        *,
        keys: FalKeys | bool = False,
        worker: WorkerMode = None,
        reconcile: bool = False,
        store: Store | None = None,
        sinks: Mapping[str, Sink] | None = None,
        metrics: Metrics | None = None,
        sink_checks_fatal: bool = True,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        # Off where the runtime starts on a first request (serverless): that request is
        # answered, and each delivery reports the sink's trouble itself.
        self.sink_checks_fatal = sink_checks_fatal
        if sinks is None:
            sinks = make_sinks(settings) if worker is not None else {}
        self.sinks: dict[str, Sink] = dict(sinks)
        self.store: Store = store or make_store(settings)
        self.metrics = metrics or Metrics()
        self.keys: FalKeys | None = make_keys(settings) if keys is True else (keys or None)
        # Tracing, where there is something to trace: webhooks received or delivered.
        traced = worker is not None or self.keys is not None
        self.telemetry = telemetry or (make_telemetry(settings) if traced else Telemetry())
        self.worker_mode = worker
        self.worker: Worker | None = None
        self.reconcile = reconcile
        self.stop = asyncio.Event()
        self.started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Any] = []
        self._start_lock = asyncio.Lock()
        self.sink_problems: dict[str, list[SinkProblem]] = {}
        self._checked_at = 0.0

    async def start(self) -> None:
        if self.keys is not None or self.worker_mode == "run":  # a long-running process
            for warning in config_warnings(self.settings):
                log.warning("config warning", problem=warning)
        await self.check_sinks(at_start=True)
        try:
            await self.store.open()
            if self.keys is not None:
                await self.keys.start()
            if self.worker_mode is not None:
                self._start_worker()
            if self.reconcile:
                self._start_reconciler()
        except BaseException:
            await self._close_parts()
            raise
        self.started = True

    async def check_sinks(self, *, at_start: bool = False) -> dict[str, list[SinkProblem]]:
        """Every sink's own check (a writable folder, a reachable bucket), by sink. At start
        a fatal problem is a ConfigError naming the key (unless ``sink_checks_fatal`` is off:
        then it is logged like a warning); later (``/readyz``) problems are only reported,
        at most every few seconds."""
        if not at_start and time.monotonic() - self._checked_at < _SINK_CHECK_TTL:
            return self.sink_problems
        self.sink_problems = await check_sinks(self.sinks)
        self._checked_at = time.monotonic()
        for problem in (p for found in self.sink_problems.values() for p in found):
            if at_start and problem.fatal and self.sink_checks_fatal:
                raise ConfigError(problem.key, problem.problem)
            if at_start:
                log.warning("sink check", problem=str(problem))
        return self.sink_problems

    async def ensure_started(self) -> None:
        """Start once (serverless: once per container, on its first request)."""
        if not self.started:
            async with self._start_lock:
                if not self.started:
                    await self.start()

    async def close(self) -> None:
        if not self.started:
            return
        self.started = False
        await self._close_parts()

    def _start_worker(self) -> None:
        from falhook.delivery.worker import Worker
        from falhook.downloads.files import make_downloader

        # Private fal files are read through signed URLs, with FAL_KEY from the environment.
        downloader = make_downloader(
            self.settings.downloads,
            fal_key=os.environ.get("FAL_KEY"),
            metrics=self.metrics,
            telemetry=self.telemetry,
        )
        self._closers.append(downloader.aclose)
        self.worker = Worker(
            self.settings,
            self.store,
            self.sinks,
            downloader=downloader,
            metrics=self.metrics,
            telemetry=self.telemetry,
        )
        if self.worker_mode == "run":
            self._tasks.append(
                asyncio.create_task(self.worker.run(self.stop), name="falhook-worker")
            )

    def _start_reconciler(self) -> None:
        # Results fal could not deliver (falhook was down past fal's retries) are polled for;
        # several receivers doing it at once is harmless: storing twice is a no-op.
        key = os.environ.get("FAL_KEY")
        if not (self.settings.reconcile.enabled and key):
            return
        from falhook.fal.queue import make_queue
        from falhook.fal.reconcile import Reconciler

        queue = make_queue(self.settings, key=key)
        self._closers.append(queue.aclose)
        reconciler = Reconciler(self.store, queue, self.settings)
        self._tasks.append(asyncio.create_task(reconciler.run(self.stop), name="falhook-reconcile"))

    async def _close_parts(self) -> None:
        self.stop.set()
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.worker is not None:
            await self.worker.aclose()
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                await close()
        self._closers.clear()
        if self.keys is not None:
            await self.keys.aclose()
        await close_sinks(self.sinks)
        await self.store.close()
        with contextlib.suppress(Exception):  # spans still buffered go out before exit
            await self.telemetry.aclose()


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, **parts: Any) -> AsyncIterator[Runtime]:
    """A started Runtime (see Runtime for `parts`), closed on the way out."""
    runtime = Runtime(settings, **parts)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.close()
