"""Submitting to fal's queue, against the emulator: the exact request fal would receive, uploads,
what is recorded, and that a submit whose answer was lost is never resubmitted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from falhook.fal.emulate import Emulator, tiny_mp4
from tests.inprocess.test_submit import (
    INPUT,
    KEY,
    REFRAME,
)
from tests.support.emulator import SharedEmulator
from tests.support.inprocess import InProcess, InProcessFactory
from tests.support.stores import pg_schema_text


@pytest.fixture
def emulated_fal(fal_host: SharedEmulator) -> SharedEmulator:
    return fal_host.use(Emulator(delay=0.3))


@pytest.fixture
async def receiver(inprocess: InProcessFactory, emulated_fal: SharedEmulator) -> InProcess:
    """falhook in this process, served on loopback: the webhook URL `submit` registers."""
    fal = emulated_fal
    return await inprocess(listen=True, jwks_url=fal.jwks_url, receiver={"queue_url": fal.url})


async def test_submit_command_webhook_verified_correlated_and_delivered(
    receiver: InProcess,
    emulated_fal: SharedEmulator,
    tmp_path: Path,
    store_section: dict[str, str],
) -> None:
    fal, fh = emulated_fal, receiver
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(tiny_mp4(6.0))
    (tmp_path / "input.json").write_text(json.dumps({"prompt": "wider", "aspect_ratio": "21:9"}))
    done = await fh.cli("submit", REFRAME, "--route", "reframe", "--input", "@input.json",
                        "--file", f"video_url={clip}", env={"FAL_KEY": KEY})  # fmt: skip
    assert done.returncode == 0, done.stderr
    rid = done.stdout.strip()
    [post] = fal.emulator.submits()
    assert post.path == f"/{REFRAME}"
    assert post.query["fal_webhook"] == f"{fh.base_url}/webhooks/reframe"
    event = await fh.wait_state(rid, "delivered")
    assert fal.emulator.jobs[rid].webhook_answers == [200]  # verified and accepted at once
    assert event["source"] == "webhook"
    sub = event["submission"]
    assert sub["endpoint"] == REFRAME and sub["route"] == "reframe"
    assert sub["input"]["video_url"].startswith(fal.url) and sub["seconds_to_webhook"] >= 0
    video = tmp_path / "files" / "reframe" / rid / "output.mp4"
    assert video.read_bytes() == fal.emulator.files[f"{rid}/output.mp4"][0]
    shown, listed = await asyncio.gather(
        fh.cli("events", "show", rid), fh.cli("submissions", "list", "--json")
    )
    assert f"endpoint     {REFRAME}" in shown.stdout and "s to result" in shown.stdout
    states = [(s["request_id"], s["state"]) for s in json.loads(listed.stdout)["submissions"]]
    assert states == [(rid, "completed")]
    # The key went into the Authorization header only: not in the command's output or logs,
    # not in the store.
    assert KEY not in done.stdout and KEY not in done.stderr
    for path in (tmp_path / "data").glob("events.db*"):
        assert KEY.encode() not in path.read_bytes(), path
    if "schema" in store_section:  # PostgreSQL: nowhere in falhook's tables either
        stored = await pg_schema_text(store_section["schema"])
        assert rid in stored and KEY not in stored


@pytest.mark.one_store("input validation before anything is sent or stored")
async def test_submit_command_refuses_a_bad_input_with_the_field_named(
    inprocess: InProcessFactory, emulated_fal: SharedEmulator
) -> None:
    fal = emulated_fal
    config = inprocess.build(jwks_url=fal.jwks_url, receiver={"queue_url": fal.url})
    bad = json.dumps({**INPUT, "hdr": True})
    done = await config.cli(
        "submit", REFRAME, "--route", "reframe", "--input", bad, env={"FAL_KEY": KEY}
    )
    assert done.returncode == 2
    assert "input.hdr: needs resolution 720p or 1080p" in done.stderr
    assert fal.emulator.requests == []
