"""The console's replay (one event, and bulk by filter) creates the delivery of a sink the
event's route gained after it arrived, on both stores; a sink the route does not have is
still refused (404). The command line's is tests/process/test_handlers.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from falhook.testing import FalSigner
from tests.support.inprocess import InProcess, InProcessFactory

TOKEN = "console-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def post(fh: InProcess, path: str, body: Any) -> httpx.Response:
    assert fh.app is not None
    transport = httpx.ASGITransport(app=fh.app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://falhook.test") as c:
        return await c.post(f"/console/api{path}", json=body, headers=BEARER)


async def test_the_console_replays_a_sink_the_route_gained(
    inprocess: InProcessFactory, signer: FalSigner, tmp_path: Path
) -> None:
    before = await inprocess(name="before", routes={"default": {"sinks": ["local"]}})
    ids = [await before.send(signer, {"n": i}) for i in range(3)]
    other = await before.send(signer, {"n": 9}, route="reframe")
    for rid in [*ids, other]:
        await before.wait_state(rid, "delivered")
    await before.aclose()
    sinks = {
        "local": {"type": "disk", "root": str(tmp_path / "files")},
        "copy": {"type": "disk", "root": str(tmp_path / "copy")},
    }
    routes = {"default": {"sinks": ["local", "copy"]}, "reframe": {"sinks": ["local"]}}
    fh = await inprocess(name="after", sinks=sinks, routes=routes, console={"token": TOKEN})
    one = await post(fh, f"/events/{ids[0]}/replay", {"sink": "copy"})
    assert one.json() == {"scheduled": 1}
    doc = await fh.wait_state(ids[0], "delivered")
    assert doc["deliveries"]["copy"]["attempts"] == 1
    assert (tmp_path / "copy" / "default" / ids[0] / "event.json").exists()
    refused = await post(fh, f"/events/{other}/replay", {"sink": "copy"})
    assert refused.status_code == 404 and "route 'reframe'" in refused.json()["detail"]
    bulk = await post(fh, "/replay", {"sink": "copy"})  # every event: reframe's are left out
    assert bulk.json() == {"scheduled": 3, "events": 3}
    for rid in ids:
        await fh.wait_event(rid, lambda d: d["deliveries"].get("copy", {}).get("state")
                            == "delivered")  # fmt: skip
    other_doc = await fh.event(other)
    assert other_doc is not None and list(other_doc["deliveries"]) == ["local"]
    unknown = await post(fh, "/replay", {"sink": "nope"})
    assert unknown.status_code == 404
