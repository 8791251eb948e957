"""Failed logins, limited per client and overall: a client that gave a wrong token too often
(the login form or a wrong `Authorization: Bearer`) waits before any token of its is checked
again, and so does everyone when wrong tokens pour in from many addresses at once.

Each limit is a sliding window of failure times: `PER_CLIENT` failures of one client, or
`OVERALL` failures of all clients, within `WINDOW` seconds lock token checks until the
oldest of them leaves the window. A valid session cookie is not a token check and is never
locked out. The counts live in the process (each process of a scaled-out console counts its
own) and forget clients beyond `CLIENTS` (the least recently failed first).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

WINDOW = 300.0  # seconds
PER_CLIENT = 10  # failed token checks of one client per window
OVERALL = 100  # failed token checks of all clients per window
CLIENTS = 4096  # clients remembered at most


class LoginLimiter:
    def __init__(
        self,
        *,
        window: float = WINDOW,
        per_client: int = PER_CLIENT,
        overall: int = OVERALL,
        clients: int = CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.per_client = per_client
        self.overall = overall
        self.clients = clients
        self.clock = clock
        self._by_client: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def retry_after(self, client: str) -> int | None:
        """Seconds until this client's token may be checked again; None: it may be now."""
        now = self.clock()
        waits = [
            _wait(self._all, self.overall, now, self.window),
            _wait(self._by_client.get(client), self.per_client, now, self.window),
        ]
        longest = max((w for w in waits if w is not None), default=None)
        return None if longest is None else max(1, math.ceil(longest))

    def failed(self, client: str) -> None:
        """Count a wrong token from this client."""
        now = self.clock()
        times = self._by_client.pop(client, None) or deque()
        times.append(now)
        _forget_before(times, now - self.window)
        self._by_client[client] = times  # the most recently failed last
        while len(self._by_client) > self.clients:
            self._by_client.popitem(last=False)
        self._all.append(now)
        _forget_before(self._all, now - self.window)

    def succeeded(self, client: str) -> None:
        """The right token: this client's earlier mistakes are forgiven (not the overall)."""
        self._by_client.pop(client, None)


def _forget_before(times: deque[float], start: float) -> None:
    while times and times[0] <= start:
        times.popleft()


def _wait(times: deque[float] | None, limit: int, now: float, window: float) -> float | None:
    """How long until fewer than `limit` of these failures are within the window."""
    if times is None:
        return None
    _forget_before(times, now - window)
    if len(times) < limit:
        return None
    return times[len(times) - limit] + window - now
