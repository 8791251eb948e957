"""A fast loopback file server for benchmarks: serves files from a folder with sendfile(2),
so the server is never what limits a transfer. Usage: python bench/fileserver.py DIR PORT"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path = Path(".")

    def do_GET(self) -> None:
        path = (self.root / self.path.lstrip("/")).resolve()
        if self.root not in path.parents or not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
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
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
    server.daemon_threads = True
    print(f"serving {Handler.root} on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    os.nice(0)
    main()
