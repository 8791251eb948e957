"""A fast loopback file server for benchmarks: serves files from a folder with sendfile(2),
so the server is never what limits a transfer. It honours one `Range: bytes=a-b` per request
(206 with Content-Range), as fal's CDN and S3 do. DELAY_MS (default 0) holds each response
that long before its headers, like a distant storage service; RATE_MIB (default 0: no limit)
caps the bytes per second of all responses together, like a link of that bandwidth.

    python bench/fileserver.py DIR PORT [DELAY_MS [RATE_MIB]]"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PACE_CHUNK = 256 * 1024


class Link:
    """A shared bandwidth: each chunk of every response books its slot on one timeline."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.free_at = 0.0

    def wait_for(self, size: int) -> None:
        with self.lock:
            start = max(time.monotonic(), self.free_at)
            self.free_at = start + size / self.rate
        time.sleep(max(0.0, start - time.monotonic()))


RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default listen backlog (5) drops bursts of connections
    daemon_threads = True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, a small body waits for the
    # client's delayed ACK of the headers (40 ms on Linux) before it is sent.
    disable_nagle_algorithm = True
    root: Path = Path(".")
    delay: float = 0.0
    link: Link | None = None

    def do_GET(self) -> None:
        path = (self.root / self.path.lstrip("/")).resolve()
        if self.root not in path.parents or not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        if self.delay:
            time.sleep(self.delay)  # one thread per connection: delays overlap
        start, end = self._range(size)
        if (start, end) == (0, size - 1):
            self.send_response(200)
        else:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with open(path, "rb") as fh:
            if self.link is None:
                self.connection.sendfile(fh, offset=start, count=end - start + 1)
                return
            for offset in range(start, end + 1, PACE_CHUNK):
                count = min(PACE_CHUNK, end + 1 - offset)
                self.link.wait_for(count)
                self.connection.sendfile(fh, offset=offset, count=count)

    def _range(self, size: int) -> tuple[int, int]:
        found = RANGE.fullmatch(self.headers.get("Range", "").strip())
        if not found or size == 0:
            return 0, size - 1
        first = int(found[1])
        last = min(int(found[2]), size - 1) if found[2] else size - 1
        return (first, last) if first <= last else (0, size - 1)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    Handler.root = Path(sys.argv[1]).resolve()
    Handler.delay = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0
    rate = float(sys.argv[4]) * 1024 * 1024 if len(sys.argv) > 4 else 0.0
    Handler.link = Link(rate) if rate > 0 else None
    server = Server(("127.0.0.1", int(sys.argv[2])), Handler)
    print(f"serving {Handler.root} on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    os.nice(0)
    main()
