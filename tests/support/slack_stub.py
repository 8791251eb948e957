"""A loopback stand-in for Slack, answering as Slack's documented APIs do.

- Incoming webhooks at ``/services/T.../B.../<secret>``: 200 ``ok``; 400 ``invalid_payload``
  (not JSON, or neither text nor blocks), 400 ``invalid_blocks`` (over Block Kit limits, or an
  image it "cannot download"), 404 ``no_service`` (unknown hook), 429 with Retry-After.
- ``/api/chat.postMessage``: always JSON ``{"ok": ..., "error": ...}``: ``not_authed`` /
  ``invalid_auth``, ``channel_not_found``, ``invalid_blocks``, and HTTP 429 with Retry-After.

Every request is recorded (path, headers, parsed JSON) for exact assertions; `fail_next`
queues answers (status, body, headers) that are given before the normal behaviour.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from falhook.testing import LoopbackServer

HOOK_PATH = "/services/T0000/B0000/abcdefghijklmnopqrstuvwx"
TOKEN = "xoxb-test-token"
CHANNELS = {"C0123ABCD", "#general", "#renders"}


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # when it arrived (wall clock, unix seconds)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def block_problems(doc: dict[str, Any], unreachable: set[str]) -> str | None:
    """The subset of Slack's Block Kit checks our messages could trip."""
    blocks = doc.get("blocks", [])
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "too many blocks"
    for block in blocks:
        kind = block.get("type")
        if kind == "header" and len(block["text"]["text"]) > 150:
            return "header too long"
        if kind == "section":
            if "text" in block and len(block["text"]["text"]) > 3000:
                return "section text too long"
            fields = block.get("fields", [])
            if len(fields) > 10 or any(len(f["text"]) > 2000 for f in fields):
                return "bad fields"
        if kind == "image":
            if len(block["image_url"]) > 3000 or len(block["alt_text"]) > 2000:
                return "image too long"
            if any(block["image_url"].startswith(u) for u in unreachable):
                return "downloading image failed"
    return None


class SlackStub(LoopbackServer):
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.queued: list[tuple[int, bytes, dict[str, str]]] = []
        self.unreachable_images: set[str] = set()
        self._ts = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                rec = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                status, reply, headers = outer._answer(rec)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def fail_next(self, status: int, body: str | dict[str, Any], **headers: str) -> None:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
        with self._lock:
            self.queued.append((status, raw, {k.replace("_", "-"): v for k, v in headers.items()}))

    def posts(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def _answer(self, rec: Recorded) -> tuple[int, bytes, dict[str, str]]:
        with self._lock:
            self.requests.append(rec)
            if self.queued:
                return self.queued.pop(0)
        if rec.path == "/api/chat.postMessage":
            return self._chat(rec)
        return self._webhook(rec)

    def _webhook(self, rec: Recorded) -> tuple[int, bytes, dict[str, str]]:
        text = {"content-type": "text/html"}
        if rec.path != HOOK_PATH:
            return 404, b"no_service", text
        try:
            doc = json.loads(rec.body)
        except ValueError:
            return 400, b"invalid_payload", text
        if not isinstance(doc, dict) or not (doc.get("text") or doc.get("blocks")):
            return 400, b"invalid_payload", text
        if block_problems(doc, self.unreachable_images):
            return 400, b"invalid_blocks", text
        return 200, b"ok", text

    def _chat(self, rec: Recorded) -> tuple[int, bytes, dict[str, str]]:
        def reply(doc: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
            return 200, json.dumps(doc).encode(), {"content-type": "application/json"}

        auth = rec.headers.get("authorization", "")
        if not auth:
            return reply({"ok": False, "error": "not_authed"})
        if auth != f"Bearer {TOKEN}":
            return reply({"ok": False, "error": "invalid_auth"})
        try:
            doc = json.loads(rec.body)
        except ValueError:
            return reply({"ok": False, "error": "invalid_json"})
        if doc.get("channel") not in CHANNELS:
            return reply({"ok": False, "error": "channel_not_found"})
        if block_problems(doc, self.unreachable_images):
            return reply({"ok": False, "error": "invalid_blocks"})
        with self._lock:
            self._ts += 1
            ts = f"1700000000.{self._ts:06d}"
        return reply({"ok": True, "channel": "C0123ABCD", "ts": ts, "message": {"text": "..."}})
