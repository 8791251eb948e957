"""Ending the console's live streams when the server is told to stop.

A server stops in this order: it stops taking connections, waits for the responses in flight
to finish, and only then runs the app's lifespan shutdown. A tab's live stream never
finishes by itself, so uvicorn (without `--timeout-graceful-shutdown`) would wait for it
forever, and the lifespan, which would end it, never runs. ASGI has no message for "the
server is stopping", so the console listens for what tells the server: its SIGTERM and
SIGINT handler.

While a stream is open, the handler the server installed (a Python function: uvicorn's,
hypercorn's, asyncio's) is chained: the signal first ends the streams on the event loop,
then goes on to the server's handler as before. Nothing is chained outside the main thread
(signals are delivered there only), over Python's own default handlers (no server is
listening for them: a plain script, a test), or twice; `disarm` puts the server's handler
back if it is still ours (uvicorn puts back its predecessors itself when it exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
Handler = Callable[[int, FrameType | None], Any]


class ServerExit:
    def __init__(self, on_exit: Callable[[], None]) -> None:
        self.on_exit = on_exit
        self._chained: dict[int, tuple[Handler, Handler]] = {}  # signal: (ours, the server's)

    def arm(self) -> None:
        """Chain the server's handlers (called on the event loop, as a stream opens)."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            current = signal.getsignal(sig)
            if not _a_servers(current) or self._ours(sig, current):
                continue
            assert callable(current)
            ours = self._chain(loop, current)
            signal.signal(sig, ours)
            self._chained[sig] = (ours, current)

    def disarm(self) -> None:
        """The server's handlers back where ours still stand."""
        for sig, (ours, theirs) in self._chained.items():
            if signal.getsignal(sig) is ours:
                signal.signal(sig, theirs)
        self._chained.clear()

    def _ours(self, sig: int, handler: object) -> bool:
        chained = self._chained.get(sig)
        return chained is not None and chained[0] is handler

    def _chain(self, loop: asyncio.AbstractEventLoop, server: Handler) -> Handler:
        def handler(signum: int, frame: FrameType | None) -> None:
            # A signal handler runs between two bytecodes of whatever the main thread was
            # doing, the loop's own code included: hand the work to the loop, as asyncio's
            # own signal handling does.
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self.on_exit)
            server(signum, frame)

        return handler


def _a_servers(handler: object) -> bool:
    """A handler some server installed: a Python callable, not Python's own default."""
    return callable(handler) and handler is not signal.default_int_handler
