"""`falhook submit --meta KEY=VALUE`: refused before anything is sent when it breaks a rule
(exit 2), stored and carried by the event otherwise; `events list --meta`, `events show`
and a bulk `events replay --meta` read it."""

from __future__ import annotations

import json

import pytest

from falhook.fal.emulate import Emulator
from tests.inprocess.test_submit import INPUT, KEY, REFRAME
from tests.support.emulator import SharedEmulator
from tests.support.inprocess import InProcess, InProcessFactory


@pytest.fixture
def emulated_fal(fal_host: SharedEmulator) -> SharedEmulator:
    return fal_host.use(Emulator(delay=0.2))


@pytest.fixture
async def receiver(inprocess: InProcessFactory, emulated_fal: SharedEmulator) -> InProcess:
    fal = emulated_fal
    return await inprocess(listen=True, jwks_url=fal.jwks_url, receiver={"queue_url": fal.url})


async def test_submit_meta_travels_with_the_job_and_filters_the_events(
    receiver: InProcess, emulated_fal: SharedEmulator
) -> None:
    fh, fal = receiver, emulated_fal
    env = {"FAL_KEY": KEY}
    ids = []
    for customer in ("42", "7"):
        done = await fh.cli("submit", REFRAME, "--route", "reframe", "--input", json.dumps(INPUT),
                            "--meta", f"customer={customer}", "--meta", "order=9001", "--json",
                            env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        printed = json.loads(done.stdout)
        assert printed["metadata"] == {"customer": customer, "order": "9001"}
        ids.append(printed["request_id"])
    for post in fal.emulator.submits():
        assert post.json() == INPUT and "customer" not in json.dumps(post.query)
    for rid in ids:
        await fh.wait_state(rid, "delivered", timeout=60)
    listed = await fh.cli("events", "list", "--meta", "customer=42", "--json")
    assert [e["request_id"] for e in json.loads(listed.stdout)["events"]] == [ids[0]]
    shown = await fh.cli("events", "show", ids[0])
    assert "metadata     customer=42, order=9001" in shown.stdout
    shown_json = json.loads((await fh.cli("events", "show", ids[1], "--json")).stdout)
    assert shown_json["submission"]["metadata"] == {"customer": "7", "order": "9001"}
    replayed = await fh.cli("events", "replay", "--meta", "customer=7")
    assert replayed.stdout.strip() == "scheduled 1 delivery of 1 event"
    bad_filter = await fh.cli("events", "list", "--meta", "not a key=1")
    assert bad_filter.returncode == 2 and "plain name" in bad_filter.stderr


@pytest.mark.one_store("refused before anything is stored or sent")
async def test_submit_meta_that_breaks_a_rule_exits_2_and_sends_nothing(
    receiver: InProcess, emulated_fal: SharedEmulator
) -> None:
    for meta in ("no-equals-sign", "bad key=1", "1abc=x", "big=" + "x" * 600):
        out = await receiver.cli("submit", REFRAME, "--route", "reframe", "--input",
                                 json.dumps(INPUT), "--meta", meta,
                                 env={"FAL_KEY": KEY})  # fmt: skip
        assert out.returncode == 2, (meta, out.stderr)
        assert "metadata" in out.stderr or "KEY=VALUE" in out.stderr, out.stderr
        assert out.stdout == ""
    assert emulated_fal.emulator.submits() == []
