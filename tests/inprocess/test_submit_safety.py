"""A submit that would cost money for nothing is refused before anything is sent: fal's real
queue with a webhook URL fal cannot reach. And the payload-storage header is never sent
unless asked, with the reconciler looking in time when it is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook.config import Settings, settings_from_dict
from falhook.fal import submit as submit_module
from falhook.fal.emulate import Emulator, EmulatorServer
from falhook.fal.queue import FalQueue, SubmitRefused
from falhook.fal.reconcile import Reconciler, ReconcileSettings
from falhook.fal.submit import submit, unreachable_reason
from falhook.store import Store, make_store
from falhook.store.models import NewSubmission, utcnow
from tests.support.falhook_server import base_config
from tests.support.logs import captured

REFRAME = "luma/agent/ray/v3.2/reframe"
KEY = "test-key-0123456789"
INPUT = {"prompt": "wider", "video_url": "https://example.invalid/v.mp4", "aspect_ratio": "21:9"}
FAL_QUEUE = "https://queue.fal.run"


class Recorder(httpx.AsyncBaseTransport):
    """Stands in for fal's queue: records every request, answers like fal's submit."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={"request_id": "r-1", "status": "IN_QUEUE"})


def settings(
    tmp_path: Path, public_url: str, queue_url: str = FAL_QUEUE, **submit: Any
) -> Settings:
    receiver = {"public_url": public_url, "queue_url": queue_url}
    config = base_config(tmp_path, "http://127.0.0.1:9/jwks", receiver=receiver)
    if submit:
        config["submit"] = submit
    return settings_from_dict(config, base_dir=tmp_path)


@pytest.mark.parametrize(
    "public_url",
    [
        "http://127.0.0.1:8000",  # the default
        "https://127.0.0.1:8443",
        "https://10.1.2.3",
        "https://192.168.1.20/hooks",
        "https://[::1]:8000",
        "https://localhost:8000",
        "https://falhook.local",
        "https://myhost",
        "http://hooks.example.com",  # public, but not https
    ],
)
async def test_fals_queue_with_an_unreachable_public_url_is_refused_before_sending(
    public_url: str, tmp_path: Path
) -> None:
    queue = Recorder()
    s = settings(tmp_path, public_url)
    async with FalQueue(FAL_QUEUE, key=KEY, transport=queue) as client:
        with pytest.raises(SubmitRefused, match=r"\[receiver\]\.public_url") as err:
            await submit(REFRAME, INPUT, route="reframe", settings=s, queue=client)
    assert "--allow-unreachable-webhook" in str(err.value)
    assert queue.requests == []


async def test_the_explicit_flag_submits_anyway(tmp_path: Path) -> None:
    queue = Recorder()
    s = settings(tmp_path, "http://127.0.0.1:8000")
    async with FalQueue(FAL_QUEUE, key=KEY, transport=queue) as client:
        sub = await submit(
            REFRAME, INPUT, route="reframe", settings=s, queue=client,
            allow_unreachable_webhook=True,
        )  # fmt: skip
    assert sub.request_id == "r-1" and len(queue.requests) == 1


async def test_a_public_https_url_is_submitted_to_fals_queue(tmp_path: Path) -> None:
    queue = Recorder()
    s = settings(tmp_path, "https://hooks.example.com")
    async with FalQueue(FAL_QUEUE, key=KEY, transport=queue) as client:
        await submit(REFRAME, INPUT, route="reframe", settings=s, queue=client)
    [sent] = queue.requests
    assert sent.url.params["fal_webhook"] == "https://hooks.example.com/webhooks/reframe"


def test_the_emulator_and_other_queues_are_exempt(tmp_path: Path) -> None:
    with EmulatorServer(Emulator(delay=30)) as fal:
        s = settings(tmp_path, "http://127.0.0.1:9", queue_url=fal.url)

        async def run() -> None:
            async with FalQueue(fal.url, key=KEY) as client:
                await submit(REFRAME, INPUT, route="reframe", settings=s, queue=client)

        import asyncio

        asyncio.run(run())
        assert len(fal.emulator.submits()) == 1


def test_public_addresses_are_reachable() -> None:
    assert unreachable_reason("https://hooks.example.com") is None
    assert unreachable_reason("https://8.8.8.8/hooks") is None


async def test_a_webhook_field_in_the_input_is_warned_about(tmp_path: Path) -> None:
    queue = Recorder()
    s = settings(tmp_path, "https://hooks.example.com")
    body = {**INPUT, "webhook_url": "https://hooks.example.com/x"}
    async with FalQueue(FAL_QUEUE, key=KEY, transport=queue) as client:
        with captured(submit_module) as logs:
            await submit(REFRAME, body, route="reframe", settings=s, queue=client)
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["field"] == "input.webhook_url" and "fal_webhook" in warning["event"]


# --- X-Fal-Store-IO -------------------------------------------------------------------------


@pytest.fixture
def fal() -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(delay=30)) as server:
        yield server


async def test_falhook_never_sends_x_fal_store_io(fal: EmulatorServer, tmp_path: Path) -> None:
    s = settings(tmp_path, "http://127.0.0.1:9", queue_url=fal.url)
    async with FalQueue(fal.url, key=KEY) as client:
        sub = await submit(REFRAME, INPUT, route="reframe", settings=s, queue=client)
        await client.status(sub.status_url)
        await client.cancel(sub.cancel_url)
    assert len(fal.emulator.requests) == 3
    assert all("x-fal-store-io" not in r.headers for r in fal.emulator.requests)


async def test_store_io_false_is_the_explicit_way_to_turn_payload_storage_off(
    fal: EmulatorServer, tmp_path: Path
) -> None:
    s = settings(tmp_path, "http://127.0.0.1:9", queue_url=fal.url, store_io=False)
    async with FalQueue(fal.url, key=KEY) as client:
        await submit(REFRAME, INPUT, route="reframe", settings=s, queue=client)
    [post] = fal.emulator.submits()
    assert post.headers["x-fal-store-io"] == "0"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = make_store(settings(tmp_path, "https://hooks.example.com"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.parametrize(("store_io", "looked_at"), [(True, 0), (False, 1)])
async def test_without_payload_storage_the_first_look_comes_within_fals_window(
    store: Store, fal: EmulatorServer, tmp_path: Path, store_io: bool, looked_at: int
) -> None:
    """fal keeps such a result 6 minutes when it is 10 KB or more: a submission 5 minutes
    old is looked up, although [reconcile].deadline says 15 minutes."""
    await store.record_submission(
        NewSubmission(
            request_id="r-5min",
            endpoint=REFRAME,
            route="reframe",
            input=INPUT,
            status_url=f"{fal.url}/luma/agent/requests/r-5min/status",
            submitted_at=utcnow() - timedelta(minutes=5),
        )
    )
    s = settings(tmp_path, "https://hooks.example.com", queue_url=fal.url, store_io=store_io)
    async with FalQueue(fal.url, key=KEY) as client:
        reconciler = Reconciler(store, client, s, ReconcileSettings(deadline=900))
        counts = await reconciler.run_once()
    assert counts["checked"] == looked_at
    assert reconciler.first_look == (900 if store_io else 240)
