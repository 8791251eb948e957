"""The spool file a download is written to: hashed on one thread, written back to disk on
another, filled from a small set of reused buffers.

The downloader asks for a buffer, reads the socket straight into it (one kernel copy, no
parser in between) and commits it: the bytes go to the hasher and to the file at once, and
the buffer comes back once hashed. Memory stays at BUFFERS x CHUNK whatever the file's size,
and no buffer is allocated or zero-filled per chunk.

The spool file is not fsync'd here: the data is written back as it arrives (so the final
fsync of a sink that keeps the file has almost nothing left to do), and a sink that keeps
the file (the disk sink hard-links it) fsyncs it itself. A sink that only reads it (S3,
Slack) pays for no durability it does not need.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# One buffer: what is read, hashed and written at once. Small enough to still be in the
# CPU cache when write() copies it into the page cache (docs/performance.md: buffer size).
CHUNK = 128 * 1024
HASH_AHEAD = 8  # filled buffers the hasher may be behind, at most
BUFFERS = HASH_AHEAD + 2  # those, plus the one being hashed and the one being filled
WRITEBACK_EVERY = 8 * 1024 * 1024


def _load_sync_file_range() -> Any:
    """Linux's sync_file_range(2), through libc: writeback without a device cache flush.
    The process's own symbols hold libc's: find_library would run ldconfig, a process
    started on import (and paid by every serverless cold start)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_WAIT_BEFORE, _WRITE = 1, 2  # SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE
# Writeback runs at most two ranges ahead of what the disk has finished, and the download
# at most MAX_UNWRITTEN ahead of that. An fsync of the store's WAL on the same file system
# waits for the data blocks the running journal transaction holds (ext4's ordered mode), so
# what a download has queued for the disk is what a webhook's commit may wait behind, and
# what it has left unwritten is what the sink's fsync must still write. The bound keeps both
# small whatever the kernel's dirty-page settings.
MAX_UNWRITTEN = 64 * 1024 * 1024


