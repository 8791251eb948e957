"""The first hour of a new user: files others can read, mistakes found at start-up and named,
readiness logged when it is true, one message format, and hints that name the key to set."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook.testing import FalSigner, JWKSServer, webhook_body
from tests.support.falhook_server import Falhook, base_config, wait_for


@pytest.mark.one_store("start-up checks of sinks, before the store is used")
def test_serve_with_an_unwritable_root_exits_2_without_a_traceback(
    tmp_path: Path, jwks: JWKSServer, store_section: dict[str, str]
) -> None:
    (tmp_path / "blocker").write_text("")
    config = base_config(tmp_path, jwks.url, store=store_section)
    config["sinks"]["local"]["root"] = str(tmp_path / "blocker" / "files")
    falhook = Falhook(tmp_path, config)
    try:
        falhook.start(wait=False)
        assert falhook.proc is not None
        assert falhook.proc.wait(timeout=60) == 2
    finally:
        falhook.close()  # a regression that serves instead must not outlive the test
    logs = falhook.logs()
    assert "falhook: config error: [sinks.local].root:" in logs and "blocker" in logs
    assert "Traceback" not in logs


@pytest.mark.one_store("what /readyz reports about sinks")
def test_readyz_reports_the_sinks(falhook: Falhook) -> None:
    body = httpx.get(falhook.url("/readyz"), timeout=10).json()
    assert body["status"] == "ready" and body["sinks"] == {"local": []}
    root = Path(falhook.config["sinks"]["local"]["root"])
    root.rmdir()
    root.write_text("now a file")  # broken after start: reported, webhooks still stored
    body = wait_for(
        lambda: (b := httpx.get(falhook.url("/readyz"), timeout=10).json())["sinks"]["local"] and b,
        timeout=30,
        what="/readyz to report the sink",
    )
    assert "[sinks.local].root" in body["sinks"]["local"][0] and body["status"] == "ready"


@pytest.mark.one_store("readiness of the keys, logged")
def test_ready_is_logged_only_once_keys_are_loaded(falhook_factory: Any, jwks: JWKSServer) -> None:
    jwks.fail(503)
    falhook = falhook_factory().start()
    wait_for(lambda: "falhook started, not ready" in falhook.logs(), timeout=30, what="not ready")
    assert "falhook ready" not in falhook.logs()
    assert httpx.get(falhook.url("/readyz"), timeout=10).status_code == 503
    line = next(json.loads(x) for x in falhook.logs().splitlines() if "jwks fetch failed" in x)
    assert line["host"] == f"127.0.0.1:{jwks.port}"
    assert line["reason"] == "HTTP 503 from the JWKS endpoint"
    jwks.fail(None)
    wait_for(lambda: "falhook ready" in falhook.logs(), timeout=60, what="falhook ready")
    assert httpx.get(falhook.url("/readyz"), timeout=10).status_code == 200


@pytest.mark.one_store("the disk sink's event.json")
def test_event_json_carries_no_delivery_state(falhook: Falhook, signer: FalSigner) -> None:
    rid, body = webhook_body(str(uuid.uuid4()), payload={"n": 1})
    r = httpx.post(
        falhook.url("/webhooks/default"), content=body, headers=signer.headers(body, rid)
    )
    assert r.status_code == 200
    falhook.wait_state(rid, "delivered")
    root = Path(falhook.config["sinks"]["local"]["root"])
    doc = json.loads((root / "default" / rid / "event.json").read_text())
    assert doc["request_id"] == rid and doc["payload"] == {"n": 1}
    assert not {"state", "deliveries", "attempts", "last_error"} & set(doc)


@pytest.mark.one_store("a warning at start-up")
def test_an_empty_config_starts_with_no_routes_and_a_warning(tmp_path: Path) -> None:
    falhook = Falhook(tmp_path, {})
    with falhook:
        wait_for(lambda: "no [routes.NAME]" in falhook.logs(), timeout=30, what="the warning")
    assert "every webhook is answered 404" in falhook.logs()
