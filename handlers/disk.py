"""Disk sink: `<root>/<route>/<request_id>/<name>` plus `event.json`, written atomically.

Atomic means temporary name, fsync, rename, then fsync of the folder: a final name never
holds a partial file, and a rename over an existing file makes redelivery idempotent (one
file, the same bytes). The spool file is hard-linked when root and spool share a file system
(no copy of a 1 GiB video), copied otherwise.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from falhook.sinks.base import DeliveryContext, Permanent, Retryable, Sink, SinkEnv
from falhook.sinks.naming import id_component
from falhook.sinks.options import SinkOptions, read_options


class DiskOptions(SinkOptions):
    root: str = "falhook-data/files"  # relative to the config file's folder
    fsync: bool = True


class DiskSink(Sink):
    # The spool file itself becomes the final file (hard link): the download writes it back
    # to disk as it arrives, so the fsync here has little left to do.
    keeps_files = True

    def __init__(self, name: str, options: dict[str, Any], env: SinkEnv) -> None:
        opts = read_options(name, DiskOptions, options)
        self.fsync = opts.fsync
        path = Path(opts.root).expanduser()
        self.root = (path if path.is_absolute() else env.base_dir / path).resolve()
        self.name = name

    async def deliver(self, ctx: DeliveryContext) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(self._write, ctx)
        except OSError as exc:
            # A full disk or a vanished mount may recover; a permission problem will not.
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise Permanent(f"cannot write under {self.root}: {exc.strerror}") from exc
            raise Retryable(f"disk write failed: {exc.strerror or exc}") from exc

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
            self._place(file.local_path, final)
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
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
