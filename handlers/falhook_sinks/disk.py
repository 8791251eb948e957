"""Disk sink: `<root>/<route>/<request_id>/<name>` plus `event.json`, written atomically.

Atomic means temporary name, fsync, rename, then fsync of the folder: a final name never
holds a partial file, and a rename over an existing file makes redelivery idempotent (one
file, the same bytes). The spool file is hard-linked when root and spool share a file system
(no copy of a 1 GiB video), copied otherwise.

Files get the mode any tool would give them (0666 less the process umask: 0644 usually), or
`file_mode`. Every filesystem error names the path it happened at.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from falhook_sinks.base import (
    DeliveryContext,
    Permanent,
    Retryable,
    Sink,
    SinkEnv,
    SinkProblem,
    on_disk,
)
from falhook_sinks.naming import id_component
from falhook_sinks.options import Invalid, SinkOptions, option_key

_OCTAL = re.compile(r"[0-7]{3,4}")
# Errors that need someone to fix permissions: retrying will not help. A folder layout problem
# (ENOTDIR) is retried: it is found at start-up, and one arising later may be put right.
_PERMANENT_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


class DiskOptions(SinkOptions):
    root: str = "falhook-data/files"  # relative to the config file's folder
    fsync: bool = True
    # Permissions of the files written: 0o644 in TOML (or "644"); default 0666 less the umask.
    file_mode: int | str | None = None

    def check(self) -> None:
        if self.file_mode is not None:
            parse_mode(self.file_mode)


def parse_mode(value: int | str) -> int:
    """A permission mode from TOML: 0o644 (an integer) or "644" / "0644" (octal digits)."""
    if isinstance(value, str):
        digits = value.strip().removeprefix("0o")
        if not _OCTAL.fullmatch(digits):
            raise Invalid("file_mode", f'expected an octal mode like 0o644 or "644", got {value!r}')
        value = int(digits, 8)
    if not 0 <= value <= 0o777:
        raise Invalid("file_mode", f"expected a mode from 0o000 to 0o777, got {oct(value)}")
    return value


def umask() -> int:
    """The process umask, read without changing it (os.umask sets it, racing other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    current = os.umask(0o022)  # elsewhere: set and restore at once, at start-up only
    os.umask(current)
    return current


class DiskSink(Sink):
    # The spool file itself becomes the final file (hard link): the download writes it back
    # to disk as it arrives, so the fsync here has little left to do.
    keeps_files = True
    options_type = DiskOptions

    def __init__(self, name: str, opts: DiskOptions, env: SinkEnv) -> None:
        self.fsync = opts.fsync
        self.file_mode = (
            parse_mode(opts.file_mode) if opts.file_mode is not None else 0o666 & ~umask()
        )
        path = Path(opts.root).expanduser()
        self.root = (path if path.is_absolute() else env.base_dir / path).resolve()
        self.name = name

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(self._write, ctx)
        except OSError as exc:
            where = _path_of(exc) or str(self.root)
            reason = exc.strerror or str(exc)
            # A full disk or a vanished mount may recover; a permission problem will not.
            if exc.errno in _PERMANENT_ERRNOS:
                raise Permanent(f"disk write failed at {where}: {reason}") from exc
            raise Retryable(f"disk write failed at {where}: {reason}") from exc

    async def check(self) -> list[SinkProblem]:
        """The root must be a folder falhook can create files in."""
        problem = await asyncio.to_thread(self._check_root)
        return [] if problem is None else [SinkProblem(option_key(self.name, "root"), problem)]

    def _check_root(self) -> str | None:
        probe = self.root / f".falhook-check-{secrets.token_hex(4)}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return f"{_path_of(exc) or self.root} is not writable: {exc.strerror or exc}"
        return None

    def _folder(self, ctx: DeliveryContext) -> Path:
        folder = self.root / id_component(ctx.event.route) / id_component(ctx.event.request_id)
        # Defence in depth: whatever the names, nothing leaves root.
        if os.path.commonpath([self.root, folder.resolve()]) != str(self.root):
            raise Permanent("refusing a path outside the sink's root")
        return folder

    def _write(self, ctx: DeliveryContext) -> dict[str, Any]:
        folder = self._folder(ctx)
        folder.mkdir(parents=True, exist_ok=True)
        # A crash between link and rename leaves a temporary behind; the lease makes this
        # delivery the only writer of the folder, so earlier ones can go.
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        written: dict[str, str] = {}
        for file in ctx.files:
            final = folder / file.name
            if final.parent != folder:
                raise Permanent(f"unsafe file name {file.name!r}")
            self._place(on_disk(file), final)
            written[file.path] = str(final)
        self._write_bytes(folder / "event.json", ctx.event.to_json_bytes())
        if self.fsync:
            _fsync_dir(folder)
        return {"folder": str(folder), "files": written}

    def _temp_beside(self, final: Path) -> Path:
        return final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")

    def _place(self, source: Path, final: Path) -> None:
        tmp = self._temp_beside(final)
        try:
            try:
                os.link(source, tmp)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(source, tmp)
            # A hard link shares the spool file's inode (created 0600): set the mode on it.
            os.chmod(tmp, self.file_mode)
            if self.fsync:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def _write_bytes(self, final: Path, data: bytes) -> None:
        tmp = self._temp_beside(final)
        try:
            with open(tmp, "wb") as fh:
                os.fchmod(fh.fileno(), self.file_mode)
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


def _path_of(exc: OSError) -> str | None:
    return str(exc.filename) if exc.filename is not None else None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
