"""Downloads: each File streamed once to a spool file, never whole in memory.

The download runs in a worker thread with a synchronous httpx client reading raw chunks:
the event loop that serves webhooks never waits on it, and reading this way keeps pace with
curl (an async `aiter_bytes` loop reached about a third of curl's throughput here). The
sha256 is computed on the way; Content-Length, `file_size` and `max_file_bytes` are checked
while streaming; the file is fsync'd before it is handed over, and on any failure (or
cancellation) the partial file is removed.

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
import queue
import secrets
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from receiver.envelope import FileRef, decode_data_uri
from receiver.netguard import AddressGuard, GuardedBackend, RefusedAddress, Resolver, resolve

CHUNK = 1024 * 1024  # what is hashed and written at once, and what one socket read may return
DOWNLOAD_NICE = 10  # downloads yield the CPU to webhook intake when both want it
DOWNLOAD_THREADS = 8
WRITEBACK_EVERY = 8 * 1024 * 1024
HASH_QUEUE = 4  # chunks waiting for the hasher thread, at most
_REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(Exception):
    """A download failed; ``retryable`` says whether trying again later may help."""

    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FetchRetryable(FetchError):
    """Network errors, timeouts, 408, 429, 5xx, a body shorter than announced."""

    retryable = True


class FetchPermanent(FetchError):
    """Over max_file_bytes, a refused address, other 4xx, a bad URL or data: URI."""

    retryable = False


class _Stopped(FetchRetryable):
    """The caller went away (cancelled, or the fetcher closed): abandon the download."""

    def __init__(self) -> None:
        super().__init__("download abandoned: cancelled or the fetcher closed")


@dataclass(frozen=True)
class FetchedFile:
    ref: FileRef
    local_path: Path
    size: int
    sha256: str  # hex
    content_type: str | None


# --- the spool file ------------------------------------------------------------------------


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
# SYNC_FILE_RANGE_WRITE alone: start writeback of the new range and return. Waiting for it
# as well (WAIT_BEFORE | WRITE | WAIT_AFTER) doubled the kernel time of a 1 GiB download and
# halved its throughput here; the block queue already throttles a writer that runs ahead
# (sync_file_range blocks when it is full), and the final fsync waits for what is left.
_SYNC_RANGE_FLAGS = 2


class _Flusher:
    """Writes a growing file back to disk while it downloads, on its own thread.

    Doing the disk's work alongside the network's leaves the final fsync almost nothing,
    so a download takes about max(network, disk) instead of network + disk, and a 4 GiB
    file never sits dirty in the page cache in front of the store's own commits. On Linux,
    sync_file_range writes each range back without the journal commit and device cache
    flush of an fdatasync (the final fsync does those once); elsewhere fdatasync.
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


class _Hasher:
    """sha256 on its own thread. Hashing (about 2 GB/s on one core) is the costliest step of
    a download; overlapped with the socket and the disk, downloads keep pace with curl.
    Chunks handed over must not change afterwards."""

    _DONE = object()  # the end marker: no chunk is ever this object

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=HASH_QUEUE)
        self._thread = threading.Thread(target=self._run, name="falhook-hash", daemon=True)
        self._thread.start()

    def update(self, data: bytes | bytearray) -> None:
        self._queue.put(data)  # blocks when HASH_QUEUE chunks behind: memory stays bounded

    def hexdigest(self) -> str:
        self.close()
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._DONE)
            self._thread.join()

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is self._DONE:
                return
            self._digest.update(data)  # releases the GIL for large buffers


