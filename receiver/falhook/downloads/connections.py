"""HTTP/1.1 connections for downloads: the standard library's http.client over sockets the
address guard opened, kept alive in a small pool.

Why http.client here and httpx everywhere else: an http.client response reads its body
straight into the caller's buffer (`readinto`, one kernel copy per byte); h11's receive
buffer under httpx copies every byte several times more (docs/performance.md). JWKS, Slack,
the HTTP sink and fal's API carry small bodies and stay on httpx.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

IDLE_SECONDS = 15.0  # a kept-alive connection older than this is closed, not reused
MAX_IDLE = 8  # kept-alive connections at most, over all origins

Opener = Callable[[str, int, float | None], socket.socket]

# Characters a request target may carry as they are; anything else (spaces, non-ASCII,
# control characters) is percent-encoded, and existing %XX escapes are kept.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~-._"


@dataclass(frozen=True)
class Origin:
    tls: bool
    host: str  # ASCII (IDNA for international names), no brackets around IPv6
    port: int


def split_url(url: str) -> tuple[Origin, str]:
    """The origin and request target of an http(s) URL; ValueError saying what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise ValueError("the URL names no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"invalid host name {host!r}") from None
    tls = scheme == "https"
    port = parts.port or (443 if tls else 80)  # .port raises ValueError when out of range
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return Origin(tls, host, port), target


class CheckedResponse(http.client.HTTPResponse):
    """A response that notes, when its body has been read to the end it declared, whether
    the server sent anything past that end (bytes already buffered or waiting in the socket).
    Such a connection must never carry another request: those bytes would be read as the next
    response (another event's file)."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self._sock = sock
        self.overran = False

    def readinto_some(self, b: memoryview) -> int:
        """readinto that returns as soon as some bytes have arrived (one read from the
        socket, straight into `b`), where readinto waits until `b` is full: a server that
        trickles must not hold the reader between two checks of its rate. The bookkeeping
        is HTTPResponse.readinto's."""
        if self.fp is None or getattr(self, "_method", None) == "HEAD":
            return self.readinto(b)
        if self.chunked:  # rare for files: through read1, one copy more
            data = self.read1(len(b))
            b[: len(data)] = data
            return len(data)
        if self.length is not None and len(b) > self.length:
            b = b[: self.length]
        n: int = self.fp.readinto1(b)
        if not n and b:
            self._close_conn()
        elif self.length is not None:
            self.length -= n
            if not self.length:
                self._close_conn()
        return n

    def _close_conn(self) -> None:
        # http.client calls this once the declared length (or the last chunk) has been read,
        # before it drops its read buffer: the last moment the buffer can be looked at.
        if self.fp is not None and (self.length == 0 or self.chunked):
            self.overran = _more_waiting(self.fp, self._sock)
        super()._close_conn()  # type: ignore[misc]  # http.client's own, not in its stubs


def _more_waiting(fp: Any, sock: socket.socket) -> bool:
    """Whether bytes are readable right now, buffered or in the socket, without waiting."""
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        return bool(fp.peek(1))
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True  # a broken connection: certainly not one to keep
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


class GuardedConnection(http.client.HTTPConnection):
    """An http.client connection whose socket comes from `opener` (the address guard), with
    TLS on top for https: SNI and the certificate check use the URL's host name."""

    response_class = CheckedResponse

    def __init__(
        self, origin: Origin, timeout: float, opener: Opener, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(origin.host, origin.port, timeout=timeout)
        self.origin = origin
        self.default_port = 443 if origin.tls else 80  # the Host header names other ports
        self.idle_since = 0.0
        self._opener = opener
        self._tls = tls if origin.tls else None
        self._live: socket.socket | None = None

    def connect(self) -> None:
        sock = self._opener(self.host, self.port, self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = self._live = sock

    def is_idle(self) -> bool:
        """A kept-alive connection the server has sent nothing on since its last response
        (nor closed): the only kind a new request may use."""
        sock = self._live
        if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return False
        timeout = sock.gettimeout()
        try:
            sock.setblocking(False)  # a socket with a timeout would wait for data
            socket.socket.recv(sock, 1, socket.MSG_PEEK)  # the raw bytes, TLS or not
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
        return False  # bytes waiting, or b"" (the server closed it): not idle

    def abort(self) -> None:
        """From another thread: end a read or write blocked on this connection now.

        The socket's own shutdown, not SSLSocket's (which drops the TLS object under the
        reading thread's feet): the reader sees the connection end and raises."""
        sock = self._live
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class ConnectionPool:
    """Idle keep-alive connections, newest reused first. Thread-safe."""

    def __init__(self, opener: Opener, tls: ssl.SSLContext, timeout: float) -> None:
        self._opener = opener
        self._tls = tls
        self._timeout = timeout
        self._idle: list[GuardedConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self, origin: Origin) -> tuple[GuardedConnection, bool]:
        """A connection to origin, and whether it was kept alive from an earlier request
        (such a connection may have been closed by the server meanwhile: retry once)."""
        now = time.monotonic()
        stale: list[GuardedConnection] = []
        found: GuardedConnection | None = None
        with self._lock:
            for conn in reversed(self._idle):
                if now - conn.idle_since > IDLE_SECONDS:
                    stale.append(conn)
                elif found is None and conn.origin == origin:
                    found = conn
            for conn in [*stale, *([found] if found else [])]:
                self._idle.remove(conn)
        if found is not None and not found.is_idle():
            stale.append(found)  # unread bytes or a close since it was given back
            found = None
        for conn in stale:
            conn.close()
        if found is not None:
            return found, True
        return GuardedConnection(origin, self._timeout, self._opener, self._tls), False

    def give_back(self, conn: GuardedConnection) -> None:
        """A connection whose response was read to its end and may be kept alive."""
        conn.idle_since = time.monotonic()
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                if len(self._idle) > MAX_IDLE:
                    conn = self._idle.pop(0)
                else:
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
