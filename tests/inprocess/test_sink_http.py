"""HTTP sink: a real loopback receiver, and the standardwebhooks library's own verifier."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from falhook.testing import LoopbackServer
from falhook_sinks.base import OptionError, Permanent, Retryable, SinkEnv
from falhook_sinks.http import HttpSink
from falhook_sinks.registry import construct
from tests.support.falhook_server import free_port
from tests.support.sink_ctx import local_file, make_ctx

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Receiver(LoopbackServer):
    """Records each POST; answers from a script of (status, headers), then 204."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.raw_headers: list[list[tuple[str, str]]] = []  # as sent, repeats included
        self.script: list[tuple[int, dict[str, str]]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer._lock:
                    outer.requests.append((dict(self.headers.items()), body))
                    outer.raw_headers.append(list(self.headers.items()))
                    status, headers = outer.script.pop(0) if outer.script else (204, {})
                reply = b"" if status == 204 else b"nope"
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
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/fal"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def make_sink(url: str, **options: Any) -> HttpSink:
    opts = {"url": url, "secret": SECRET, **options}
    return construct(HttpSink, "forward", opts, SinkEnv(base_dir=Path(".")))


async def test_signature_verifies_with_standardwebhooks(tmp_path: Path, receiver: Receiver) -> None:
    video = local_file(tmp_path, "video", "clip.mp4", b"mp4 bytes", "video/mp4")
    sink = make_sink(receiver.url)
    try:
        out = await sink.deliver(make_ctx([video], payload={"video": {"url": video.url}}))
    finally:
        await sink.aclose()
    assert out == {"status": 204, "webhook_id": "msg_req-123"}
    [(headers, body)] = receiver.requests
    lower = {k.lower(): v for k, v in headers.items()}
    verified = Webhook(SECRET).verify(body, lower)  # raises unless the signature is right
    assert verified["type"] == "fal.request.completed"
    data = verified["data"]
    assert data["request_id"] == "req-123"
    assert data["endpoint"] == "luma/agent/ray/v3.2/reframe"
    assert data["payload"] == {"video": {"url": video.url}}
    assert data["files"] == [
        {
            "path": "video",
            "name": "clip.mp4",
            "url": video.url,
            "fal_url": video.url,
            "stored": False,
            "content_type": "video/mp4",
            "size": 9,
            "sha256": video.sha256,
        }
    ]
    # A tampered body or another secret does not verify: the check above can fail.
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"req-123", b"req-124"), lower)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, lower)


async def test_extra_headers_cannot_replace_the_signature(
    tmp_path: Path, receiver: Receiver
) -> None:
    extra = {"Authorization": "Bearer t", "Webhook-Signature": "v1,forged", "Content-Type": "x"}
    sink = make_sink(receiver.url, headers=extra)
    try:
        await sink.deliver(make_ctx([]))
    finally:
        await sink.aclose()
    [(headers, body)] = receiver.requests
    sent = [k.lower() for k, _ in receiver.raw_headers[0]]
    assert sent.count("webhook-signature") == 1 and sent.count("content-type") == 1
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["authorization"] == "Bearer t"
    assert lower["content-type"] == "application/json"
    assert Webhook(SECRET).verify(body, lower)["data"]["request_id"] == "req-123"


async def test_stored_links_replace_fal_urls(tmp_path: Path, receiver: Receiver) -> None:
    video = local_file(tmp_path, "video", "clip.mp4", b"v", "video/mp4")
    stored = "http://127.0.0.1:9/bucket/fal/reframe/req-123/clip.mp4?X-Amz-Signature=abc"
    outputs = {"archive": {"objects": {"video": {"bucket": "b", "key": "k", "url": stored}}}}
    sink = make_sink(receiver.url, include_payload=False)
    try:
        await sink.deliver(make_ctx([video], outputs=outputs))
    finally:
        await sink.aclose()
    data = json.loads(receiver.requests[0][1])["data"]
    assert data["files"][0]["url"] == stored
    assert data["files"][0]["stored"] is True
    assert "payload" not in data


async def test_error_event_is_forwarded_as_failed(tmp_path: Path, receiver: Receiver) -> None:
    sink = make_sink(receiver.url)
    try:
        await sink.deliver(make_ctx([], status="ERROR", error="GPU fell over"))
    finally:
        await sink.aclose()
    doc = json.loads(receiver.requests[0][1])
    assert doc["type"] == "fal.request.failed"
    assert doc["data"]["error"] == "GPU fell over"


async def test_webhook_id_is_stable_across_attempts(receiver: Receiver) -> None:
    receiver.script = [(503, {"Retry-After": "7"})]
    sink = make_sink(receiver.url)
    try:
        with pytest.raises(Retryable) as err:
            await sink.deliver(make_ctx([]))
        await sink.deliver(make_ctx([], attempt=2))
    finally:
        await sink.aclose()
    assert err.value.retry_after == 7
    ids = [h["webhook-id"] for h, _ in receiver.requests]
    assert ids == ["msg_req-123", "msg_req-123"]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        *[(s, Retryable) for s in (408, 429, 500, 502)],
        *[(s, Permanent) for s in (400, 401, 404, 410, 301, 307)],
    ],
)
async def test_status_classification(
    receiver: Receiver, status: int, kind: type[Exception]
) -> None:
    receiver.script = [(status, {"Location": "http://127.0.0.1:9/elsewhere"})]
    sink = make_sink(receiver.url)
    try:
        with pytest.raises(kind) as err:
            await sink.deliver(make_ctx([]))
    finally:
        await sink.aclose()
    assert str(status) in str(err.value)
    assert "/hooks/fal" not in str(err.value)  # the URL is a secret
    assert len(receiver.requests) == 1  # no redirect followed


async def test_unreachable_target_is_retryable() -> None:
    sink = make_sink(f"http://127.0.0.1:{free_port()}/x")
    try:
        with pytest.raises(Retryable, match="unreachable"):
            await sink.deliver(make_ctx([]))
    finally:
        await sink.aclose()


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"url": None}, "[sinks.forward].url"),
        ({"url": "ftp://x"}, "[sinks.forward].url"),
        ({"secret": None}, "[sinks.forward].secret"),
        ({"secret": "whsec_not base64!"}, "[sinks.forward].secret"),
        ({"secret": "whsec_" + base64.b64encode(b"short").decode()}, "[sinks.forward].secret"),
        ({"headers": {"x": 1}}, "[sinks.forward].headers"),
        ({"sekret": "x"}, "[sinks.forward].sekret"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], key: str) -> None:
    opts = {"url": "https://example.invalid/hook", "secret": SECRET, **options}
    opts = {k: v for k, v in opts.items() if v is not None}
    with pytest.raises(OptionError) as err:
        construct(HttpSink, "forward", opts, SinkEnv(base_dir=Path(".")))
    assert err.value.key == key
