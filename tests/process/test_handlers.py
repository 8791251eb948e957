"""The user's handlers where users put them, and the commands that build sinks: a handler
module beside the config file, `serve --no-worker` checking what `serve` checks, a command
that needs one sink not failing on another's import, and replay creating the delivery of a
sink the event's route gained after it arrived (one event, or every event a filter matches).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from falhook.testing import FalSigner, JWKSServer, webhook_body
from tests.support.falhook_server import Falhook, base_config, wait_for
from tests.support.inprocess import InProcess, InProcessFactory, run_cli

HANDLER = """
import json
from pathlib import Path

from helpers import stamp   # a sibling module: the config's folder is on the path


async def handle(ctx, *, out):
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ctx.event.request_id).write_text(stamp(ctx.event.route))
"""


def test_serve_finds_a_handler_module_beside_its_config(
    tmp_path: Path, jwks: JWKSServer, signer: FalSigner, store_section: dict[str, str]
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mysink.py").write_text(HANDLER)
    (conf / "helpers.py").write_text("def stamp(route):\n    return 'via ' + route\n")
    out = tmp_path / "out"
    config = base_config(
        conf,
        jwks.url,
        store=store_section,
        sinks={"mine": {"type": "python", "handler": "mysink:handle", "out": str(out)}},
        routes={"default": {"sinks": ["mine"]}},
    )
    elsewhere = tmp_path / "elsewhere"  # the process runs away from the config's folder
    elsewhere.mkdir()
    fh = Falhook(conf, config, cwd=elsewhere).start()
    try:
        rid, body = webhook_body(str(uuid.uuid4()), payload={"n": 1})
        answer = httpx.post(
            fh.url("/webhooks/default"), content=body, headers=signer.headers(body, rid)
        )
        assert answer.status_code == 200, answer.text
        wait_for(lambda: (out / rid).exists(), timeout=30, what="the handler to run")
        assert (out / rid).read_text() == "via default"
    finally:
        fh.close()


async def test_serve_without_a_worker_checks_the_sinks_as_serve_does(
    tmp_path: Path, falhook_factory: Callable[..., Falhook]
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    mistakes = {
        "unimportable": (
            {"mine": {"type": "python", "handler": "nowhere_to_be_found:handle"}},
            ["[sinks.mine].handler", "nowhere_to_be_found", "config's folder"],
        ),
        "unknown-option": (
            {"local": {"type": "disk", "root": str(tmp_path / "f"), "colour": "red"}},
            ["[sinks.local].colour"],
        ),
        "unwritable": (
            {"local": {"type": "disk", "root": str(blocked / "files")}},
            ["[sinks.local]"],
        ),
    }
    for name, (sinks, said) in mistakes.items():
        route = {"default": {"sinks": list(sinks)}}
        proc = falhook_factory(name=name, sinks=sinks, routes=route)
        out = await run_cli(
            "serve", "--no-worker", "--port", "0", "--config", str(proc.config_path),
            cwd=tmp_path, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2, (name, out.stderr)
        for text in said:
            assert text in out.stderr, (name, out.stderr)
        assert "falhook ready" not in out.stderr


def _two_sinks(tmp_path: Path) -> dict[str, Any]:
    return {
        "sinks": {
            "a": {"type": "disk", "root": str(tmp_path / "a")},
            "b": {"type": "python", "handler": "nowhere_to_be_found:handle"},
        },
        "routes": {"default": {"sinks": ["a", "b"]}},
    }


async def test_a_command_for_one_sink_does_not_fail_on_another_sinks_import(
    inprocess: InProcessFactory, signer: FalSigner, tmp_path: Path
) -> None:
    fh = await inprocess(run_worker=False, **_two_sinks(tmp_path))  # stores, builds nothing
    rid = await fh.send(signer, {"n": 1})
    one = await fh.cli("events", "replay", rid, "--sink", "a", "--now", "--timeout", "30")
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "a: delivered"
    assert (tmp_path / "a" / "default" / rid / "event.json").exists()
    doc = await fh.event(rid)
    assert doc is not None and doc["deliveries"]["b"]["state"] == "pending"  # untouched
    every = await fh.cli("events", "replay", rid, "--now", "--timeout", "30")
    assert every.returncode == 2 and "[sinks.b].handler" in every.stderr
    scheduled = await fh.cli("events", "replay", rid, "--sink", "b")  # nothing to build
    assert scheduled.returncode == 0 and "scheduled 1 delivery" in scheduled.stdout


async def _event_before_copy_was_added(
    inprocess: InProcessFactory, signer: FalSigner, tmp_path: Path
) -> tuple[InProcess, list[str], Path]:
    """Events delivered to `local` on route default; then the config grows a `copy` sink on
    that route (and an `elsewhere` sink on route reframe): an app on the grown config that
    delivers nothing (to read the store), and its config's file."""
    fh = await inprocess(routes={"default": {"sinks": ["local"]}})
    ids = [await fh.send(signer, {"n": i}) for i in range(3)]
    for rid in ids:
        await fh.wait_state(rid, "delivered")
    await fh.aclose()
    grown = inprocess.build(
        name="grown",
        sinks={
            "local": {"type": "disk", "root": str(tmp_path / "files")},
            "copy": {"type": "disk", "root": str(tmp_path / "copy")},
            "elsewhere": {"type": "disk", "root": str(tmp_path / "elsewhere")},
        },
        routes={"default": {"sinks": ["local", "copy"]}, "reframe": {"sinks": ["elsewhere"]}},
    )
    return await grown.start(run_worker=False), ids, grown.config_path


async def test_replay_creates_the_delivery_of_a_sink_the_route_gained(
    inprocess: InProcessFactory, signer: FalSigner, tmp_path: Path
) -> None:
    fh, ids, grown = await _event_before_copy_was_added(inprocess, signer, tmp_path)
    config = ("--config", str(grown))
    rid = ids[0]
    missing = await run_cli("events", "replay", rid, "--sink", "elsewhere", *config, cwd=tmp_path)
    assert missing.returncode == 1
    assert "'elsewhere'" in missing.stderr and "route 'default'" in missing.stderr
    done = await run_cli(
        "events", "replay", rid, "--sink", "copy", "--now", "--timeout", "30", *config,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "copy: delivered"
    assert (tmp_path / "copy" / "default" / rid / "event.json").exists()
    doc = await fh.event(rid)
    assert doc is not None and doc["deliveries"]["local"]["attempts"] == 1  # not replayed
    bulk = await run_cli(
        "events", "replay", "--route", "default", "--sink", "copy", *config, cwd=tmp_path
    )
    assert bulk.returncode == 0, bulk.stderr
    assert bulk.stdout.strip() == "scheduled 3 deliveries of 3 events"
    for other in ids[1:]:
        doc = await fh.event(other)
        assert doc is not None and doc["deliveries"]["copy"]["state"] == "pending"
    nowhere = await run_cli("events", "replay", "--state", "pending", "--sink", "nope", *config,
                            cwd=tmp_path)  # fmt: skip
    assert nowhere.returncode == 1 and "no route has a sink 'nope'" in nowhere.stderr
    usage = await run_cli("events", "replay", *config, cwd=tmp_path)
    assert usage.returncode == 2 and "REQUEST_ID" in usage.stderr
    both = await run_cli("events", "replay", "--route", "default", "--now", *config, cwd=tmp_path)
    assert both.returncode == 2 and "--now" in both.stderr