class _Flusher:
    """Writes a growing file back to disk while it downloads, on its own thread.

    Doing the disk's work alongside the network's leaves a later fsync almost nothing, so a
    download kept durably takes about max(network, disk) instead of network + disk, and a
    4 GiB file never sits dirty in the page cache in front of the store's own commits.
    sync_file_range writes each range back without the journal commit and device cache
    flush of an fdatasync; where it is missing (not Linux), writeback is left to the kernel.

    Ranges of WRITEBACK_EVERY bytes are started one after the other, each once the one
    before the last has reached the disk: the disk always has the next range queued, and
    never more than two, so a commit of the store waits behind little.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._target = 0  # bytes written so far, as last announced by the downloader
        self._started = 0  # writeback started up to here
        self._done_to = 0  # written back (waited for) up to here
        self._changed = threading.Condition()
        self._stopping = False
        self._failed = False
        self._thread: threading.Thread | None = None

    def poke(self, written: int) -> None:
        """`written` bytes are in the file; waits while the disk is MAX_UNWRITTEN behind."""
        if _sync_file_range is None:
            return
        with self._changed:
            self._target = written
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="falhook-flush", daemon=True)
                self._thread.start()
            self._changed.notify_all()
            while (
                written - self._done_to > MAX_UNWRITTEN
                and not self._failed
                and self._thread.is_alive()
            ):
                self._changed.wait(1.0)

    def _run(self) -> None:
        previous: tuple[int, int] | None = None  # the range started before the last one
        while True:
            with self._changed:
                while self._target == self._started and not self._stopping:
                    self._changed.wait()
                if self._stopping:
                    return
                start = self._started
                length = min(self._target - start, WRITEBACK_EVERY)
            if _sync_file_range(self.fd, start, length, _WRITE) != 0:
                self._fail()
                return  # best effort: a sink's fsync reports a real problem
            if previous is not None and _sync_file_range(self.fd, *previous, _WAIT_BEFORE) != 0:
                self._fail()
                return
            with self._changed:
                self._started = start + length
                if previous is not None:
                    self._done_to = previous[0] + previous[1]
                self._changed.notify_all()
            previous = (start, length)

    def _fail(self) -> None:
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    def stop(self) -> None:
        if self._thread is not None:
            with self._changed:
                self._stopping = True
                self._changed.notify_all()
            self._thread.join()
            self._thread = None


class _Hasher:
    """sha256 on its own thread. Hashing is the costliest step of a download; overlapped
    with the socket and the disk, it no longer adds to the download's time.
    Each buffer goes back to `free` once hashed."""

    _DONE = object()  # the end marker: no buffer is ever this object

    def __init__(self, free: queue.Queue[bytearray]) -> None:
        self._digest = hashlib.sha256()
        self._free = free
        self._queue: queue.Queue[Any] = queue.Queue()  # never longer than BUFFERS
        # The thread starts with the second buffer: a file of one buffer (most images and
        # documents) is hashed where it was read, without a thread's start and join.
        self._first: tuple[bytearray, int] | None = None
        self._thread: threading.Thread | None = None

    def update(self, buffer: bytearray, length: int) -> None:
        if self._thread is None:
            if self._first is None:
                self._first = (buffer, length)
                return
            self._thread = threading.Thread(target=self._run, name="falhook-hash", daemon=True)
            self._thread.start()
            self._queue.put(self._first)
        self._queue.put((buffer, length))

    def hexdigest(self) -> str:
        self.close()
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._thread is None:
            if self._first is not None:
                self._hash(*self._first)
                self._first = None
        elif self._thread.is_alive():
            self._queue.put(self._DONE)
            self._thread.join()

    def _hash(self, buffer: bytearray, length: int) -> None:
        self._digest.update(memoryview(buffer)[:length])  # releases the GIL when large
        self._free.put(buffer)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            self._hash(*item)


class SpoolError(Exception):
    """The spool file cannot be made or written (a full disk, no inodes, a missing folder);
    the message names the path. Not an OSError: it must not pass for a network failure."""


class SpoolWriter:
    """Writes one file: `buffer()` / `commit(n)` for bytes read in place, `add(data)` for
    bytes that already exist (a decoded data: URI, a decompressed body), then `finish()`."""

    def __init__(
        self,
        path: Path,
        *,
        write_behind: bool = True,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        """`on_written(n)` is called (on the writing thread) whenever the file's first n bytes
        are written: a sink streaming the file may read that far. It is called with 0 once
        the file exists."""
        self.path = path
        self._on_written = on_written
        # The file first: if it cannot be made, no thread has been started for it.
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool file {path} cannot be created: {_reason(exc)}") from exc
        self._write_behind = write_behind
        self.size = 0
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._buffers = 0  # made so far, up to BUFFERS (a small file needs one)
        self._hasher = _Hasher(self._free)
        self._current: bytearray | None = None
        self._fill = 0  # bytes in the current buffer (add() gathers small pieces)
        self._announced = 0
        self._flusher = _Flusher(self._fd)
        if on_written is not None:
            on_written(0)

    def buffer(self) -> memoryview:
        """Room to read into: the rest of the current buffer (a fresh one when it is full).
        Waits while the hasher holds every buffer, which bounds how far reading runs ahead."""
        if self._current is None:
            if self._free.empty() and self._buffers < BUFFERS:
                self._buffers += 1
                self._free.put(bytearray(CHUNK))
            self._current = self._free.get()
            self._fill = 0
        return memoryview(self._current)[self._fill :]

    def commit(self, length: int) -> None:
        """`length` bytes were read into the view `buffer()` returned."""
        self._fill += length
        self.size += length
        if self._fill == CHUNK:
            self._emit()

    def add(self, data: bytes | bytearray | memoryview) -> None:
        source = memoryview(data)
        while source:
            room = self.buffer()
            take = min(len(room), len(source))
            room[:take] = source[:take]
            self.commit(take)
            source = source[take:]

    def finish(self) -> str:
        """Write what is left, close; the hex sha256."""
        if self._fill:
            self._emit()
        self.close()
        return self._hasher.hexdigest()

    def close(self) -> None:
        self._hasher.close()
        self._flusher.stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _emit(self) -> None:
        buffer, length = self._current, self._fill
        assert buffer is not None
        self._current, self._fill = None, 0
        self._hasher.update(buffer, length)  # hashed and written at the same time
        view = memoryview(buffer)[:length]
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise SpoolError(f"spool file {self.path} cannot be written: {_reason(exc)}") from exc
        if self._on_written is not None:  # every byte committed so far is in the file now
            self._on_written(self.size)
        if self._write_behind and self.size - self._announced >= WRITEBACK_EVERY:
            self._flusher.poke(self.size)
            self._announced = self.size


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
