"""The console's live streams end on the server's SIGTERM or SIGINT (console/server_exit.py):
the server's handler is chained while streams may be open, and put back after."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from falhook.console.server_exit import ServerExit


class ServerHandler:
    """What a server installs (uvicorn's handle_exit): notes the signals it was given."""

    def __init__(self) -> None:
        self.got: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.got.append(signum)


@pytest.fixture
def server() -> Iterator[ServerHandler]:
    handler = ServerHandler()
    before = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield handler
    finally:
        for sig, previous in before.items():
            signal.signal(sig, previous)


async def test_the_servers_signal_ends_the_streams_then_reaches_the_server(
    server: ServerHandler,
) -> None:
    ended = asyncio.Event()
    watch = ServerExit(ended.set)
    watch.arm()
    watch.arm()  # a second stream: chained once
    signal.raise_signal(signal.SIGTERM)
    await asyncio.wait_for(ended.wait(), 5)
    assert server.got == [signal.SIGTERM]  # once: not chained onto itself
    ended.clear()
    signal.raise_signal(signal.SIGINT)
    await asyncio.wait_for(ended.wait(), 5)
    assert server.got == [signal.SIGTERM, signal.SIGINT]
    watch.disarm()
    assert signal.getsignal(signal.SIGTERM) is server
    assert signal.getsignal(signal.SIGINT) is server


async def test_a_handler_installed_after_ours_is_left_in_place(server: ServerHandler) -> None:
    watch = ServerExit(lambda: None)
    watch.arm()
    later = ServerHandler()
    signal.signal(signal.SIGTERM, later)
    watch.disarm()
    assert signal.getsignal(signal.SIGTERM) is later
    assert signal.getsignal(signal.SIGINT) is server


async def test_without_a_server_nothing_is_chained() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        watch = ServerExit(lambda: None)
        watch.arm()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


async def test_outside_the_main_thread_nothing_is_chained(server: ServerHandler) -> None:
    def arm_there() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_arm())
        finally:
            loop.close()

    async def _arm() -> None:
        ServerExit(lambda: None).arm()

    await asyncio.to_thread(arm_there)
    assert signal.getsignal(signal.SIGTERM) is server
