"""fal's private media: a file an access rule forbids (403) or hides (404) is downloaded through
a signed URL from fal's storage signing API, with FAL_KEY; without a key the error says so.

fal's cloud is out of reach: the signing API is checked by the exact request falhook sends,
and end to end against the emulator, which serves the same API and access rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from falhook.downloads.fal_media import FalMediaSigner, SigningError, is_fal_media
from falhook.fal.emulate import Emulator, EmulatorServer
from tests.support.falhook_server import Falhook, base_config, free_port, wait_for

REFRAME = "luma/agent/ray/v3.2/reframe"
KEY = "test-key-0123456789"
INPUT = {"prompt": "wider", "video_url": "https://example.invalid/v.mp4", "aspect_ratio": "21:9"}
FILE = "https://v3b.fal.media/files/b/0a1b2c3d/output.mp4"
SIGN = "https://api.fal.ai/v1/storage/files/sign"


@pytest.mark.parametrize(
    ("url", "fal"),
    [
        (FILE, True),
        ("https://v3.fal.media/files/x.png", True),
        ("https://fal.media/files/x.png", True),
        ("https://evilfal.media/x.png", False),
        ("https://fal.media.example.com/x.png", False),
        ("https://storage.googleapis.com/x.png", False),
    ],
)
def test_fal_media_hosts(url: str, fal: bool) -> None:
    assert is_fal_media(url, ("fal.media",)) is fal


class SigningAPI(httpx.AsyncBaseTransport):
    """Answers like fal's documented signing API; keeps every request."""

    def __init__(self, status: int = 200, body: Any = None) -> None:
        self.status = status
        self.body = body
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.body is not None or self.status != 200:
            return httpx.Response(self.status, json=self.body or {"detail": "no"})
        url = parse_qs(urlsplit(str(request.url)).query)["url"][0]
        return httpx.Response(200, json={"signed_url": f"{url}?identity=secret-token"})


def signer(api: SigningAPI, key: str | None = KEY) -> FalMediaSigner:
    return FalMediaSigner(SIGN, ("fal.media",), key, transport=api)


async def test_the_exact_request_to_fals_signing_api() -> None:
    api = SigningAPI()
    s = signer(api)
    try:
        signed = await s.signed_url(FILE + "?identity=stale")  # an old signature is left off
    finally:
        await s.aclose()
    assert signed == FILE + "?identity=secret-token"
    [sent] = api.requests
    assert sent.method == "POST"
    assert f"{sent.url.scheme}://{sent.url.host}{sent.url.path}" == SIGN
    assert dict(sent.url.params) == {"url": FILE}
    assert sent.headers["authorization"] == f"Key {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == {"expiration_seconds": 3600}
    assert KEY not in repr(s)


@pytest.mark.parametrize(
    ("status", "body", "retryable", "words"),
    [
        (401, None, False, "assets:read"),
        (403, None, False, "refused FAL_KEY"),
        (404, None, False, "does not know the file"),
        (503, None, True, "HTTP 503"),
        (200, {"nothing": 1}, True, "without a signed_url"),
    ],
)
async def test_signing_failures_say_what_happened(
    status: int, body: Any, retryable: bool, words: str
) -> None:
    s = signer(SigningAPI(status, body))
    try:
        with pytest.raises(SigningError) as err:
            await s.signed_url(FILE)
    finally:
        await s.aclose()
    assert err.value.retryable is retryable and words in err.value.message
    assert KEY not in err.value.message


async def test_without_a_key_nothing_is_asked() -> None:
    api = SigningAPI()
    with pytest.raises(SigningError, match="FAL_KEY is not set"):
        await signer(api, key=None).signed_url(FILE)
    assert api.requests == []


# --- end to end: the emulator's private outputs, delivered to disk ------------------------------


@pytest.fixture
def fal() -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(delay=0.2)) as server:
        yield server


def falhook_for(
    tmp_path: Path, fal: EmulatorServer, key: str, *, signs_for_fal: bool = True
) -> Falhook:
    port = free_port()
    signing = {"fal_media_hosts": ["127.0.0.1"], "fal_sign_url": fal.sign_url}
    config = base_config(
        tmp_path,
        fal.jwks_url,
        receiver={"public_url": f"http://127.0.0.1:{port}", "queue_url": fal.url},
        downloads=signing if signs_for_fal else {},
        delivery={"max_attempts": 2, "backoff_initial": 0.2, "backoff_max": 0.5},
        reconcile={"enabled": False},
    )
    return Falhook(tmp_path, config, port=port, env={"FAL_KEY": key})


