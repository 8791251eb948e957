"""One run of a command: its own process group, stdin fed, stdout and stderr drained into
bounded tails, a timeout that stops the whole group.

- The child starts in a new session (``start_new_session``), so its process group holds it
  and everything it starts; stopping the run signals that group, grandchildren included.
- Stopping is SIGTERM to the group, then SIGKILL to whatever is left after ``kill_grace``.
  The same happens when the command exits but left processes behind: a run's processes do
  not outlive it (they would hold its pipes open, and pile up across events).
- stdout and stderr are read as they arrive (a subprocess protocol feeds them to their
  tails) and stdin is written as the child takes it, so a child never blocks on a full pipe
  and a child that never reads stdin never blocks us. The command's end is its exit, not
  its pipes' end: a process it left behind may hold them open.
- Cancelled (worker shutdown, ``[delivery].attempt_timeout``): the group is killed at once.

Everything is asyncio (subprocess transports); nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from falhook_sinks.exec.tail import LineTail

_GROUP_POLL = 0.05  # seconds between checks that a signalled group is gone
_PIPE_LINGER = 1.0  # seconds to read what is left in the pipes once the group is gone
_REAP_WAIT = 5.0  # seconds for killed processes to end, and their end to be reported


@dataclass(frozen=True)
class Limits:
    timeout: float  # seconds for the command to exit
    kill_grace: float  # seconds between SIGTERM and SIGKILL
    stdout_lines: int
    stderr_lines: int


@dataclass(frozen=True)
class Finished:
    returncode: int  # negative: killed by that signal
    timed_out: bool
    seconds: float
    stdout: list[str]  # the last lines
    stderr: list[str]
    stderr_bytes: int


async def run(
    argv: Sequence[str],
    *,
    stdin: bytes,
    env: Mapping[str, str],
    cwd: Path,
    limits: Limits,
) -> Finished:
    """Run argv to its end (or its timeout); OSError when it cannot be started."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    out, err = LineTail(limits.stdout_lines), LineTail(limits.stderr_lines)
    transport, pipes = await loop.subprocess_exec(
        lambda: _Pipes(loop, out, err),
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,  # its own process group: a timeout stops its children too
    )
    pgid = transport.get_pid()
    try:
        _feed(transport, stdin)
        timed_out = not await _within(pipes.exited, limits.timeout)
        await stop_group(pgid, limits.kill_grace)
        await _within(pipes.exited, _REAP_WAIT)
        await _within(pipes.closed, _PIPE_LINGER)
    except BaseException:  # cancelled: nothing of this run may outlive it
        await kill_group(pgid)
        raise
    finally:
        transport.close()
    code = transport.get_returncode()
    return Finished(
        returncode=code if code is not None else -signal.SIGKILL,
        timed_out=timed_out,
        seconds=time.monotonic() - started,
        stdout=out.lines(),
        stderr=err.lines(),
        stderr_bytes=err.total_bytes,
    )


class _Pipes(asyncio.SubprocessProtocol):
    """stdout and stderr straight into their tails (no buffering beyond them); `exited` when
    the process ends (its pipes may stay open longer), `closed` when both pipes are."""

    def __init__(self, loop: asyncio.AbstractEventLoop, out: LineTail, err: LineTail) -> None:
        self.tails = {1: out, 2: err}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.tails[fd].feed(data if isinstance(data, bytes) else data.encode())

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.tails.pop(fd, None)
        if not self.tails and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


def _feed(transport: asyncio.SubprocessTransport, data: bytes) -> None:
    """The event on stdin, then end of file. The transport buffers what the pipe cannot take
    yet; a child that exits without reading only loses its stdin (no error for us)."""
    # uvloop's pipe transports (`falhook serve` runs on uvloop) are not asyncio subclasses.
    stdin = cast(asyncio.WriteTransport | None, transport.get_pipe_transport(0))
    # A child that was quick has exited already (a loaded machine lets it), and uvloop has
    # closed its stdin: writing there would raise instead of being dropped.
    if stdin is None or stdin.is_closing():
        return
    stdin.write(data)
    stdin.close()  # after what is buffered is written


async def _within(future: asyncio.Future[None], seconds: float) -> bool:
    """Whether future is done within `seconds` (it is not cancelled on a timeout)."""
    done, _ = await asyncio.wait({future}, timeout=seconds)
    return bool(done)


async def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the process group, SIGKILL it if anything still runs after `grace` seconds,
    and wait (a bounded while) until nothing does. At once when the group is empty."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    if await _group_ends(pgid, grace):
        return
    _signal_group(pgid, signal.SIGKILL)
    await _group_ends(pgid, _REAP_WAIT)


async def kill_group(pgid: int) -> None:
    """SIGKILL the group now (a cancelled run), then wait a bounded while for it to end."""
    _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(asyncio.CancelledError):
        await _group_ends(pgid, _REAP_WAIT)


async def _group_ends(pgid: int, seconds: float) -> bool:
    """Poll until no process of the group runs; False if one still does after `seconds`."""
    deadline = time.monotonic() + seconds
    while await asyncio.to_thread(_group_runs, pgid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_GROUP_POLL)
    return True


def _group_runs(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: where PID 1 never
    reaps orphans (a container without an init), a killed grandchild stays one for good."""
    if not _signal_group(pgid, 0):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc (not Linux): the group exists, so count it as running
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                # After the command name: state, ppid, pgrp.
                state, _, pgrp = fh.read().rsplit(b")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(pgrp) == pgid and state not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, sig: int) -> bool:
    """Send sig to the group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed user (setuid): nothing more we can do
        return False
    return True
