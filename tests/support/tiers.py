"""What each test tier may not do, enforced while its tests run: a unit test that opens a
network socket or starts a process fails, and so does an in-process test that starts one.

Fixtures of a wider scope (a session's moto server, a module's emulator) are set up before
the guard and are not checked; the guard covers the test and its function-scoped fixtures.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest


class TierViolation(AssertionError):
    """A test did what its tier forbids: move it to the tier that allows it."""


def _refuse(what: str, tier: str, allowed: str) -> Any:
    def refused(*_: Any, **__: Any) -> NoReturn:
        raise TierViolation(f"a {tier} test may not {what}: move it to {allowed}")

    return refused


def forbid_processes(patch: pytest.MonkeyPatch, tier: str) -> None:
    refuse = _refuse("start a process", tier, "tests/process")
    patch.setattr(subprocess.Popen, "__init__", refuse)
    patch.setattr(asyncio, "create_subprocess_exec", refuse)
    patch.setattr(asyncio, "create_subprocess_shell", refuse)


def forbid_network(patch: pytest.MonkeyPatch, tier: str) -> None:
    """Connecting or binding an internet socket (the event loop's own socketpair is fine)."""
    refuse = _refuse("use the network", tier, "tests/inprocess")
    for method in ("connect", "connect_ex", "bind"):
        original = getattr(socket.socket, method)

        def guarded(self: socket.socket, address: Any, _original: Any = original) -> Any:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                refuse()
            return _original(self, address)

        patch.setattr(socket.socket, method, guarded)


def guard(tier: str, *, network: bool) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        forbid_processes(patch, tier)
        if not network:
            forbid_network(patch, tier)
        yield
