"""Exec sink: run a command per event (adnanh/webhook's model), e.g. ffmpeg on the video.

    [sinks.transcode]
    type = "exec"
    command = ["ffmpeg", "-y", "-i", "{file:video}", "/srv/out/{request_id}.webm"]

- Never through a shell: ``command`` is the argv, placeholders are replaced inside single
  arguments (``exec_args``), the program itself is never templated.
- The event document arrives on stdin and as the file ``{event_json}`` (``exec_rundir``).
- Exit 0: delivered. Exit 75 (EX_TEMPFAIL): retried. Any other exit, a signal or the
  ``timeout``: dead, with the last lines of stderr in the error (``exec_process``).
- Once per event, like the Slack sink: a run that exited 0 is not repeated by retries or
  replays (its output comes back in ``ctx.previous``) unless ``events replay --force``.
  A worker that dies mid-run cannot know whether the command finished, so the command may
  still run twice: commands must be idempotent, and get FALHOOK_REQUEST_ID and
  FALHOOK_ATTEMPT to deduplicate with.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Annotated, Any, Literal

from msgspec import Meta

from falhook_sinks.base import (
    DeliveryContext,
    EventInfo,
    OptionError,
    Permanent,
    Retryable,
    Sink,
    SinkEnv,
)
from falhook_sinks.exec.args import file_paths, parse_command, render, safe_value
from falhook_sinks.exec.process import Finished, Limits, run
from falhook_sinks.exec.rundir import RunDir, prepare, remove
from falhook_sinks.options import Invalid, SinkOptions, option_key

EX_TEMPFAIL = 75  # sysexits.h: "temporary failure, try again later"
RUN_VARIABLES = (
    "FALHOOK_REQUEST_ID",
    "FALHOOK_ROUTE",
    "FALHOOK_SINK",
    "FALHOOK_ATTEMPT",
    "FALHOOK_FAL_STATUS",
    "FALHOOK_EVENT_JSON",
    "FALHOOK_FILES_DIR",
)
# What a command gets from the worker's environment with inherit_env = false.
BASIC_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ExecOptions(SinkOptions):
    command: Annotated[list[str], Meta(min_length=1)]
    timeout: Annotated[float, Meta(gt=0)] = 300.0
    kill_grace: Annotated[float, Meta(ge=0)] = 5.0
    env: dict[str, str] = {}
    inherit_env: bool = True
    cwd: str = ""  # the config file's folder
    run_on: Literal["all", "ok", "error"] = "all"
    stderr_lines: Annotated[int, Meta(ge=1, le=200)] = 20
    stdout_lines: Annotated[int, Meta(ge=0, le=200)] = 10
    concurrency: Annotated[int, Meta(ge=0)] = 0  # runs at once in this process; 0: no limit

    def check(self) -> None:
        if any("\x00" in arg for arg in self.command):
            raise Invalid("command", "must not hold NUL characters")
        parse_command(self.command)
        for key, value in self.env.items():
            if not _ENV_NAME.match(key):
                raise Invalid("env", f"{key!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
            if key in RUN_VARIABLES:
                raise Invalid("env", f"{key} is set by falhook for each run")
            if "\x00" in value:
                raise Invalid("env", f"{key}'s value must not hold NUL characters")


class ExecSink(Sink):
    options_type = ExecOptions

    def __init__(self, name: str, opts: ExecOptions, env: SinkEnv) -> None:
        self.name = name
        self.command = parse_command(opts.command)
        self.program = opts.command[0]
        self.run_on = opts.run_on
        self.limits = Limits(opts.timeout, opts.kill_grace, opts.stdout_lines, opts.stderr_lines)
        cwd = Path(opts.cwd or ".").expanduser()
        self.cwd = (cwd if cwd.is_absolute() else env.base_dir / cwd).resolve()
        if not self.cwd.is_dir():
            raise OptionError(option_key(name, "cwd"), f"{self.cwd} is not a folder")
        self.environment = {**_inherited(opts.inherit_env), **opts.env}
        self.concurrency = opts.concurrency
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        problem = _program_problem(self.program, self.cwd, self.environment.get("PATH"))
        if problem:
            raise OptionError(option_key(name, "command"), problem)

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any]:
        if ctx.previous and ctx.previous.get("ran"):
            ctx.log.info("the command already ran for this event; not running it again")
            return ctx.previous
        skipped = self._skip_reason(ctx.event)
        if skipped:
            ctx.log.info("command not run", reason=skipped)
            return {"ran": False, "skipped": skipped}
        self._check_files(ctx)
        async with self._slot():
            try:
                run_dir = await asyncio.to_thread(prepare, ctx)
            except OSError as exc:  # the temporary folder is full or gone: may pass
                raise Retryable(f"cannot prepare the run's folder: {exc}") from None
            try:
                finished = await self._run(ctx, run_dir)
            finally:
                await asyncio.shield(asyncio.to_thread(remove, run_dir))
        return self._outcome(ctx, finished)

    def _slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """One of `concurrency` places to run (a semaphore of the running loop)."""
        if not self.concurrency:
            return contextlib.nullcontext()
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.concurrency))
        return self._slots[1]

    def _skip_reason(self, event: EventInfo) -> str | None:
        failed = _failed(event)
        if self.run_on == "ok" and failed:
            what = "has a payload_error" if event.ok else f"is {event.fal_status}"
            return f'run_on = "ok" and the event {what}'
        if self.run_on == "error" and not failed:
            return 'run_on = "error" and the event is OK'
        return None

    def _check_files(self, ctx: DeliveryContext) -> None:
        """A named file the event lacks is a clear, permanent error, before anything runs."""
        have = [f.path for f in ctx.files]
        missing = [path for path in file_paths(self.command) if path not in have]
        if not missing:
            return
        hint = '; a failed event has no files: run_on = "ok" skips those'
        hint = hint if _failed(ctx.event) else ""
        raise Permanent(
            f"the command needs {{file:{missing[0]}}}, but this event has no file at "
            f"{missing[0]!r} (its files: {', '.join(have) or 'none'}){hint}"
        )

    async def _run(self, ctx: DeliveryContext, run_dir: RunDir) -> Finished:
        event = ctx.event
        values = {
            "request_id": safe_value(event.request_id),
            "route": safe_value(event.route),
            "event_json": str(run_dir.event_json),
        }
        argv = render(self.command, values, run_dir.files)
        env = {**self.environment, **_run_variables(ctx, run_dir)}
        ctx.log.info("running command", program=self.program, attempt=ctx.attempt)
        try:
            return await run(
                argv, stdin=run_dir.document, env=env, cwd=self.cwd, limits=self.limits
            )
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            raise Permanent(f"cannot start {self.program!r}: {exc.strerror or exc}") from None
        except OSError as exc:  # out of processes, memory or file descriptors: may pass
            raise Retryable(f"cannot start {self.program!r}: {exc.strerror or exc}") from None

    def _outcome(self, ctx: DeliveryContext, done: Finished) -> dict[str, Any]:
        code = done.returncode
        ctx.log.info("command finished", exit_code=code, seconds=round(done.seconds, 3))
        if done.timed_out:
            raise Permanent(
                f"{self.program!r} timed out after {self.limits.timeout:g} s and was killed "
                f"with its process group{_stderr(done)}"
            )
        if code == 0:
            output: dict[str, Any] = {
                "ran": True,
                "exit_code": 0,
                "seconds": round(done.seconds, 3),
                "attempt": ctx.attempt,
            }
            if self.limits.stdout_lines:
                output["stdout"] = done.stdout
            return output
        if code == EX_TEMPFAIL:
            raise Retryable(f"{self.program!r} exited with 75 (EX_TEMPFAIL){_stderr(done)}")
        if code < 0:
            raise Permanent(f"{self.program!r} was killed by {_signal_name(-code)}{_stderr(done)}")
        raise Permanent(f"{self.program!r} exited with status {code}{_stderr(done)}")


def _failed(event: EventInfo) -> bool:
    """An ERROR event, or one whose result fal could not serialise: no files either way."""
    return not event.ok or event.payload_error is not None


def _stderr(done: Finished) -> str:
    """The tail of stderr for an error message: one line per stderr line."""
    if not done.stderr:
        return "; stderr was empty" if not done.stderr_bytes else ""
    shown = len(done.stderr)
    return f"; last {shown} line{'s' if shown > 1 else ''} of stderr:\n" + "\n".join(done.stderr)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _inherited(inherit: bool) -> dict[str, str]:
    if inherit:
        return dict(os.environ)
    return {k: os.environ[k] for k in BASIC_VARIABLES if k in os.environ}


def _run_variables(ctx: DeliveryContext, run_dir: RunDir) -> dict[str, str]:
    event = ctx.event
    return {
        "FALHOOK_REQUEST_ID": event.request_id.replace("\x00", ""),
        "FALHOOK_ROUTE": event.route.replace("\x00", ""),
        "FALHOOK_SINK": ctx.sink,
        "FALHOOK_ATTEMPT": str(ctx.attempt),
        "FALHOOK_FAL_STATUS": event.fal_status.replace("\x00", ""),
        "FALHOOK_EVENT_JSON": str(run_dir.event_json),
        "FALHOOK_FILES_DIR": str(run_dir.files_dir),
    }


def _program_problem(program: str, cwd: Path, path: str | None) -> str | None:
    """Why `program` cannot be run from `cwd` with this PATH, or None. Like exec: a name
    with a `/` is a path (relative to cwd), a bare name is looked up on PATH."""
    if "/" in program:
        found = cwd / program
        if not found.is_file() or not os.access(found, os.X_OK):
            return f"program {program!r} is not an executable file (looked in {cwd})"
        return None
    if shutil.which(program, path=path if path is not None else os.defpath) is None:
        return f"program {program!r} is not on PATH"
    return None
