"""A loopback HTTP target for the HTTP sink: records every POST (headers, body) and answers
with a fixed status (204 unless told otherwise)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from falhook.testing import LoopbackServer


class HttpTarget(LoopbackServer):
    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    outer.requests.append((headers, body))
                reply = b"" if outer.status == 204 else b"bad request"
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def bodies(self) -> list[Any]:
        with self._lock:
            return [json.loads(body) for _, body in self.requests]

    def headers(self) -> list[dict[str, str]]:
        with self._lock:
            return [headers for headers, _ in self.requests]