class _SpoolWriter:
    """Hashes and writes a stream in CHUNK-sized pieces: small reads are gathered into a
    CHUNK buffer, full-sized ones go straight through."""

    def __init__(self, path: Path) -> None:
        self.size = 0
        self._hasher = _Hasher()
        self._buffer = bytearray(CHUNK)
        self._view = memoryview(self._buffer)
        self._fill = 0
        self._written = 0
        self._announced = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._flusher = _Flusher(self._fd)

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self._fill == 0 and len(data) >= CHUNK:
            self._emit(data)
            return
        pos = 0
        while pos < len(data):
            take = min(CHUNK - self._fill, len(data) - pos)
            self._view[self._fill : self._fill + take] = data[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == CHUNK:
                self._emit(self._buffer)
                # the hasher still holds that buffer: gather the next one in a new one
                self._buffer = bytearray(CHUNK)
                self._view = memoryview(self._buffer)
                self._fill = 0

    def finish(self) -> str:
        """Write what is left, fsync, close; the hex sha256."""
        if self._fill:
            self._emit(self._buffer[: self._fill])
            self._fill = 0
        self._flusher.stop()
        os.fsync(self._fd)
        self.close()
        return self._hasher.hexdigest()

    def close(self) -> None:
        self._hasher.close()
        self._flusher.stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _emit(self, data: bytes | bytearray) -> None:
        self._hasher.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += len(data)
        if self._written - self._announced >= WRITEBACK_EVERY:
            self._flusher.poke(self._written)
            self._announced = self._written


# --- the network ---------------------------------------------------------------------------


class _LargeReadStream(httpcore.NetworkStream):
    """Lets one socket read return up to CHUNK bytes instead of httpcore's 64 KiB: the
    per-read cost of the HTTP parser is what kept httpx at a fraction of curl's speed."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max(max_bytes, CHUNK), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _LargeReadStream(self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _LargeReadBackend(GuardedBackend):
    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _LargeReadStream(super().connect_tcp(*args, **kwargs))


class Fetcher:
    """Downloads Files to local spool files.

    ``timeout`` is the connect and read *inactivity* timeout in seconds, not a limit on the
    whole download: a 4 GiB file may take longer than 300 s and still be healthy.
    ``resolver`` (host, port) -> addresses replaces the system resolver (tests, operators).
    """

    def __init__(
        self,
        *,
        max_file_bytes: int,
        timeout: float,
        allow_private_hosts: bool,
        max_redirects: int = 5,
        guard: AddressGuard | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.max_file_bytes = max_file_bytes
        self.max_redirects = max_redirects
        self.guard = guard or AddressGuard(allow_private=allow_private_hosts)
        self._closed = threading.Event()
        transport = httpx.HTTPTransport(retries=0)
        # httpx has no public seam for the connection backend: give its pool one that
        # resolves, judges and connects to the checked address itself (tests prove it is used).
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=DOWNLOAD_THREADS,
            network_backend=_LargeReadBackend(self.guard, resolver or resolve),
        )
        self._pool = ThreadPoolExecutor(
            DOWNLOAD_THREADS, thread_name_prefix="falhook-fetch", initializer=_lower_priority
        )
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,  # each hop is checked here, then by the guard
            trust_env=False,  # no .netrc credentials sent to whatever host a payload names
            # identity: the bytes hashed and stored are the file's own, not a compressed form
            headers={"User-Agent": "falhook", "Accept-Encoding": "identity"},
        )

    async def fetch(self, ref: FileRef, dest_dir: Path) -> FetchedFile:
        """Download (or decode) ref into a new file in dest_dir; FetchError on failure."""
        if self._closed.is_set():
            raise FetchRetryable(f"{ref.path}: the fetcher is closed")
        stop = threading.Event()
        try:
            job = self._pool.submit(self._fetch, ref, dest_dir, stop)
        except RuntimeError:  # closed between the check and here
            raise FetchRetryable(f"{ref.path}: the fetcher is closed") from None
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # The thread notices within one read; if it finished meanwhile, drop its file.
            stop.set()
            job.add_done_callback(_discard)
            raise

    async def aclose(self) -> None:
        """Stop: running downloads abandon their files at their next read."""
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._client.close)

    # --- in the worker thread ----------------------------------------------------------------

    def _fetch(self, ref: FileRef, dest_dir: Path, stop: threading.Event) -> FetchedFile:
        dest = dest_dir / f"dl-{secrets.token_hex(8)}"
        try:
            if ref.is_data_uri:
                return self._write_data_uri(ref, dest)
            return self._download(ref, dest, stop)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def _write_data_uri(self, ref: FileRef, dest: Path) -> FetchedFile:
        try:
            data, mime = decode_data_uri(ref.url)
        except ValueError as exc:
            raise FetchPermanent(f"{ref.path}: {exc}") from None
        self._check_size_limit(ref, len(data))
        self._check_file_size(ref, len(data))
        writer = _SpoolWriter(dest)
        try:
            writer.add(data)
            digest = writer.finish()
        finally:
            writer.close()
        return FetchedFile(ref, dest, len(data), digest, ref.content_type or mime)

    def _download(self, ref: FileRef, dest: Path, stop: threading.Event) -> FetchedFile:
        if ref.file_size is not None:
            self._check_size_limit(ref, ref.file_size)
        url = ref.url
        for _ in range(self.max_redirects + 1):
            _check_url(ref, url)
            try:
                with self._client.stream("GET", url) as resp:
                    if resp.status_code in _REDIRECTS and "location" in resp.headers:
                        url = _follow(ref, url, resp.headers["location"])
                        continue
                    _check_status(ref, resp.status_code)
                    return self._stream_to(ref, resp, dest, stop)
            except RefusedAddress as exc:
                raise FetchPermanent(f"{ref.path}: {exc}") from None
            except httpx.InvalidURL as exc:
                raise FetchPermanent(f"{ref.path}: invalid URL ({exc})") from None
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

    def _stream_to(
        self, ref: FileRef, resp: httpx.Response, dest: Path, stop: threading.Event
    ) -> FetchedFile:
        declared = resp.headers.get("content-length", "")
        expected = int(declared) if declared.isdigit() else None
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        raw = encoding in ("", "identity")
        if expected is not None and raw:
            self._check_size_limit(ref, expected)
            self._check_file_size(ref, expected)
        # A server that encodes anyway (we asked for identity) gets decoded: the file is
        # what is stored and hashed, never its compressed form.
        chunks: Iterable[bytes] = resp.iter_raw() if raw else resp.iter_bytes(CHUNK)
        writer = _SpoolWriter(dest)
        try:
            for chunk in _until(stop, self._closed, chunks):
                if writer.size + len(chunk) > self.max_file_bytes:
                    raise FetchPermanent(
                        f"{ref.path}: more than max_file_bytes ({self.max_file_bytes}) bytes"
                    )
                writer.add(chunk)
            received = resp.num_bytes_downloaded
            if expected is not None and received != expected:
                raise FetchRetryable(f"{ref.path}: body short: {received} of {expected} bytes")
            self._check_file_size(ref, writer.size)
            digest = writer.finish()
        finally:
            writer.close()
        if stop.is_set() or self._closed.is_set():
            raise _Stopped()
        content_type = ref.content_type or (
            resp.headers.get("content-type", "").split(";", 1)[0].strip() or None
        )
        return FetchedFile(ref, dest, writer.size, digest, content_type)

    def _check_size_limit(self, ref: FileRef, size: int) -> None:
        if size > self.max_file_bytes:
            raise FetchPermanent(
                f"{ref.path}: {size} bytes exceeds max_file_bytes ({self.max_file_bytes})"
            )

    @staticmethod
    def _check_file_size(ref: FileRef, size: int) -> None:
        if ref.file_size is not None and size != ref.file_size:
            raise FetchRetryable(f"{ref.path}: {size} bytes where file_size says {ref.file_size}")


def _check_url(ref: FileRef, url: str) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise FetchPermanent(f"{ref.path}: invalid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchPermanent(f"{ref.path}: unsupported URL scheme {parts.scheme!r}")
    if not host:
        raise FetchPermanent(f"{ref.path}: the URL names no host")


def _follow(ref: FileRef, url: str, location: str) -> str:
    try:
        return urljoin(url, location)
    except ValueError:
        raise FetchPermanent(f"{ref.path}: a redirect to an invalid URL") from None


def _check_status(ref: FileRef, status: int) -> None:
    if 200 <= status < 300:
        return
    message = f"{ref.path}: the file server answered {status}"
    if status in (408, 429) or status >= 500:
        raise FetchRetryable(message)
    raise FetchPermanent(message)


def _until(
    stop: threading.Event, closed: threading.Event, chunks: Iterable[bytes]
) -> Iterator[bytes]:
    """The chunks, until the caller or the fetcher gives up (checked between reads)."""
    for chunk in chunks:
        if stop.is_set() or closed.is_set():
            raise _Stopped()
        yield chunk


def _discard(job: Future[FetchedFile]) -> None:
    """A download nobody awaits any more: remove the file it may have finished."""
    if not job.cancelled() and job.exception() is None:
        job.result().local_path.unlink(missing_ok=True)
