"""The console's "reconcile now" (POST /console/api/submissions/reconcile) against falhook's
fal emulator: a submission whose webhook was dropped is recovered at once, whatever the
reconciliation deadline, and listed as recovered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from falhook.fal.emulate import Emulator
from falhook.fal.queue import FalQueue
from falhook.fal.submit import submit
from falhook.testing import FalSigner
from tests.support.emulator import SharedEmulator
from tests.support.inprocess import InProcessFactory, sync_condition, wait_until

KEY = "test-key-0123456789"
TOKEN = "reconcile-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
INPUT = {"prompt": "wider", "video_url": "https://example.invalid/v.mp4", "aspect_ratio": "21:9"}


@pytest.fixture
def fal() -> Iterator[SharedEmulator]:
    with SharedEmulator() as host:
        yield host.use(Emulator(delay=0.1, webhook_attempts=1))


async def test_reconcile_now_recovers_a_dropped_webhook(
    inprocess: InProcessFactory, fal: SharedEmulator, signer: FalSigner, monkeypatch: Any
) -> None:
    monkeypatch.setenv("FAL_KEY", KEY)
    fh = await inprocess(
        receiver={"public_url": "http://127.0.0.1:9", "queue_url": fal.url},
        console={"token": TOKEN},
    )
    async with FalQueue(fal.url, key=KEY) as queue:
        sub = await submit(
            "luma/agent/ray/v3.2/reframe",
            {**INPUT, "_emulate": {"outcome": "drop"}},
            route="reframe",
            settings=fh.settings,
            store=fh.store,
            queue=queue,
        )
    await wait_until(sync_condition(fal.emulator.idle), timeout=15, what="the job to finish")
    assert fh.app is not None
    transport = httpx.ASGITransport(app=fh.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://falhook.test") as c:
        pending = await c.get("/console/api/submissions?state=pending", headers=BEARER)
        assert [s["request_id"] for s in pending.json()["submissions"]] == [sub.request_id]
        done = await c.post("/console/api/submissions/reconcile", headers=BEARER)
        assert done.status_code == 200 and done.json()["recovered"] == 1
        recovered = await c.get("/console/api/submissions?state=recovered", headers=BEARER)
    [listed] = recovered.json()["submissions"]
    assert listed["request_id"] == sub.request_id and listed["input"]["prompt"] == "wider"
    event = await fh.event(sub.request_id)
    assert event is not None and event["source"] == "poll"
