"""The emulator answers like fal where clients notice: https with a CA it makes, the URLs it
hands out (public URL, proxies' X-Forwarded-*), IN_QUEUE on submit, logs when asked, and
namespaced app ids."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from falhook.fal.emulate import Emulator, EmulatorServer
from tests.support.falhook_server import wait_for

KEY = {"Authorization": "Key test-key"}
REFRAME = "luma/agent/ray/v3.2/reframe"
SLOW = {"prompt": "x", "_emulate": {"delay": 60}}


@pytest.fixture
def fal() -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(delay=0.1)) as server:
        yield server


def test_submit_answers_in_queue_like_fal(fal: EmulatorServer) -> None:
    doc = httpx.post(f"{fal.url}/{REFRAME}", json=SLOW, headers=KEY).json()
    assert doc["status"] == "IN_QUEUE" and doc["queue_position"] == 0
    assert set(doc) >= {"request_id", "status_url", "response_url", "cancel_url"}


def test_logs_only_when_asked(fal: EmulatorServer) -> None:
    sub = httpx.post(f"{fal.url}/{REFRAME}", json={"prompt": "x"}, headers=KEY).json()
    wait_for(fal.emulator.idle, timeout=15, what="the job")
    plain = httpx.get(sub["status_url"], headers=KEY).json()
    assert plain["status"] == "COMPLETED" and plain["logs"] is None
    for flag in ("1", "true"):
        logs = httpx.get(sub["status_url"], params={"logs": flag}, headers=KEY).json()["logs"]
        assert logs and {"message", "level", "source", "timestamp"} <= set(logs[0])
    assert httpx.get(sub["status_url"], params={"logs": "0"}, headers=KEY).json()["logs"] is None


@pytest.mark.parametrize("namespace", ["workflows", "comfy"])
def test_namespaced_app_ids_keep_their_namespace(fal: EmulatorServer, namespace: str) -> None:
    endpoint = f"{namespace}/fal-ai/my-flow/extra/path"
    doc = httpx.post(f"{fal.url}/{endpoint}", json=SLOW, headers=KEY).json()
    base = f"{fal.url}/{namespace}/fal-ai/my-flow/requests/{doc['request_id']}"
    assert doc["status_url"] == f"{base}/status" and doc["response_url"] == base
    assert httpx.get(doc["status_url"], headers=KEY).json()["status"] == "IN_QUEUE"
    wrong = f"{fal.url}/fal-ai/my-flow/requests/{doc['request_id']}/status"
    assert httpx.get(wrong, headers=KEY).status_code == 404
    assert httpx.post(f"{fal.url}/{namespace}/fal-ai", json=SLOW, headers=KEY).status_code == 404


def test_urls_follow_x_forwarded_proto_and_host(fal: EmulatorServer) -> None:
    headers = KEY | {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "fal.example.com"}
    doc = httpx.post(f"{fal.url}/{REFRAME}", json={"prompt": "x"}, headers=headers).json()
    assert doc["status_url"].startswith("https://fal.example.com/luma/agent/requests/")
    wait_for(fal.emulator.idle, timeout=15, what="the job")
    result = httpx.get(doc["response_url"].replace("https://fal.example.com", fal.url), headers=KEY)
    assert result.json()["video"]["url"].startswith("https://fal.example.com/files/")
    upload = httpx.post(
        f"{fal.url}/storage/upload", content=b"x", headers=headers | {"X-Fal-File-Name": "a.txt"}
    )
    assert upload.json()["url"].startswith("https://fal.example.com/files/")


def test_a_public_url_wins() -> None:
    emulator = Emulator(delay=0.1, public_url="https://fal.test/base/")
    with EmulatorServer(emulator) as fal:
        headers = KEY | {"X-Forwarded-Host": "ignored.example.com"}
        doc = httpx.post(f"{fal.url}/{REFRAME}", json=SLOW, headers=headers).json()
    assert doc["status_url"].startswith("https://fal.test/base/luma/agent/requests/")


def test_tls_serves_https_trusted_through_its_ca(tmp_path: Path) -> None:
    with EmulatorServer(Emulator(delay=0.1), tls_dir=tmp_path / "tls") as fal:
        assert fal.tls is not None and fal.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(fal.tls.ca))
        assert httpx.get(fal.jwks_url, verify=trusted).json()["keys"]
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(fal.jwks_url)  # the system's CAs do not know it
        localhost = fal.jwks_url.replace("127.0.0.1", "localhost")
        assert httpx.get(localhost, verify=trusted).status_code == 200
