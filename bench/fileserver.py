"""A fast loopback file server for benchmarks: serves files from a folder with sendfile(2),
so the server is never what limits a transfer. DELAY_MS (default 0) holds each response that
long before its headers, like a distant storage service.

    python bench/fileserver.py DIR PORT [DELAY_MS]"""

from __future__ import annotations

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


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

    def do_GET(self) -> None:
        path = (self.root / self.path.lstrip("/")).resolve()
        if self.root not in path.parents or not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        if self.delay:
            time.sleep(self.delay)  # one thread per connection: delays overlap
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with open(path, "rb") as fh:
            self.connection.sendfile(fh)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    Handler.root = Path(sys.argv[1]).resolve()
    Handler.delay = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0
    server = Server(("127.0.0.1", int(sys.argv[2])), Handler)
    print(f"serving {Handler.root} on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    os.nice(0)
    main()
