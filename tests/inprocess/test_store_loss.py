"""The store taken away under a running receiver: falhook stops acknowledging (503) and
reports not ready, instead of answering 200 for events a restart cannot find."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from falhook.app import Falhook, create_app
from falhook.config import settings_from_dict
from falhook.testing import FalSigner, JWKSServer
from tests.support.falhook_server import base_config
from tests.support.stores import PG_URL


@pytest.fixture
async def app(
    tmp_path: Path, jwks: JWKSServer, store_section: dict[str, str]
) -> AsyncIterator[Falhook]:
    config = base_config(tmp_path, jwks.url, store=store_section)
    made = create_app(settings_from_dict(config, base_dir=tmp_path), run_worker=False)
    try:
        yield made
    finally:
        await made.runtime.close()


async def post(client: httpx.AsyncClient, signer: FalSigner) -> httpx.Response:
    rid = str(uuid.uuid4())
    raw = json.dumps({"request_id": rid, "status": "OK", "payload": None}).encode()
    return await client.post("/webhooks/default", content=raw, headers=signer.headers(raw, rid))


async def take_the_store_away(store_backend: str, section: dict[str, str], tmp_path: Path) -> None:
    if store_backend == "sqlite":
        db = Path(section["url"].removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        return
    conn = await asyncpg.connect(PG_URL, timeout=10)
    try:
        await conn.execute("SET lock_timeout = '10s'")
        await conn.execute(f'DROP SCHEMA "{section["schema"]}" CASCADE')
    finally:
        await conn.close()


async def test_a_store_taken_away_while_running_is_503_and_not_ready(
    app: Falhook,
    signer: FalSigner,
    store_backend: str,
    store_section: dict[str, str],
    tmp_path: Path,
) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://falhook") as client:
        assert (await post(client, signer)).json()["status"] == "accepted"
        assert (await client.get("/readyz")).status_code == 200
        await take_the_store_away(store_backend, store_section, tmp_path)
        resp = await post(client, signer)
        assert resp.status_code == 503
        assert resp.json()["error"] == "store_unavailable"
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["store"] is False
