"""A big file fetched in several ranges at once, into one spool file (where the server
allows ranges: fal's CDN does).

The first request asked for the first range. When the server answered 206 with the file's
total size, the rest is split into parts that a few threads fetch at once, each on its own
connection, each writing at its offset of the same file. The sha256 is computed in order by
the calling thread, reading the file as far as it is complete from the start (what is in
place is also what a streaming sink may read). Every part must be answered 206 with the
range asked and the same total: a server that answers otherwise, or sends fewer bytes, is a
retryable error.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from falhook.downloads.connections import GuardedConnection
from falhook.downloads.errors import FetchError, FetchPermanent, FetchRetryable, Stopped
from falhook.downloads.spool import CHUNK, SpoolError
from falhook.downloads.stream import read_some
from falhook.intake.envelope import FileRef

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", re.I)
_HASH_READ = 1024 * 1024


@dataclass(frozen=True)
class RangePlan:
    threshold: int  # files at least this large are fetched in parts (0: never)
    size: int  # bytes per part
    parts: int  # parts fetched at once


def content_range(resp: http.client.HTTPResponse) -> tuple[int, int, int] | None:
    """(first, last, total) of a 206 answer's Content-Range, or None when it has none."""
    match = _CONTENT_RANGE.match(resp.getheader("content-range") or "")
    if match is None:
        return None
    first, last, total = (int(g) for g in match.groups())
    return (first, last, total) if first <= last < total else None


def parts_of(start: int, total: int, size: int) -> list[tuple[int, int]]:
    """[(first, last)] covering start..total-1 in parts of `size` bytes."""
    return [(a, min(a + size, total) - 1) for a in range(start, total, size)]


Request = Callable[[tuple[int, int]], tuple[GuardedConnection, http.client.HTTPResponse]]
Release = Callable[[GuardedConnection, http.client.HTTPResponse], None]


class RangedDownload:
    """One file: the first range's answer is already here; the rest is fetched by `pool`'s
    threads through `request` (which opens the connection and sends the ranged GET)."""

    def __init__(
        self,
        ref: FileRef,
        dest: Path,
        *,
        total: int,
        first: tuple[GuardedConnection, http.client.HTTPResponse, int],
        plan: RangePlan,
        request: Request,
        release: Release,
        pool: ThreadPoolExecutor,
        stopped: Callable[[], bool],
        on_written: Callable[[int], None] | None,
        deadline: float,
    ) -> None:
        self.ref, self.dest, self.total = ref, dest, total
        self.plan, self.request, self.release, self.pool = plan, request, release, pool
        self.stopped, self.on_written = stopped, on_written
        self.deadline = time.monotonic() + deadline
        conn, resp, last = first
        # The rest in parts; a file under the threshold (its size was unknown) in one.
        size = plan.size if total >= plan.threshold else total
        self.parts = [(0, last), *parts_of(last + 1, total, size)]
        self.written = [0] * len(self.parts)
        self.first = (conn, resp)
        self.changed = threading.Condition()
        self.error: FetchError | None = None
        self.next_part = 1
        self.conns: list[GuardedConnection] = [conn]

    def run(self) -> str:
        """Fetch every part; the file's sha256 (FetchError when it cannot be had)."""
        try:
            self.fd = os.open(self.dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise SpoolError(f"spool file {self.dest} cannot be created: {exc.strerror}") from exc
        if self.on_written is not None:
            self.on_written(0)  # the file exists: a streaming sink may open it
        workers: list[Future[None]] = []
        try:
            workers.append(self.pool.submit(self._first_part))
            workers += [self.pool.submit(self._parts) for _ in range(self.plan.parts - 1)]
            return self._hash_in_order()
        except BaseException:
            self._fail(Stopped())  # the workers stop at their next read
            for conn in self.conns:
                conn.abort()
            raise
        finally:
            for worker in workers:
                worker.exception()  # wait: none may write into a closed descriptor
            os.close(self.fd)

    # --- the parts (worker threads) ------------------------------------------------------------

    def _first_part(self) -> None:
        conn, resp = self.first
        self._guarded(partial(self._read, 0, conn, resp))
        self._parts()

    def _parts(self) -> None:
        while (index := self._take()) is not None:
            self._guarded(partial(self._fetch, index))

    def _take(self) -> int | None:
        with self.changed:
            if self.error is not None or self.next_part >= len(self.parts):
                return None
            self.next_part += 1
            return self.next_part - 1

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except FetchError as exc:
            self._fail(exc)
        except (OSError, http.client.HTTPException) as exc:
            self._fail(FetchRetryable(f"{self.ref.path}: a part failed ({type(exc).__name__})"))

    def _fetch(self, index: int) -> None:
        first, last = self.parts[index]
        conn, resp = self.request((first, last))
        with self.changed:
            self.conns.append(conn)
        try:
            if resp.status != 206 or content_range(resp) != (first, last, self.total):
                raise FetchRetryable(
                    f"{self.ref.path}: asked for bytes {first}-{last}, the server answered "
                    f"{resp.status} {resp.getheader('content-range') or ''}".rstrip()
                )
            self._read(index, conn, resp)
        except BaseException:
            conn.close()
            raise
        self.release(conn, resp)

    def _read(self, index: int, conn: GuardedConnection, resp: http.client.HTTPResponse) -> None:
        first, last = self.parts[index]
        buffer = memoryview(bytearray(CHUNK))
        offset, end = first, last + 1
        while offset < end:
            if self.stopped() or self.error is not None:
                raise Stopped()
            if time.monotonic() > self.deadline:
                raise FetchRetryable(f"{self.ref.path}: took longer than the download deadline")
            room = buffer[: min(CHUNK, end - offset)]
            n = read_some(resp, room)
            if not n:
                raise FetchRetryable(
                    f"{self.ref.path}: bytes {first}-{last} ended after {offset - first}"
                )
            self._write(room[:n], offset)
            offset += n
            with self.changed:
                self.written[index] = offset - first
                self.changed.notify_all()

    def _write(self, data: memoryview, offset: int) -> None:
        try:
            while data:
                done = os.pwrite(self.fd, data, offset)
                data, offset = data[done:], offset + done
        except OSError as exc:
            raise SpoolError(f"spool file {self.dest} cannot be written: {exc.strerror}") from exc

    def _fail(self, error: FetchError) -> None:
        with self.changed:
            if self.error is None:
                self.error = error
            self.changed.notify_all()

    # --- the hash (calling thread) -------------------------------------------------------------

    def _in_place(self) -> int:
        """How far the file is complete from its start."""
        done = 0
        for (first, last), written in zip(self.parts, self.written, strict=True):
            done = first + written
            if written < last - first + 1:
                break
        return done

    def _hash_in_order(self) -> str:
        digest = hashlib.sha256()
        hashed = 0
        with open(self.dest, "rb", buffering=0) as reader:
            while hashed < self.total:
                with self.changed:
                    while (ready := self._in_place()) <= hashed and self.error is None:
                        self.changed.wait(1.0)
                        if self.stopped():
                            raise Stopped()
                    if self.error is not None:
                        raise self.error
                while hashed < ready:
                    chunk = os.pread(reader.fileno(), min(_HASH_READ, ready - hashed), hashed)
                    if not chunk:
                        raise FetchPermanent(f"{self.ref.path}: the spool file lost bytes")
                    digest.update(chunk)
                    hashed += len(chunk)
                if self.on_written is not None:
                    self.on_written(hashed)
        return digest.hexdigest()
