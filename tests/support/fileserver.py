"""A real loopback HTTP file server for tests, with behaviours to order: failures, lying
Content-Length, redirects, unknown length. Thread-based, ephemeral port, stops on exit."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from receiver.testing import LoopbackServer

_BLOCK = 1024 * 1024


def generated_block(index: int) -> bytes:
    """Deterministic content for generated files, one MiB block at a time."""
    return hashlib.sha256(str(index).encode()).digest() * (_BLOCK // 32)


def generated_bytes(size: int) -> Any:
    left, i = size, 0
    while left > 0:
        block = generated_block(i)[: min(left, _BLOCK)]
        yield block
        left -= len(block)
        i += 1


def generated_sha256(size: int) -> str:
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


class FileServer(LoopbackServer):
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._entries: dict[str, _Entry] = {}
        self._hits: dict[str, int] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer._serve(self)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler, host)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

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
    ) -> None:
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
            )

    def hits(self, path: str) -> int:
        with self._lock:
            return self._hits.get(path, 0)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        with self._lock:
            self._hits[path] = self._hits.get(path, 0) + 1
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
        h.end_headers()
        to_send = entry.size - entry.short_by
        blocks = [entry.data] if entry.data is not None else generated_bytes(entry.size)
        try:
            for block in blocks:
                if to_send <= 0:
                    break
                h.wfile.write(block[:to_send])
                to_send -= len(block)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return
        if entry.short_by:
            h.close_connection = True  # the lie: declared more than was sent
