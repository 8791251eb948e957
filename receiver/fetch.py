"""Downloads: each File streamed once to a spool file, never whole in memory.

The download runs in a worker thread with a synchronous httpx client reading raw chunks:
the event loop that serves webhooks never waits on it, and reading this way keeps pace with
curl (an async `aiter_bytes` loop reached about a third of curl's throughput here). The
sha256 is computed on the way; Content-Length, `file_size` and `max_file_bytes` are checked
while streaming; on any failure the partial file is removed.

`timeout` is an inactivity limit (connect, and each read), not a total: a 4 GiB video may
legitimately take longer than five minutes to arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from receiver.envelope import FileRef, decode_data_uri
from receiver.netguard import AddressGuard, GuardedBackend, RefusedAddress

CHUNK = 1024 * 1024
DOWNLOAD_NICE = 10  # downloads yield the CPU to webhook intake when both want it
DOWNLOAD_THREADS = 8
WRITEBACK_EVERY = 8 * 1024 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(Exception):
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FetchRetryable(FetchError):
    retryable = True


class FetchPermanent(FetchError):
    retryable = False


@dataclass(frozen=True)
class FetchedFile:
    ref: FileRef
    local_path: Path
    size: int
    sha256: str
    content_type: str | None


def _lower_priority() -> None:
    """Run this download thread (and the flusher it starts) at a higher nice value: Linux
    schedules threads one by one, so webhook intake on the event loop keeps the CPU it
    needs while a 1 GiB download takes whatever is left."""
    # Elsewhere (not Linux, or not permitted) downloads simply run at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DOWNLOAD_NICE)


def _load_sync_file_range() -> Any:
    """Linux's sync_file_range(2), through libc: writeback without a device cache flush."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
# SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
_SYNC_RANGE_FLAGS = 1 | 2 | 4


