"""Downloads: each File streamed once to a spool file, never whole in memory.

Each download runs in a worker thread, so the event loop that serves webhooks never waits on
it. The body is read with http.client straight into the spool writer's buffers (see
falhook.downloads.connections for why not httpx), hashed with sha256 on the way, and written back to
disk as it arrives (falhook.downloads.spool). Content-Length, `file_size` and `max_file_bytes` are
checked while streaming; on any failure (or cancellation) the partial file is removed.

`timeout` is an inactivity limit (connect, and each read), not a total: a 4 GiB video may
legitimately take longer than five minutes to arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import secrets
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

from falhook.downloads.connections import (
    CheckedResponse,
    ConnectionPool,
    GuardedConnection,
    Origin,
    split_url,
)
from falhook.downloads.errors import (
    FetchError,
    FetchPermanent,
    FetchRefused,
    FetchRetryable,
    Stopped,
)
from falhook.downloads.netguard import (
    AddressGuard,
    RefusedAddress,
    Resolver,
    connect_guarded,
    resolve,
)
from falhook.downloads.ranged import RangedDownload, RangePlan, content_range
from falhook.downloads.spool import SpoolError, SpoolWriter
from falhook.downloads.stream import (
    TransferLimits,
    content_encoding,
    content_type_of,
    declared_length,
    read_body,
)
from falhook.intake.envelope import FileRef, decode_data_uri

__all__ = ["FetchError", "FetchPermanent", "FetchRetryable", "FetchedFile", "Fetcher"]

DOWNLOAD_NICE = 10  # downloads yield the CPU to webhook intake when both want it
DOWNLOAD_THREADS = 8
_REDIRECTS = (301, 302, 303, 307, 308)
_DRAIN_LIMIT = 64 * 1024  # a redirect body up to this size is read off to keep the connection
# identity: the bytes hashed and stored are the file's own, not a compressed form
_HEADERS = {"User-Agent": "falhook", "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class FetchedFile:
    ref: FileRef
    local_path: Path
    size: int
    sha256: str  # hex
    content_type: str | None


def _lower_priority() -> None:
    """Run this download thread (and the threads it starts) at a higher nice value: Linux
    schedules threads one by one, so webhook intake on the event loop keeps the CPU it
    needs while a 1 GiB download takes whatever is left."""
    # Elsewhere (not Linux, or not permitted) downloads simply run at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DOWNLOAD_NICE)


class _Job:
    """One download in flight: stopping it also ends a read blocked on its connection."""

    def __init__(self, on_written: Callable[[int], None] | None = None) -> None:
        self._stop = threading.Event()
        self.conn: GuardedConnection | None = None
        self.on_written = on_written

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stopped_or(self, fetcher: Fetcher) -> Callable[[], bool]:
        """Stopped itself, or its fetcher closed."""
        return lambda: self._stop.is_set() or fetcher._closed.is_set()

    def stop(self) -> None:
        self._stop.set()
        conn = self.conn
        if conn is not None:
            conn.abort()


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
        deadline: float = 4 * 3600.0,
        min_rate: float = 16 * 1024.0,
        rate_window: float = 30.0,
        ranges: RangePlan | None = None,
        max_redirects: int = 5,
        guard: AddressGuard | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.max_file_bytes = max_file_bytes
        self.max_redirects = max_redirects
        self.timeout = timeout
        self.ranges = ranges or RangePlan(threshold=0, size=16 * 1024 * 1024, parts=1)
        self.limits = TransferLimits.of(
            max_file_bytes,
            deadline=deadline,
            min_rate=min_rate,
            rate_window=rate_window,
            timeout=timeout,
        )
        self.guard = guard or AddressGuard(allow_private=allow_private_hosts)
        lookup = resolver or resolve
        # certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR: the same trust as httpx elsewhere
        tls = httpx.create_ssl_context()
        tls.set_alpn_protocols(["http/1.1"])
        self._connections = ConnectionPool(
            lambda host, port, t: connect_guarded(host, port, t, self.guard, lookup),
            tls,
            timeout,
        )
        self._closed = threading.Event()
        self._jobs: set[_Job] = set()
        self._jobs_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            DOWNLOAD_THREADS, thread_name_prefix="falhook-fetch", initializer=_lower_priority
        )
        # The extra connections of files fetched in ranges (never the pool above: a download
        # there waits for its parts).
        self._range_pool = ThreadPoolExecutor(
            DOWNLOAD_THREADS * 2, thread_name_prefix="falhook-range", initializer=_lower_priority
        )

    async def fetch(
        self,
        ref: FileRef,
        dest_dir: Path,
        *,
        keep: bool = True,
        on_written: Callable[[int], None] | None = None,
        into: Path | None = None,
    ) -> FetchedFile:
        """Download (or decode) ref into a new file in dest_dir; FetchError on failure.

        ``keep``: a sink will keep this file (the disk sink links it and fsyncs it), so it is
        written back to disk as it arrives. Without it the file is only read by sinks and
        then deleted: it stays in the page cache, and a download is not held to the disk's
        pace.

        ``on_written(n)``: called on the download's thread whenever the file's first n bytes
        are in place (a sink may read them while the rest arrives).
        ``into``: the file to create (it must not exist), instead of a new name in dest_dir.
        """
        if self._closed.is_set():
            raise FetchRetryable(f"{ref.path}: the fetcher is closed")
        job = _Job(on_written)
        try:
            dest = into or dest_dir / f"dl-{secrets.token_hex(8)}"
            future = self._pool.submit(self._fetch, ref, dest, job, keep)
        except RuntimeError:  # closed between the check and here
            raise FetchRetryable(f"{ref.path}: the fetcher is closed") from None
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The thread stops at once; if it finished meanwhile, drop its file.
            job.stop()
            future.add_done_callback(_discard)
            raise

    async def aclose(self) -> None:
        """Stop: running downloads end now and abandon their files."""
        self._closed.set()
        with self._jobs_lock:
            running = list(self._jobs)
        for job in running:
            job.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._range_pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._connections.close)

    # --- in the worker thread ----------------------------------------------------------------

    def _fetch(self, ref: FileRef, dest: Path, job: _Job, keep: bool) -> FetchedFile:
        with self._jobs_lock:
            self._jobs.add(job)
        try:
            if self._closed.is_set():
                raise Stopped()
            if ref.is_data_uri:
                return self._write_data_uri(ref, dest, keep, job)
            return self._download(ref, dest, job, keep)
        except SpoolError as exc:  # the disk, not the network: name the spool file
            dest.unlink(missing_ok=True)
            raise FetchRetryable(f"{ref.path}: {exc}") from None
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            with self._jobs_lock:
                self._jobs.discard(job)

    def _write_data_uri(self, ref: FileRef, dest: Path, keep: bool, job: _Job) -> FetchedFile:
        try:
            data, mime = decode_data_uri(ref.url)
        except ValueError as exc:
            raise FetchPermanent(f"{ref.path}: {exc}") from None
        self._check_size_limit(ref, len(data))
        self._check_file_size(ref, len(data))
        writer = SpoolWriter(dest, write_behind=keep, on_written=job.on_written)
        try:
            writer.add(data)
            digest = writer.finish()
        finally:
            writer.close()
        return FetchedFile(ref, dest, len(data), digest, ref.content_type or mime)

    def _download(self, ref: FileRef, dest: Path, job: _Job, keep: bool) -> FetchedFile:
        if ref.file_size is not None:
            self._check_size_limit(ref, ref.file_size)
        url = ref.url
        try:
            for _ in range(self.max_redirects + 1):
                origin, target = _split(ref, url)
                first = self._first_range(ref)
                conn, resp = self._request(origin, target, job, first)
                got: FetchedFile | None = None
                try:
                    location = resp.getheader("location")
                    if resp.status in _REDIRECTS and location:
                        url = _follow(ref, url, location)
                    elif resp.status == 206 and first is not None:
                        got = self._ranged(ref, resp, conn, (origin, target), dest, job)
                    else:
                        _check_status(ref, resp.status)
                        got = self._stream_to(ref, resp, dest, job, keep)
                except BaseException:
                    conn.close()
                    raise
                self._release(conn, resp)
                if got is not None:
                    return got
        except FetchError:
            raise
        except RefusedAddress as exc:
            refused = FetchRefused if exc.address is not None else FetchPermanent
            raise refused(f"{ref.path}: {exc}") from None
        except http.client.InvalidURL as exc:
            raise FetchPermanent(f"{ref.path}: invalid URL ({exc})") from None
        except (OSError, http.client.HTTPException) as exc:
            if job.stopped or self._closed.is_set():
                raise Stopped() from None
            raise FetchRetryable(f"{ref.path}: {self._describe(exc)}") from None
        finally:
            job.conn = None
        raise FetchPermanent(f"{ref.path}: more than {self.max_redirects} redirects")

    def _first_range(self, ref: FileRef) -> tuple[int, int] | None:
        """The range the first request asks for, when the file may be fetched in parts (it
        is large, or of unknown size); None: the whole file at once."""
        plan = self.ranges
        if not plan.threshold or (ref.file_size is not None and ref.file_size < plan.threshold):
            return None
        return (0, plan.size - 1)

    def _request(
        self,
        origin: Origin,
        target: str,
        job: _Job | None,
        byte_range: tuple[int, int] | None = None,
    ) -> tuple[GuardedConnection, http.client.HTTPResponse]:
        """Send the GET and read the response head. A kept-alive connection the server has
        closed meanwhile fails before any answer: that one is retried on a new connection.
        `job`: the download that may stop this connection (None for the extra parts of a
        ranged download, which stops its own)."""
        headers = dict(_HEADERS)
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        while True:
            conn, reused = self._connections.take(origin)
            if conn.sock is not None:  # a body's shorter idle limit does not outlive it
                conn.sock.settimeout(self.timeout)
            if job is not None:
                job.conn = conn
                if job.stopped:
                    conn.close()
                    raise Stopped()
            try:
                conn.request("GET", target, headers=headers)
                return conn, conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected):
                conn.close()
                if not reused or (job is not None and job.stopped):
                    raise
            except BaseException:
                conn.close()
                raise

    def _release(self, conn: GuardedConnection, resp: http.client.HTTPResponse) -> None:
        """Keep the connection for the next download when its response ended exactly where
        it said: read to its end, nothing past it, and the server did not ask to close."""
        if not resp.isclosed() and resp.length is not None and resp.length <= _DRAIN_LIMIT:
            with contextlib.suppress(OSError, http.client.HTTPException):
                resp.read()  # a redirect's small body
        if resp.isclosed() and not resp.will_close and not _overran(resp):
            self._connections.give_back(conn)
        else:
            conn.close()

    def _ranged(
        self,
        ref: FileRef,
        resp: http.client.HTTPResponse,
        conn: GuardedConnection,
        where: tuple[Origin, str],
        dest: Path,
        job: _Job,
    ) -> FetchedFile:
        """The server answered the first range: the rest in parts at once (a file that fit
        in the first range is simply read)."""
        found = content_range(resp)
        encoding = content_encoding(resp)
        if found is None or found[0] != 0 or encoding != "identity":
            raise FetchRetryable(
                f"{ref.path}: the server answered 206 without a usable Content-Range"
            )
        _, last, total = found
        self._check_size_limit(ref, total)
        self._check_file_size(ref, total)
        if last + 1 == total:
            return self._stream_to(ref, resp, dest, job, keep=False)
        if conn.sock is not None:
            conn.sock.settimeout(self.limits.idle)

        def request(byte_range: tuple[int, int]) -> tuple[GuardedConnection, Any]:
            got = self._request(*where, None, byte_range)
            if got[0].sock is not None:
                got[0].sock.settimeout(self.limits.idle)
            return got

        digest = RangedDownload(
            ref,
            dest,
            total=total,
            first=(conn, resp, last),
            plan=self.ranges,
            request=request,
            release=self._release,
            pool=self._range_pool,
            stopped=job.stopped_or(self),
            on_written=job.on_written,
            deadline=self.limits.deadline,
        ).run()
        content_type = content_type_of(ref, resp)
        return FetchedFile(ref, dest, total, digest, content_type)

    def _stream_to(
        self, ref: FileRef, resp: http.client.HTTPResponse, dest: Path, job: _Job, keep: bool
    ) -> FetchedFile:
        expected = declared_length(resp)
        encoding = content_encoding(resp)
        if expected is not None and encoding == "identity":
            self._check_size_limit(ref, expected)
            self._check_file_size(ref, expected)
        if job.conn is not None and job.conn.sock is not None:
            job.conn.sock.settimeout(self.limits.idle)
        writer = SpoolWriter(dest, write_behind=keep, on_written=job.on_written)
        try:
            received = read_body(ref, resp, writer, self.limits, stopped=job.stopped_or(self))
            if expected is not None and received != expected:
                raise FetchRetryable(f"{ref.path}: body short: {received} of {expected} bytes")
            if _overran(resp):
                raise FetchRetryable(
                    f"{ref.path}: the server sent more than the {expected} bytes it announced"
                )
            self._check_file_size(ref, writer.size)
            digest = writer.finish()
        finally:
            writer.close()
        if job.stopped or self._closed.is_set():
            raise Stopped()
        content_type = content_type_of(ref, resp)
        return FetchedFile(ref, dest, writer.size, digest, content_type)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"TLS certificate check failed: {exc.verify_message}"
        if isinstance(exc, TimeoutError):
            return f"timed out (nothing for {self.timeout:g} s)"
        if isinstance(exc, http.client.IncompleteRead | http.client.RemoteDisconnected):
            return f"body short or connection broken ({exc})"
        return f"{type(exc).__name__}: {exc}"

    def _check_size_limit(self, ref: FileRef, size: int) -> None:
        if size > self.max_file_bytes:
            raise FetchPermanent(
                f"{ref.path}: {size} bytes exceeds max_file_bytes ({self.max_file_bytes})"
            )

    @staticmethod
    def _check_file_size(ref: FileRef, size: int) -> None:
        if ref.file_size is not None and size != ref.file_size:
            raise FetchRetryable(f"{ref.path}: {size} bytes where file_size says {ref.file_size}")


def _split(ref: FileRef, url: str) -> tuple[Origin, str]:
    try:
        return split_url(url)
    except ValueError as exc:
        raise FetchPermanent(f"{ref.path}: invalid URL ({exc})") from None


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
        raise FetchRetryable(message, status=status)
    raise FetchPermanent(message, status=status)


def _overran(resp: http.client.HTTPResponse) -> bool:
    return isinstance(resp, CheckedResponse) and resp.overran


def _discard(job: Future[FetchedFile]) -> None:
    """A download nobody awaits any more: remove the file it may have finished."""
    if not job.cancelled() and job.exception() is None:
        job.result().local_path.unlink(missing_ok=True)
