"""Submitting to fal's queue, against the emulator: the exact request fal would receive, uploads,
what is recorded, and that a submit whose answer was lost is never resubmitted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from falhook.config import Settings, settings_from_dict
from falhook.fal.emulate import Emulator, tiny_mp4
from falhook.fal.queue import FalQueue, MissingKey, SubmitError, SubmitUnknown, is_fal_queue
from falhook.fal.ray import ValidationError
from falhook.fal.submit import submit
from falhook.store import Store, make_store
from falhook.testing import LoopbackServer
from tests.support.emulator import SharedEmulator
from tests.support.falhook_server import base_config
from tests.support.inprocess import InProcess, InProcessFactory, sync_condition, wait_until

REFRAME = "luma/agent/ray/v3.2/reframe"
KEY = "test-key-0123456789"
INPUT = {"prompt": "wider", "video_url": "https://example.invalid/v.mp4", "aspect_ratio": "21:9"}
PUBLIC = "http://127.0.0.1:9"  # nothing listens: these tests look at what fal is asked


@pytest.fixture
def fal(fal_host: SharedEmulator) -> SharedEmulator:
    return fal_host.use(Emulator(delay=30))  # no webhook during these tests


def settings_for(tmp_path: Path, queue_url: str, jwks_url: str = PUBLIC) -> Settings:
    receiver = {"public_url": PUBLIC, "queue_url": queue_url}
    config = base_config(tmp_path, jwks_url, receiver=receiver)
    return settings_from_dict(config, base_dir=tmp_path)


@pytest.fixture
async def store(tmp_path: Path, store_section: dict[str, str]) -> AsyncIterator[Store]:
    config = base_config(tmp_path, PUBLIC, store=store_section)
    s = make_store(settings_from_dict(config, base_dir=tmp_path))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_the_request_fal_receives_for_a_nested_endpoint(
    fal: SharedEmulator, store: Store, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, fal.url)
    async with FalQueue(fal.url, key=KEY) as queue:
        sub = await submit(
            REFRAME, INPUT, route="reframe", settings=settings, store=store, queue=queue
        )
    [got] = fal.emulator.submits()
    assert got.path == "/luma/agent/ray/v3.2/reframe"
    assert got.query == {"fal_webhook": f"{PUBLIC}/webhooks/reframe"}
    assert got.headers["authorization"] == f"Key {KEY}"
    assert got.headers["content-type"] == "application/json"
    assert got.json() == INPUT
    rid = sub.request_id
    assert sub.status_url == f"{fal.url}/luma/agent/requests/{rid}/status"
    assert sub.response_url == f"{fal.url}/luma/agent/requests/{rid}"
    assert sub.cancel_url == f"{fal.url}/luma/agent/requests/{rid}/cancel"
    recorded = await store.get_submission(rid)
    assert recorded is not None and recorded.state == "pending"
    assert (recorded.endpoint, recorded.route, recorded.input) == (REFRAME, "reframe", INPUT)
    assert recorded.status_url == sub.status_url


async def test_status_result_and_cancel_use_the_returned_urls(fal: SharedEmulator) -> None:
    async with FalQueue(fal.url, key=KEY) as queue:
        sub = await queue.submit(REFRAME, INPUT)
        status = await queue.status(sub.status_url)
        assert (status.status, status.http_status) == ("IN_QUEUE", 202)
        assert await queue.cancel(sub.cancel_url) is True
        assert not (await queue.result(sub.response_url)).ok
    paths = [(r.method, r.path) for r in fal.emulator.requests]
    base = f"/luma/agent/requests/{sub.request_id}"
    assert paths[1:] == [("GET", f"{base}/status"), ("PUT", f"{base}/cancel"), ("GET", base)]


async def test_local_files_are_uploaded_first_and_their_urls_put_in_the_input(
    fal: SharedEmulator, store: Store, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(tiny_mp4(8.0))
    settings = settings_for(tmp_path, fal.url)
    inp = {k: v for k, v in INPUT.items() if k != "video_url"}
    async with FalQueue(fal.url, key=KEY) as queue:
        await submit(
            REFRAME,
            inp,
            route="reframe",
            settings=settings,
            store=store,
            queue=queue,
            files={"video_url": clip},
        )
    upload, post = fal.emulator.requests
    assert upload.path == "/storage/upload" and upload.body == clip.read_bytes()
    assert upload.headers["authorization"] == f"Key {KEY}"
    url = post.json()["video_url"]
    assert url.startswith(fal.url + "/files/") and url.endswith("/clip.mp4")


async def test_a_bad_input_spends_nothing(
    fal: SharedEmulator, store: Store, tmp_path: Path
) -> None:
    long_clip = tmp_path / "long.mp4"
    long_clip.write_bytes(tiny_mp4(45.0))
    settings = settings_for(tmp_path, fal.url)
    async with FalQueue(fal.url, key=KEY) as queue:
        with pytest.raises(ValidationError, match=r"input\.aspect_ratio"):
            await submit(REFRAME, {**INPUT, "aspect_ratio": "2:1"}, route="reframe",
                         settings=settings, store=store, queue=queue)  # fmt: skip
        with pytest.raises(ValidationError, match=r"input\.video_url: .*45\.0 s"):
            await submit(REFRAME, INPUT, route="reframe", settings=settings, store=store,
                         queue=queue, files={"video_url": long_clip})  # fmt: skip
    assert fal.emulator.requests == []  # no upload, no submit
    assert await store.list_submissions() == []


async def test_unknown_endpoints_are_not_validated(fal: SharedEmulator, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fal.url)
    async with FalQueue(fal.url, key=KEY) as queue:
        await submit("fal-ai/flux/dev", {"x": 1}, route="default", settings=settings, queue=queue)
    assert fal.emulator.submits()[0].path == "/fal-ai/flux/dev"


async def test_an_unconfigured_route_or_missing_key_is_refused_before_sending(
    fal: SharedEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, fal.url)
    async with FalQueue(fal.url, key=KEY) as queue:
        with pytest.raises(SubmitError, match="route 'nope' is not configured"):
            await submit(REFRAME, INPUT, route="nope", settings=settings, queue=queue)
    monkeypatch.delenv("FAL_KEY", raising=False)
    async with FalQueue(fal.url) as queue:
        with pytest.raises(MissingKey, match="FAL_KEY"):
            await submit(REFRAME, INPUT, route="reframe", settings=settings, queue=queue)
    assert fal.emulator.requests == []


class LostAnswers(LoopbackServer):
    """A queue that takes the request and then hangs up (or answers `status`)."""

    def __init__(self, status: int | None = None) -> None:
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.posts += 1
                if status is None:
                    self.close_connection = True  # the answer is lost
                    return
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.mark.parametrize("status", [None, 502])
async def test_a_lost_answer_is_unknown_recorded_and_never_resubmitted(
    status: int | None, store: Store, tmp_path: Path
) -> None:
    with LostAnswers(status) as queue_server:
        settings = settings_for(tmp_path, queue_server.url)
        async with FalQueue(queue_server.url, key=KEY) as queue:
            with pytest.raises(SubmitUnknown, match="NOT resubmitted") as caught:
                await submit(REFRAME, INPUT, route="reframe", settings=settings, store=store,
                             queue=queue)  # fmt: skip
        assert queue_server.posts == 1
    [unknown] = await store.list_submissions(state="unknown")
    assert unknown.request_id == caught.value.local_id and unknown.endpoint == REFRAME


async def test_a_refusal_is_not_unknown(store: Store, tmp_path: Path) -> None:
    with LostAnswers(422) as queue_server:
        settings = settings_for(tmp_path, queue_server.url)
        async with FalQueue(queue_server.url, key=KEY) as queue:
            with pytest.raises(SubmitError, match="HTTP 422") as caught:
                await submit(REFRAME, INPUT, route="reframe", settings=settings, store=store,
                             queue=queue)  # fmt: skip
    assert not isinstance(caught.value, SubmitUnknown)
    assert await store.list_submissions() == []


def test_uploads_go_to_fal_storage_only_for_fals_queue() -> None:
    assert is_fal_queue("https://queue.fal.run")
    assert not is_fal_queue("http://127.0.0.1:8001")
    assert "test-key" not in repr(FalQueue("https://queue.fal.run", key="test-key"))


# --- end to end: falhook running, the emulator, and the falhook submit command -----------------


@pytest.fixture
def emulated_fal(fal_host: SharedEmulator) -> SharedEmulator:
    return fal_host.use(Emulator(delay=0.3))


@pytest.fixture
async def receiver(inprocess: InProcessFactory, emulated_fal: SharedEmulator) -> InProcess:
    """falhook in this process, served on loopback: the webhook URL `submit` registers."""
    fal = emulated_fal
    return await inprocess(listen=True, jwks_url=fal.jwks_url, receiver={"queue_url": fal.url})


async def test_error_and_payload_error_webhooks_are_correlated(
    receiver: InProcess, emulated_fal: SharedEmulator
) -> None:
    fal, fh = emulated_fal, receiver
    ids = {}
    async with FalQueue(fal.url, key=KEY) as queue:
        for outcome in ("error", "payload_error"):
            inp = {**INPUT, "_emulate": {"outcome": outcome}}
            sub = await submit(
                REFRAME, inp, route="reframe", settings=fh.settings, store=fh.store, queue=queue
            )
            ids[outcome] = sub.request_id
    error = await fh.wait_state(ids["error"], "delivered")
    assert error["fal_status"] == "ERROR" and error["submission"]["endpoint"] == REFRAME
    perr = await fh.wait_state(ids["payload_error"], "delivered")
    assert perr["payload_error"] and perr["submission"]["route"] == "reframe"
    await wait_until(sync_condition(fal.emulator.idle), timeout=15, what="the emulator to finish")
