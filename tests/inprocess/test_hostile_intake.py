"""Hostile webhooks: bodies built to break the parser, bodies that never finish, payloads
with thousands of Files. Each gets the contract's answer; nothing crashes, nothing stalls."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from falhook.app import create_app
from falhook.config import settings_from_dict
from falhook.intake.envelope import MAX_DEPTH
from falhook.testing import FalSigner, JWKSServer
from tests.support.falhook_server import base_config
from tests.support.payloads import nested


@pytest.fixture
async def client(
    tmp_path: Path, jwks: JWKSServer, store_section: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """falhook's ASGI app in this process (no worker): webhooks in, answers out."""
    config = base_config(tmp_path, jwks.url, store=store_section)
    app = create_app(settings_from_dict(config, base_dir=tmp_path), run_worker=False)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://falhook") as c:
            yield c
    finally:
        await app.runtime.close()


def signed(signer: FalSigner, raw: bytes, request_id: str) -> dict[str, str]:
    return signer.headers(raw, request_id)


@pytest.mark.parametrize("levels", [300, 5000, 100_000])
@pytest.mark.parametrize("kind", ["array", "object"])
async def test_deeply_nested_json_in_a_signed_body_is_400_not_500(
    client: httpx.AsyncClient, signer: FalSigner, levels: int, kind: str
) -> None:
    rid = str(uuid.uuid4())
    raw = f'{{"request_id": "{rid}", "status": "OK", "payload": {nested(levels, kind)}}}'.encode()
    resp = await client.post("/webhooks/default", content=raw, headers=signed(signer, raw, rid))
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "bad_envelope",
        "detail": f"body nests more than {MAX_DEPTH} levels",
    }
    assert (await client.get("/healthz")).status_code == 200


async def test_a_payload_of_thousands_of_files_is_accepted_without_holding_the_loop(
    client: httpx.AsyncClient, signer: FalSigner
) -> None:
    """8,000 Files named frame.png (well over the size parsed off the loop): while it is
    verified and parsed, small webhooks are still answered."""
    rid = str(uuid.uuid4())
    images = [
        {"url": f"https://v3.fal.media/files/{i}/frame.png", "file_name": "frame.png"}
        for i in range(8000)
    ]
    raw = json.dumps({"request_id": rid, "status": "OK", "payload": {"images": images}}).encode()
    assert len(raw) > 256 * 1024
    big = asyncio.create_task(
        client.post("/webhooks/default", content=raw, headers=signed(signer, raw, rid))
    )
    small_ids = [str(uuid.uuid4()) for _ in range(5)]
    small = []
    for sid in small_ids:
        body = json.dumps({"request_id": sid, "status": "OK", "payload": None}).encode()
        small.append(
            await client.post("/webhooks/default", content=body, headers=signed(signer, body, sid))
        )
    assert [r.json()["status"] for r in small] == ["accepted"] * 5
    resp = await big
    assert resp.status_code == 200 and resp.json()["status"] == "accepted"


# --- through a real server: clients that do not finish their bodies --------------------------