class _Flusher:
    """Writes a growing file back to disk while it downloads, on its own thread.

    The sinks must fsync what they keep; doing the disk's work alongside the network's
    leaves that final fsync almost nothing, so a download takes about max(network, disk)
    instead of network + disk, a 4 GiB file never sits dirty in the page cache, and the
    disk never holds a gigabyte queued in front of the store's own commits. On Linux,
    sync_file_range writes each range back without the journal commit and device cache
    flush of an fdatasync (the sink's final fsync does those once); elsewhere fdatasync.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.target = 0  # bytes written so far, as last announced by the downloader
        self._synced = 0
        self._wake = threading.Event()
        self._done = False
        self._thread: threading.Thread | None = None

    def poke(self, written: int) -> None:
        self.target = written
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="falhook-flush", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._done:
                return
            target = self.target
            try:
                if _sync_file_range is not None:
                    length = target - self._synced
                    if _sync_file_range(self.fd, self._synced, length, _SYNC_RANGE_FLAGS) != 0:
                        return  # the final fsync will report a real problem
                else:
                    os.fdatasync(self.fd)
            except OSError:
                return
            self._synced = target

    def stop(self) -> None:
        if self._thread is not None:
            self._done = True
            self._wake.set()
            self._thread.join()


class Fetcher:
    def __init__(
        self,
        *,
        max_file_bytes: int,
        timeout: float,
        allow_private_hosts: bool,
        max_redirects: int = 5,
        guard: AddressGuard | None = None,
    ) -> None:
        self.max_file_bytes = max_file_bytes
        self.max_redirects = max_redirects
        self.guard = guard or AddressGuard(allow_private=allow_private_hosts)
        transport = httpx.HTTPTransport(retries=0)
        # httpx has no public seam for the connection backend: give its pool one that
        # resolves, judges and connects to the checked address itself.
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=16,
            network_backend=GuardedBackend(self.guard),
        )
        self._pool = ThreadPoolExecutor(
            DOWNLOAD_THREADS, thread_name_prefix="falhook-fetch", initializer=_lower_priority
        )
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            # identity: the bytes hashed and stored are the file's own, not a compressed form
            headers={"User-Agent": "falhook", "Accept-Encoding": "identity"},
        )

    async def fetch(self, ref: FileRef, dest_dir: Path) -> FetchedFile:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._fetch, ref, dest_dir)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- in the worker thread ----------------------------------------------------------------

    def _fetch(self, ref: FileRef, dest_dir: Path) -> FetchedFile:
        dest = dest_dir / f"dl-{secrets.token_hex(8)}"
        try:
            if ref.is_data_uri:
                return self._write_data_uri(ref, dest)
            return self._download(ref, dest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def _write_data_uri(self, ref: FileRef, dest: Path) -> FetchedFile:
        try:
            data, mime = decode_data_uri(ref.url)
        except ValueError as exc:
            raise FetchPermanent(f"{ref.path}: {exc}") from None
        if len(data) > self.max_file_bytes:
            raise FetchPermanent(f"{ref.path}: {len(data)} bytes exceeds max_file_bytes")
        with open(dest, "wb") as fh:
            fh.write(data)
        return FetchedFile(
            ref, dest, len(data), hashlib.sha256(data).hexdigest(), ref.content_type or mime
        )

    def _download(self, ref: FileRef, dest: Path) -> FetchedFile:
        url = ref.url
        for _ in range(self.max_redirects + 1):
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("http", "https"):
                raise FetchPermanent(f"{ref.path}: unsupported URL scheme {scheme!r}")
            try:
                with self._client.stream("GET", url) as resp:
                    if resp.status_code in _REDIRECTS and "location" in resp.headers:
                        url = urljoin(url, resp.headers["location"])
                        continue
                    self._check_status(ref, resp.status_code)
                    return self._stream_to(ref, resp, dest)
            except RefusedAddress as exc:
                raise FetchPermanent(f"{ref.path}: {exc}") from None
            except httpx.RemoteProtocolError as exc:
                raise FetchRetryable(
                    f"{ref.path}: body short or connection broken ({exc})"
                ) from None
            except httpx.HTTPError as exc:
                cause = exc.__context__ or exc.__cause__
                if isinstance(cause, RefusedAddress):
                    raise FetchPermanent(f"{ref.path}: {cause}") from None
                raise FetchRetryable(f"{ref.path}: {type(exc).__name__}: {exc}") from None
        raise FetchPermanent(f"{ref.path}: more than {self.max_redirects} redirects")

    @staticmethod
    def _check_status(ref: FileRef, status: int) -> None:
        if 200 <= status < 300:
            return
        message = f"{ref.path}: the file server answered {status}"
        if status in (408, 429) or status >= 500:
            raise FetchRetryable(message)
        raise FetchPermanent(message)

    def _stream_to(self, ref: FileRef, resp: httpx.Response, dest: Path) -> FetchedFile:
        declared = resp.headers.get("content-length")
        expected = int(declared) if declared and declared.isdigit() else None
        if expected is not None and expected > self.max_file_bytes:
            raise FetchPermanent(
                f"{ref.path}: {expected} bytes exceeds max_file_bytes ({self.max_file_bytes})"
            )
        digest = hashlib.sha256()
        size = flushed = 0
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        flusher = _Flusher(fd)
        try:
            for chunk in resp.iter_raw(CHUNK):
                if size - flushed >= WRITEBACK_EVERY:
                    flusher.poke(size)
                    flushed = size
                size += len(chunk)
                if size > self.max_file_bytes:
                    raise FetchPermanent(
                        f"{ref.path}: more than max_file_bytes ({self.max_file_bytes}) bytes"
                    )
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            flusher.stop()
            os.close(fd)
        if expected is not None and size != expected:
            raise FetchRetryable(f"{ref.path}: body short: {size} of {expected} bytes")
        if ref.file_size is not None and size != ref.file_size:
            raise FetchRetryable(
                f"{ref.path}: got {size} bytes but file_size says {ref.file_size} (short body)"
            )
        content_type = ref.content_type or (
            resp.headers.get("content-type", "").split(";", 1)[0].strip() or None
        )
        return FetchedFile(ref, dest, size, digest.hexdigest(), content_type)
