"""One run of a command: its own process group, stdin fed, stdout and stderr drained into
bounded tails, a timeout that stops the whole group.

- The child starts in a new session (``start_new_session``), so its process group holds it
  and everything it starts; stopping the run signals that group, grandchildren included.
- Stopping is SIGTERM to the group, then SIGKILL to whatever is left after ``kill_grace``.
  The same happens when the command exits but left processes behind: a run's processes do
  not outlive it (they would hold its pipes open, and pile up across events).
- stdin, stdout and stderr are pumped concurrently with the wait, so a child never blocks on
  a full pipe and a child that never reads stdin never blocks us.
- Cancelled (worker shutdown, ``[delivery].attempt_timeout``): the group is killed at once.

Everything is asyncio (subprocess transports); nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from falhook.sinks.exec_tail import LineTail

_CHUNK = 64 * 1024
_GROUP_POLL = 0.02  # seconds between checks that a signalled group is gone
_PIPE_LINGER = 1.0  # seconds to read what is left in the pipes once the group is gone


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
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,  # its own process group: a timeout stops its children too
    )
    out, err = LineTail(limits.stdout_lines), LineTail(limits.stderr_lines)
    assert proc.stdin and proc.stdout and proc.stderr
    pumps = [
        asyncio.create_task(_feed(proc.stdin, stdin)),
        asyncio.create_task(_drain(proc.stdout, out)),
        asyncio.create_task(_drain(proc.stderr, err)),
    ]
    try:
        timed_out = not await _exited_within(proc, limits.timeout)
        await stop_group(proc.pid, limits.kill_grace)
        await proc.wait()
        await _finish_pumps(pumps, _PIPE_LINGER)
    except BaseException:  # cancelled: nothing of this run may outlive it
        _signal_group(proc.pid, signal.SIGKILL)
        await _finish_pumps(pumps, 0)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(proc.wait(), 5.0)
        raise
    return Finished(
        returncode=proc.returncode if proc.returncode is not None else -signal.SIGKILL,
        timed_out=timed_out,
        seconds=time.monotonic() - started,
        stdout=out.lines(),
        stderr=err.lines(),
        stderr_bytes=err.total_bytes,
    )


async def _exited_within(proc: asyncio.subprocess.Process, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await proc.wait()
    except TimeoutError:
        return False
    return True


async def stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the process group, SIGKILL it if anything is left after `grace` seconds.
    Returns at once when the group is already empty."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        await asyncio.sleep(_GROUP_POLL)
        if not _signal_group(pgid, 0):
            return
    _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send sig to the group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed user (setuid): nothing more we can do
        return False
    return True


async def _feed(pipe: asyncio.StreamWriter, data: bytes) -> None:
    """Write the event to stdin and close it; a child that exits without reading is fine."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        pipe.write(data)
        await pipe.drain()
        pipe.close()
        await pipe.wait_closed()


async def _drain(pipe: asyncio.StreamReader, tail: LineTail) -> None:
    while chunk := await pipe.read(_CHUNK):
        tail.feed(chunk)


async def _finish_pumps(pumps: list[asyncio.Task[None]], linger: float) -> None:
    """Let the pumps reach the pipes' ends for up to `linger` seconds (a process that left
    the group may still hold a pipe open), then stop them."""
    if linger > 0:
        await asyncio.wait(pumps, timeout=linger)
    for task in pumps:
        task.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)