def submit(falhook: Falhook, access: str) -> str:
    body = json.dumps({**INPUT, "_emulate": {"access": access}})
    done = falhook.cli("submit", REFRAME, "--route", "reframe", "--input", body)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.one_store("downloads, not the store")
@pytest.mark.parametrize("access", ["forbid", "hide"])
def test_a_private_output_is_downloaded_through_a_signed_url(
    access: str, fal: EmulatorServer, tmp_path: Path, store_backend: str
) -> None:
    with falhook_for(tmp_path, fal, KEY) as falhook:
        rid = submit(falhook, access)
        event = falhook.wait_state(rid, "delivered")
    file_url = f"{fal.url}/files/{rid}/output.mp4"
    assert httpx.get(file_url, timeout=5).status_code == (403 if access == "forbid" else 404)
    video = tmp_path / "files" / "reframe" / rid / "output.mp4"
    assert video.read_bytes() == fal.emulator.files[f"{rid}/output.mp4"][0]
    assert event["files"][0]["url"] == file_url  # fal's URL, not the signed one
    [signed] = [r for r in fal.emulator.requests if r.path == "/v1/storage/files/sign"]
    assert signed.query == {"url": file_url} and signed.headers["authorization"] == f"Key {KEY}"
    # The signature is a credential: never in a log, the store or event.json.
    stored = [falhook.log_path, *(tmp_path / "data").glob("events.db*"),
              video.with_name("event.json")]  # fmt: skip
    for path in stored:
        assert b"identity=" not in path.read_bytes(), path


@pytest.mark.one_store("downloads, not the store")
def test_without_fal_key_the_error_says_what_is_needed(
    fal: EmulatorServer, tmp_path: Path, store_backend: str
) -> None:
    with falhook_for(tmp_path, fal, "") as falhook:
        env_key = falhook.env.pop("FAL_KEY")
        falhook.env["FAL_KEY"] = KEY  # the submit command has a key; `serve` does not
        rid = submit(falhook, "hide")
        falhook.env["FAL_KEY"] = env_key
        event = falhook.wait_state(rid, "dead")
    error = event["deliveries"]["local"]["last_error"]
    assert "answered 404" in error and "private fal file" in error and "FAL_KEY" in error
    assert not [r for r in fal.emulator.requests if r.path == "/v1/storage/files/sign"]


@pytest.mark.one_store("downloads, not the store")
def test_a_forbidden_file_on_a_host_not_signed_for_says_what_would_read_it(
    fal: EmulatorServer, tmp_path: Path, store_backend: str
) -> None:
    """The emulator's `forbid` rule with a config that does not list the emulator's host in
    fal_media_hosts (the defaults: fal.media): dead, and the error names the fix."""
    with falhook_for(tmp_path, fal, KEY, signs_for_fal=False) as falhook:
        rid = submit(falhook, "forbid")
        event = falhook.wait_state(rid, "dead")
        shown = falhook.cli("events", "show", rid)
    error = event["deliveries"]["local"]["last_error"]
    assert "the file server answered 403" in error
    assert "add '127.0.0.1' to [downloads].fal_media_hosts" in error and "FAL_KEY" in error
    assert "[downloads].fal_media_hosts" in shown.stdout
    assert not [r for r in fal.emulator.requests if r.path == "/v1/storage/files/sign"]


def test_the_emulators_signing_api_checks_what_fal_checks(fal: EmulatorServer) -> None:
    headers = {"Authorization": f"Key {KEY}"}
    r = httpx.post(
        fal.url + "/fal-ai/flux/dev", json={"_emulate": {"access": "forbid"}}, headers=headers
    )
    rid = r.json()["request_id"]
    wait_for(fal.emulator.idle, timeout=15, what="the job")
    url = f"{fal.url}/files/{rid}/image-0.png"
    assert httpx.get(url).status_code == 403
    sign = fal.sign_url
    body = {"expiration_seconds": 60}
    assert httpx.post(sign, params={"url": url}, json=body).status_code == 401
    assert (
        httpx.post(sign, params={"url": url + "?x=1"}, json=body, headers=headers).status_code
        == 422
    )
    too_long = {"expiration_seconds": 7 * 24 * 3600 + 1}
    assert httpx.post(sign, params={"url": url}, json=too_long, headers=headers).status_code == 422
    missing = f"{fal.url}/files/nope/x.png"
    assert httpx.post(sign, params={"url": missing}, json=body, headers=headers).status_code == 404
    signed = httpx.post(sign, params={"url": url}, json=body, headers=headers).json()["signed_url"]
    assert httpx.get(signed).content[:8] == b"\x89PNG\r\n\x1a\n"
    other = httpx.get(signed.replace(f"/files/{rid}/", "/files/other/"))
    assert other.status_code == 404  # a signature reads its own file only
