"""The local fal: queue, JWKS, files and signed webhooks shaped like the real endpoints'."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook.fal.emulate import Emulator, EmulatorServer, is_image_endpoint
from falhook.fal.ray import mp4_duration, reframe_output
from falhook.intake.envelope import parse_envelope
from falhook.intake.keys import parse_jwks
from falhook.intake.verify import verify
from falhook.testing import LoopbackServer
from tests.support.falhook_server import wait_for
from tests.support.media import png_size, video_facts

REFRAME = "luma/agent/ray/v3.2/reframe"
KEY = {"Authorization": "Key test-key"}
INPUT = {"prompt": "wider", "video_url": "https://example.invalid/v.mp4", "aspect_ratio": "21:9"}


class WebhookCatcher(LoopbackServer):
    """A loopback endpoint that keeps every webhook it gets (headers and raw body)."""

    def __init__(self) -> None:
        self.hits: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.hits.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/reframe"


@pytest.fixture
def fal() -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(delay=0.1)) as server:
        yield server


@pytest.fixture
def catcher() -> Iterator[WebhookCatcher]:
    with WebhookCatcher() as server:
        yield server


def submit(fal: EmulatorServer, endpoint: str, body: dict[str, Any], hook: str | None) -> dict:
    params = {"fal_webhook": hook} if hook else {}
    r = httpx.post(f"{fal.url}/{endpoint}", params=params, json=body, headers=KEY, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def one_webhook(catcher: WebhookCatcher) -> tuple[dict[str, str], bytes]:
    wait_for(lambda: catcher.hits, timeout=15, what="the webhook")
    return catcher.hits[0]


def verified(fal: EmulatorServer, headers: dict[str, str], body: bytes) -> None:
    keys = parse_jwks(httpx.get(fal.jwks_url, timeout=5).json())
    verify(headers, body, keys, now=time.time())  # raises when the signature is wrong


def test_reframe_webhook_is_signed_and_shaped_like_the_real_output(
    fal: EmulatorServer, catcher: WebhookCatcher, tmp_path: Path
) -> None:
    sub = submit(fal, REFRAME, INPUT, catcher.url)
    headers, body = one_webhook(catcher)
    verified(fal, headers, body)
    assert headers["x-fal-webhook-request-id"] == sub["request_id"]
    assert headers["x-fal-webhook-user-id"] == "emulator-user"
    envelope = parse_envelope(body)
    assert envelope.request_id == sub["request_id"] and envelope.status == "OK"
    out = reframe_output(envelope.payload)
    assert out.video.content_type == "video/mp4" and out.exr_file is None
    video = httpx.get(out.video.url, timeout=5)
    assert video.status_code == 200 and len(video.content) == out.video.file_size
    (tmp_path / "out.mp4").write_bytes(video.content)
    assert mp4_duration(tmp_path / "out.mp4") == 5.0


def test_the_video_is_a_playable_h264_clip(fal: EmulatorServer, catcher: WebhookCatcher) -> None:
    submit(fal, REFRAME, INPUT, catcher.url)
    out = reframe_output(parse_envelope(one_webhook(catcher)[1]).payload)
    facts = video_facts(httpx.get(out.video.url, timeout=5).content)
    # Every frame decodes, in a profile every browser plays (Chromium's player, in the
    # console, gets a real picture rather than a black 0:00).
    assert facts["codec"] == "h264" and facts["profile"] == "Constrained Baseline"
    assert (facts["width"], facts["height"]) == (640, 360)
    assert facts["frames"] == 120 and facts["seconds"] == 5.0


def test_a_tampered_webhook_does_not_verify(fal: EmulatorServer, catcher: WebhookCatcher) -> None:
    submit(fal, REFRAME, INPUT, catcher.url)
    headers, body = one_webhook(catcher)
    with pytest.raises(Exception, match="signature"):
        verified(fal, headers, body.replace(b"OK", b"KO"))


def test_exr_export_adds_the_zip_sidecar(fal: EmulatorServer, catcher: WebhookCatcher) -> None:
    submit(
        fal, REFRAME, {**INPUT, "hdr": True, "resolution": "720p", "exr_export": True}, catcher.url
    )
    out = reframe_output(parse_envelope(one_webhook(catcher)[1]).payload)
    assert out.exr_file is not None and out.exr_file.is_zip
    assert httpx.get(out.exr_file.url, timeout=5).content[:2] == b"PK"


def test_image_endpoints_answer_images(fal: EmulatorServer, catcher: WebhookCatcher) -> None:
    submit(fal, "fal-ai/flux/dev", {"prompt": "a cat"}, catcher.url)
    payload = parse_envelope(one_webhook(catcher)[1]).payload
    image = payload["images"][0]
    assert image["content_type"] == "image/png"
    png = httpx.get(image["url"], timeout=5).content
    # Real size, as fal's image models answer (landscape 4:3 unless asked otherwise).
    assert png_size(png) == (image["width"], image["height"]) == (1024, 768)
    assert len(png) == image["file_size"]


@pytest.mark.parametrize(
    ("image_size", "count", "expected"),
    [
        ("square_hd", 1, (1024, 1024)),
        ({"width": 640, "height": 480}, 2, (640, 480)),
        ("nonsense", 99, (1024, 768)),
    ],
)
def test_images_come_in_the_size_and_number_asked_for(
    fal: EmulatorServer, catcher: WebhookCatcher, image_size: Any, count: int, expected: Any
) -> None:
    body = {"prompt": "a cat", "image_size": image_size, "num_images": count}
    submit(fal, "fal-ai/flux/dev", body, catcher.url)
    images = parse_envelope(one_webhook(catcher)[1]).payload["images"]
    assert len(images) == min(count, 4)
    for image in images:
        assert png_size(httpx.get(image["url"], timeout=5).content) == expected


@pytest.mark.parametrize(
    ("endpoint", "image"),
    [
        (REFRAME, False),
        ("luma/agent/ray/v3.2/image-to-video", False),
        ("luma/agent/photon/text-to-image", True),
        ("fal-ai/flux/dev", True),
    ],
)
def test_which_endpoints_get_images(endpoint: str, image: bool) -> None:
    assert is_image_endpoint(endpoint) is image


def test_error_outcome(fal: EmulatorServer, catcher: WebhookCatcher) -> None:
    sub = submit(fal, REFRAME, {**INPUT, "_emulate": {"outcome": "error"}}, catcher.url)
    headers, body = one_webhook(catcher)
    verified(fal, headers, body)
    envelope = parse_envelope(body)
    assert envelope.status == "ERROR" and envelope.error
    assert envelope.payload["detail"][0]["loc"] == ["body", "video_url"]
    status = httpx.get(sub["status_url"], headers=KEY, timeout=5)
    assert status.status_code == 200 and status.json()["error"]
    assert httpx.get(sub["response_url"], headers=KEY, timeout=5).status_code == 422


def test_payload_error_outcome(fal: EmulatorServer, catcher: WebhookCatcher) -> None:
    submit(fal, REFRAME, {**INPUT, "_emulate": {"outcome": "payload_error"}}, catcher.url)
    doc = json.loads(one_webhook(catcher)[1])
    assert doc["status"] == "OK" and doc["payload"] is None and doc["payload_error"]


def test_drop_sends_no_webhook_but_the_queue_has_the_result(
    fal: EmulatorServer, catcher: WebhookCatcher
) -> None:
    sub = submit(fal, REFRAME, {**INPUT, "_emulate": {"outcome": "drop"}}, catcher.url)
    wait_for(fal.emulator.idle, timeout=15, what="the job to finish")
    assert catcher.hits == []
    status = httpx.get(sub["status_url"], headers=KEY, timeout=5)
    assert status.status_code == 200 and status.json()["status"] == "COMPLETED"
    result = httpx.get(sub["response_url"], headers=KEY, timeout=5)
    assert result.status_code == 200 and result.json()["video"]["content_type"] == "video/mp4"


def test_queue_urls_use_the_app_id_and_statuses_progress(fal: EmulatorServer) -> None:
    sub = submit(fal, REFRAME, {**INPUT, "_emulate": {"delay": 30}}, None)
    rid = sub["request_id"]
    assert sub["status_url"] == f"{fal.url}/luma/agent/requests/{rid}/status"
    assert sub["response_url"] == f"{fal.url}/luma/agent/requests/{rid}"
    assert sub["cancel_url"] == f"{fal.url}/luma/agent/requests/{rid}/cancel"
    status = httpx.get(sub["status_url"], headers=KEY, timeout=5)
    assert status.status_code == 202 and status.json()["status"] == "IN_QUEUE"
    assert httpx.get(sub["response_url"], headers=KEY, timeout=5).status_code == 400
    # Under another app id the request does not exist.
    other = f"{fal.url}/fal-ai/flux/requests/{rid}/status"
    assert httpx.get(other, headers=KEY, timeout=5).status_code == 404
    assert httpx.put(sub["cancel_url"], headers=KEY, timeout=5).status_code == 202
    assert httpx.get(sub["response_url"], headers=KEY, timeout=5).status_code == 400


def test_the_queue_wants_a_key(fal: EmulatorServer) -> None:
    r = httpx.post(f"{fal.url}/{REFRAME}", json=INPUT, timeout=5)
    assert r.status_code == 401
    assert fal.emulator.jobs == {}


def test_unknown_outcome_is_refused(fal: EmulatorServer) -> None:
    body = {**INPUT, "_emulate": {"outcome": "explode"}}
    r = httpx.post(f"{fal.url}/{REFRAME}", json=body, headers=KEY, timeout=5)
    assert r.status_code == 422 and "outcome" in r.json()["detail"]


def test_uploads_are_served_back(fal: EmulatorServer) -> None:
    headers = KEY | {"X-Fal-File-Name": "clip.mp4", "Content-Type": "video/mp4"}
    r = httpx.post(f"{fal.url}/storage/upload", content=b"data", headers=headers, timeout=5)
    url = r.json()["url"]
    assert url.endswith("/clip.mp4")
    got = httpx.get(url, timeout=5)
    assert got.content == b"data" and got.headers["content-type"].startswith("video/mp4")
