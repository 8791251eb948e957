"""What every console handler shares: the settings, the store roles it reads, the actions it
may take, the access rules, the live feed, the disk sinks' roots, and a short-lived count of
dead deliveries for the navigation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from falhook.config import Settings
from falhook.console.access import Access
from falhook.console.actions import Actions
from falhook.console.feed import ChangeFeed
from falhook.console.limits import LoginLimiter
from falhook.console.links import disk_roots
from falhook.console.overview import DayTrends
from falhook.store.roles import ConsoleReader, SubmissionReader

DEAD_TTL = 2.0  # seconds the navigation's dead count is reused


@dataclass
class ConsoleState:
    settings: Settings
    events: ConsoleReader
    submissions: SubmissionReader
    actions: Actions
    access: Access = field(init=False)
    limiter: LoginLimiter = field(init=False)
    feed: ChangeFeed = field(init=False)
    trends: DayTrends = field(init=False)
    _dead: tuple[float, int, int] = (0.0, -1, 0)  # (read at, feed's changes then, count)

    def __post_init__(self) -> None:
        self.access = Access(self.settings.console)
        self.limiter = LoginLimiter()
        self.feed = ChangeFeed(self.events, self.settings.console.stream_interval)
        self.trends = DayTrends(self.events, changes_seen=lambda: self.feed.published)
        self.roots = disk_roots(self.settings)

    async def dead_count(self) -> int:
        """Reused for DEAD_TTL seconds, unless the live feed has seen a change since (a
        tab refreshing on a change must not show the count from before it)."""
        at, seen, count = self._dead
        if time.monotonic() - at > DEAD_TTL or seen != self.feed.published:
            published = self.feed.published
            count = await self.events.dead_count()
            self._dead = (time.monotonic(), published, count)
        return count
