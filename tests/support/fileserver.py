"""A real loopback HTTP file server for tests, with behaviours to order: failures, lying
Content-Length, redirects, unknown length, a pause mid-body. Thread-based (HTTP/1.1,
keep-alive), ephemeral port, stops on exit.

    with FileServer() as files:
        files.add("/v.mp4", size=200 * 1024 * 1024)          # generated, never all in memory
        url, sha = files.url("/v.mp4"), generated_sha256(200 * 1024 * 1024)
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from falhook.testing import LoopbackServer

_BLOCK = 1024 * 1024
_PAUSE_LIMIT = 30.0  # seconds a paused body waits for resume() at most
_SLOW_PIECE = 16 * 1024  # bytes written at once by a slow (bytes_per_second) body


def generated_block(index: int) -> bytes:
    """Deterministic content for generated files, one MiB block at a time."""
    return hashlib.sha256(str(index).encode()).digest() * (_BLOCK // 32)


def generated_bytes(size: int) -> Iterator[bytes]:
    """The content `add(path, size=...)` serves, block by block."""
    left, i = size, 0
    while left > 0:
        block = generated_block(i)[: min(left, _BLOCK)]
        yield block
        left -= len(block)
        i += 1


def generated_sha256(size: int) -> str:
    """The sha256 of the content `add(path, size=...)` serves."""
    h = hashlib.sha256()
    for block in generated_bytes(size):
        h.update(block)
    return h.hexdigest()


@dataclass
class _Entry:
    data: bytes | None
    size: int
    content_type: str
    fail_times: int
    fail_status: int
    short_by: int
    redirect_to: str | None
    status: int
    chunked: bool
    headers: dict[str, str]
    pause_after: int | None
    resume: threading.Event
    bytes_per_second: float | None
    extra: bytes  # sent after the declared body: a server that says less than it sends
    extra_after: float  # seconds between the body and the extra bytes
    extra_sent: threading.Event = field(default_factory=threading.Event)
    ranges: str = "ignore"  # "honour" Range, "ignore" it (200), or lie: "lie_total", "short"


class FileServer(LoopbackServer):
    """Serves what `add` registers. With certfile and keyfile it speaks HTTPS only."""

    def __init__(
        self, host: str = "127.0.0.1", *, certfile: str | None = None, keyfile: str | None = None
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self._hits: dict[str, int] = {}
        self._served: dict[str, int] = {}  # whole bodies written
        self._headers: dict[str, dict[str, str]] = {}
        self._range_log: dict[str, list[str]] = {}
        self._sockets: list[socket.socket] = []  # every client connection, in accept order
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer._sockets.append(self.connection)

            def do_GET(self) -> None:
                outer._serve(self)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler, host)
        self.scheme = "http"
        if certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The URL of path; `host` names the same server another way (127.0.0.2, a name
        a test resolver maps to 127.0.0.1)."""
        return f"{self.scheme}://{host}:{self.port}{path}"

    def add(
        self,
        path: str,
        *,
        data: bytes | None = None,
        size: int | None = None,
        content_type: str = "application/octet-stream",
        fail_times: int = 0,
        fail_status: int = 503,
        short_by: int = 0,
        redirect_to: str | None = None,
        status: int = 200,
        chunked: bool = False,
        headers: dict[str, str] | None = None,
        pause_after: int | None = None,
        bytes_per_second: float | None = None,
        extra: bytes = b"",
        extra_after: float = 0.0,
        ranges: str = "ignore",
    ) -> None:
        """Serve path. `size` serves generated content (see generated_sha256); `fail_times`
        answers fail_status that many times first; `short_by` declares the full
        Content-Length but sends fewer bytes and closes; `chunked` sends no Content-Length
        (the body ends when the connection closes); `headers` are added to a 200 answer;
        `pause_after` sends that many body bytes, then waits for resume(path);
        `bytes_per_second` sends the body slowly, in small pieces, at about that rate;
        `extra` bytes follow the declared body on the same connection, `extra_after` seconds
        later (a server that sends more than it said); `ranges`: "honour" answers a Range
        request with 206, "ignore" sends the whole file (200), "lie_total" gives later parts
        another total size, "short" sends later parts cut short."""
        total = len(data) if data is not None else (size or 0)
        with self._lock:
            self._entries[path] = _Entry(
                data,
                total,
                content_type,
                fail_times,
                fail_status,
                short_by,
                redirect_to,
                status,
                chunked,
                dict(headers or {}),
                pause_after,
                threading.Event(),
                bytes_per_second,
                extra,
                extra_after,
                ranges=ranges,
            )

    def ranges_asked(self, path: str) -> list[str]:
        """The Range headers path's requests carried, in order."""
        with self._lock:
            return list(self._range_log.get(path, []))

    def extra_sent(self, path: str) -> bool:
        """Whether path's `extra` bytes have been written (to its latest request)."""
        with self._lock:
            return self._entries[path].extra_sent.is_set()

    def hits(self, path: str) -> int:
        """How many requests path has had (whatever the answer)."""
        with self._lock:
            return self._hits.get(path, 0)

    def served(self, path: str) -> int:
        """How many whole bodies of path were written (a whole 200 answer, not a range);
        fewer than hits() while one is still being sent."""
        with self._lock:
            return self._served.get(path, 0)

    def last_headers(self, path: str) -> dict[str, str]:
        """The request headers of path's latest request (names lower-cased)."""
        with self._lock:
            return dict(self._headers.get(path, {}))

    @property
    def connections(self) -> int:
        """How many TCP connections clients have opened so far."""
        with self._lock:
            return len(self._sockets)

    def drop_connections(self) -> None:
        """Close every client connection from this side without a word, as a server does
        with idle keep-alive connections (the client learns it on its next request)."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def resume(self, path: str) -> None:
        """Let a body paused by `pause_after` go on."""
        with self._lock:
            entry = self._entries.get(path)
        if entry is not None:
            entry.resume.set()

    def stop(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:  # paused handlers end now, not at their time limit
            entry.resume.set()
        super().stop()

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        with self._lock:
            self._hits[path] = self._hits.get(path, 0) + 1
            self._headers[path] = {k.lower(): v for k, v in h.headers.items()}
            entry = self._entries.get(path)
            failing = entry is not None and entry.fail_times > 0
            if failing:
                entry.fail_times -= 1  # type: ignore[union-attr]
        if entry is None or failing or entry.status != 200:
            code = 404 if entry is None else (entry.fail_status if failing else entry.status)
            h.send_response(code)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        asked = h.headers.get("Range")
        if asked:
            with self._lock:
                self._range_log.setdefault(path, []).append(asked)
        if asked and entry.ranges != "ignore":
            _send_range(h, entry, asked)
            return
        if entry.redirect_to:
            h.send_response(302)
            h.send_header("Location", entry.redirect_to)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(200)
        h.send_header("Content-Type", entry.content_type)
        if entry.chunked:
            h.send_header("Connection", "close")  # no length: the body ends with the connection
            h.close_connection = True
        else:
            h.send_header("Content-Length", str(entry.size))
        for name, value in entry.headers.items():
            h.send_header(name, value)
        h.end_headers()
        if entry.extra and not entry.extra_after and entry.data is not None:
            # The other lie, at once: more than declared, in the same write as the body.
            h.wfile.write(entry.data + entry.extra)
            h.wfile.flush()
            entry.extra_sent.set()
            return
        try:
            _send_body(h, entry)
        except (BrokenPipeError, ConnectionResetError):
            return
        with self._lock:
            self._served[path] = self._served.get(path, 0) + 1
        if entry.short_by:
            h.close_connection = True  # the lie: declared more than was sent
        if entry.extra:  # the other lie, later: left for the next response on the connection
            time.sleep(entry.extra_after)
            h.wfile.write(entry.extra)
            h.wfile.flush()
            entry.extra_sent.set()


def _send_range(h: BaseHTTPRequestHandler, entry: _Entry, asked: str) -> None:
    first_text, _, last_text = asked.removeprefix("bytes=").partition("-")
    first = int(first_text)
    last = min(int(last_text or entry.size - 1), entry.size - 1)
    body = _slice(entry, first, last)
    total = entry.size
    if first > 0 and entry.ranges == "lie_total":
        total += 1000
    h.send_response(206)
    h.send_header("Content-Type", entry.content_type)
    h.send_header("Content-Range", f"bytes {first}-{last}/{total}")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if first > 0 and entry.ranges == "short":
        body, h.close_connection = body[: len(body) // 2], True
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        h.wfile.write(body)
        h.wfile.flush()


def _slice(entry: _Entry, first: int, last: int) -> bytes:
    if entry.data is not None:
        return entry.data[first : last + 1]
    out, offset = [], 0
    for block in generated_bytes(entry.size):
        end = offset + len(block)
        if end > first and offset <= last:
            out.append(block[max(0, first - offset) : last + 1 - offset])
        offset = end
        if offset > last:
            break
    return b"".join(out)


def _send_body(h: BaseHTTPRequestHandler, entry: _Entry) -> None:
    limit = entry.size - entry.short_by
    pause = entry.pause_after
    sent = 0
    blocks = [entry.data] if entry.data is not None else generated_bytes(entry.size)
    for whole in blocks:
        block = whole[: limit - sent]
        if not block:
            break
        if pause is not None and sent <= pause < sent + len(block):
            cut = pause - sent
            h.wfile.write(block[:cut])
            h.wfile.flush()
            entry.resume.wait(_PAUSE_LIMIT)
            block, sent = block[cut:], sent + cut
        _write(h, block, entry.bytes_per_second)
        sent += len(block)
    h.wfile.flush()


def _write(h: BaseHTTPRequestHandler, block: bytes, rate: float | None) -> None:
    if not rate:
        h.wfile.write(block)
        return
    piece = max(1, min(_SLOW_PIECE, int(rate / 10)))
    for start in range(0, len(block), piece):
        h.wfile.write(block[start : start + piece])
        h.wfile.flush()
        time.sleep(piece / rate)
