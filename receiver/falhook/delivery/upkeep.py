"""What a worker does beside its jobs, each in its own supervised task: keeping its leases
alive, pruning old history, and sweeping the spool. And `Holdings`, what its jobs hold right
now, which the first and the last of those tasks read.

A side task that fails is logged and started again after a pause; none of them can stop the
worker, and the worker's shutdown stops all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import timedelta
from pathlib import Path

import structlog

from falhook.config import Settings
from falhook.downloads.cache import sweep
from falhook.store.models import utcnow
from falhook.store.roles import DeliveryQueue

log = structlog.get_logger("falhook.worker")
PRUNE_EVERY = 3600.0  # seconds between two prunings of old history
RESTART_AFTER = 1.0  # seconds before a side task that failed starts again (each then
# waits its own interval first)


class Holdings:
    """The leases and spool folders held by the jobs in flight in one worker."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.folders: Counter[str] = Counter()  # a folder's name -> jobs using it

    def take(self, tokens: Iterable[str], folder: str) -> None:
        self.tokens.update(tokens)
        self.folders[folder] += 1

    def drop(self, tokens: Iterable[str], folder: str) -> bool:
        """Forget a job's holdings; True when no other job here uses its folder."""
        self.tokens.difference_update(tokens)
        self.folders[folder] -= 1
        if self.folders[folder] > 0:
            return False
        del self.folders[folder]
        return True


SideTask = Callable[[], Awaitable[None]]


def side_tasks(settings: Settings, store: DeliveryQueue, holdings: Holdings) -> dict[str, SideTask]:
    """The worker's side tasks by name, each a loop that runs until cancelled."""
    d, dl = settings.delivery, settings.downloads
    beat = max(0.5, d.lease_seconds / 3)

    async def extend_leases() -> None:
        """A 1 GiB download outlives `lease_seconds`: its lease is pushed forward while it
        runs, so no other worker takes it over."""
        while True:
            await asyncio.sleep(beat)
            if holdings.tokens:
                await store.extend(list(holdings.tokens), d.lease_seconds)

    async def prune_history() -> None:
        """Attempts older than [store].history_days leave the history (bounded growth; every
        worker may do it, deleting twice is harmless)."""
        await asyncio.sleep(beat)
        while True:
            cutoff = utcnow() - timedelta(days=settings.store.history_days)
            removed = await store.prune_history(cutoff)
            if removed:
                log.info("history pruned", attempts=removed, older_than=cutoff.isoformat())
            await asyncio.sleep(PRUNE_EVERY)

    async def sweep_spool() -> None:
        """Files kept for later attempts go when unused too long or over the size limit,
        least recently used first (never those of a job in flight here)."""
        while True:
            await asyncio.sleep(beat)
            removed = await asyncio.to_thread(
                sweep,
                Path(settings.spool_path),
                max_bytes=dl.spool_max_bytes,
                max_age=dl.spool_max_age,
                in_use=set(holdings.folders),
            )
            if removed:
                log.info("spool swept", events=removed)

    return {
        "lease extension": extend_leases,
        "history pruning": prune_history,
        "spool sweep": sweep_spool,
    }


async def supervise(name: str, task: SideTask, *, restart_after: float = RESTART_AFTER) -> None:
    """Run `task` until cancelled, starting it again after a pause whenever it fails."""
    while True:
        try:
            await task()
        except Exception as exc:
            log.warning(f"{name} failed", error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(restart_after)


@contextlib.asynccontextmanager
async def running(tasks: dict[str, SideTask]) -> AsyncIterator[None]:
    """The side tasks, each supervised in a task of its own, for the life of the block."""
    started = [
        asyncio.create_task(supervise(name, task), name=f"falhook-{name.replace(' ', '-')}")
        for name, task in tasks.items()
    ]
    try:
        yield
    finally:
        for task in started:
            task.cancel()
        await asyncio.gather(*started, return_exceptions=True)
