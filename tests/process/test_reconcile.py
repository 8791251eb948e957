"""Reconciliation: a submission with no webhook by its deadline is looked up on the queue, and a
finished one is taken in as an event recovered by polling."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from falhook.fal.emulate import Emulator
from tests.inprocess.test_reconcile import (
    KEY,
    REFRAME,
    receiver,
    submitted_dropped,
)
from tests.support.emulator import SharedEmulator
from tests.support.inprocess import InProcessFactory, sync_condition, wait_until


@pytest.fixture
def emulated_fal(fal_host: SharedEmulator) -> SharedEmulator:
    return fal_host.use(Emulator(delay=0.2))


def submission_states(listed: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    assert listed.returncode == 0, listed.stderr
    return [(s["request_id"], s["state"]) for s in json.loads(listed.stdout)["submissions"]]


async def test_dropped_webhook_recovered_by_the_reconcile_command_and_delivered_to_disk(
    inprocess: InProcessFactory, emulated_fal: SharedEmulator, tmp_path: Path
) -> None:
    fal = emulated_fal
    fh = await receiver(inprocess, fal)
    rid = await submitted_dropped(fh, fal)
    await wait_until(sync_condition(fal.emulator.idle), timeout=15, what="the job to finish")
    assert await fh.event(rid) is None  # no webhook came
    [pending] = await fh.store.list_submissions()
    assert (pending.request_id, pending.state) == (rid, "pending")

    rec = await fh.cli(
        "submissions", "reconcile", "--deadline", "0", "--json", env={"FAL_KEY": KEY}
    )
    assert rec.returncode == 0, rec.stderr
    assert json.loads(rec.stdout)["recovered"] == 1

    event = await fh.wait_state(rid, "delivered")  # by the worker of the running falhook
    assert event["source"] == "poll" and event["submission"]["endpoint"] == REFRAME
    video = tmp_path / "files" / "reframe" / rid / "output.mp4"
    assert video.read_bytes() == fal.emulator.files[f"{rid}/output.mp4"][0]
    listed, shown = await asyncio.gather(
        fh.cli("submissions", "list", "--json"),
        fh.cli("submissions", "list", "--state", "recovered"),
    )
    assert submission_states(listed) == [(rid, "recovered")]
    assert rid in shown.stdout and "recovered" in shown.stdout
