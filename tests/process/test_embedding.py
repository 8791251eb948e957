"""docs/embedding.md's examples, as written there, each in a real uvicorn process with falhook
under the prefix /fal: a webhook is stored and delivered under the prefix, the probes and the
console answer there, falhook starts with the server (no lazy-start warning), and a SIGTERM
while a delivery is in flight hands the delivery back (pending, attempts not counted) instead
of losing it."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook.testing import FalSigner, JWKSServer
from tests.support.falhook_server import base_config
from tests.support.fileserver import FileServer
from tests.support.hosted import (
    BIN,
    Hosted,
    assert_handed_back,
    doc_blocks,
    sigterm_mid_delivery,
)
from tests.support.paths import ROOT

EXAMPLES = doc_blocks((ROOT / "docs" / "embedding.md").read_text())
PREFIX = "/fal"
TOKEN = "embedding-console-token"  # a console behind a public URL is served only with one


def _config(tmp_path: Path, jwks: JWKSServer, store: dict[str, str]) -> dict[str, Any]:
    return base_config(
        tmp_path,
        jwks.url,
        store=store,
        receiver={"public_url": f"https://app.example.com{PREFIX}"},
        console={"token": TOKEN},
        delivery={"shutdown_grace": 0.0, "lease_seconds": 300},
    )


def _uvicorn(tmp_path: Path, config: dict[str, Any], module: str, *extra: str) -> Hosted:
    (tmp_path / f"{module}.py").write_text(EXAMPLES[f"{module}.py"])
    args = [str(BIN / "uvicorn"), f"{module}:app", "--app-dir", str(tmp_path),
            "--host", "127.0.0.1", "--port", "{port}", *extra]  # fmt: skip
    return Hosted(tmp_path, config, args, name=module, health=f"{PREFIX}/healthz")


def test_the_documents_examples_are_all_here() -> None:
    assert set(EXAMPLES) == {"fastapi_app.py", "starlette_app.py", "asgi_app.py", "own_route.py"}


@pytest.mark.parametrize("module", ["fastapi_app", "starlette_app", "asgi_app"])
def test_an_example_mounts_falhook_under_a_prefix_and_hands_work_back_on_sigterm(
    module: str,
    tmp_path: Path,
    jwks: JWKSServer,
    signer: FalSigner,
    files: FileServer,
    store_section: dict[str, str],
) -> None:
    app = _uvicorn(tmp_path, _config(tmp_path, jwks, store_section), module)
    try:
        app.start()
        files.add("/v.mp4", data=b"video", content_type="video/mp4")
        payload = {"video": {"url": files.url("/v.mp4"), "file_name": "v.mp4"}}
        rid, answer = app.post(f"{PREFIX}/webhooks/default", signer, payload)
        assert answer.json() == {"status": "accepted", "request_id": rid}
        app.wait_state(rid, "delivered")
        assert (tmp_path / "files" / "default" / rid / "v.mp4").read_bytes() == b"video"
        assert httpx.get(app.url(f"{PREFIX}/readyz")).status_code == 200
        assert "falhook_webhooks_total" in httpx.get(app.url(f"{PREFIX}/metrics")).text
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        shown = httpx.get(app.url(f"{PREFIX}/console/api/events/{rid}"), headers=bearer)
        assert shown.status_code == 200 and shown.json()["request_id"] == rid
        assert httpx.get(app.url("/")).status_code == 200  # the host's own page
        outside = httpx.post(app.url("/webhooks/default"), content=b"{}")
        assert "unknown_route" not in outside.text and "missing_header" not in outside.text
        held, _ = sigterm_mid_delivery(app, files, signer, f"{PREFIX}/webhooks/default")
    finally:
        app.close()
    logs = app.logs()
    assert "falhook ready" in logs and "worker stopped" in logs
    assert "its lifespan was not run" not in logs  # the host ran it: no lazy start
    assert_handed_back(app, held)


def test_your_own_route_verifies_and_accepts_into_falhooks_store(
    tmp_path: Path,
    jwks: JWKSServer,
    signer: FalSigner,
    files: FileServer,
    store_section: dict[str, str],
) -> None:
    (tmp_path / "own_route.py").write_text(EXAMPLES["own_route.py"])
    args = [str(BIN / "uvicorn"), "own_route:app", "--app-dir", str(tmp_path),
            "--host", "127.0.0.1", "--port", "{port}"]  # fmt: skip
    config = _config(tmp_path, jwks, store_section)
    app = Hosted(tmp_path, config, args, name="own_route", health="/docs")
    try:
        app.start()
        files.add("/o.png", data=b"png", content_type="image/png")
        payload = {"image": {"url": files.url("/o.png"), "file_name": "o.png"}}
        rid, answer = app.post("/hooks/fal", signer, payload)
        assert answer.json() == {"status": "accepted"}
        again = httpx.post(app.url("/hooks/fal"), content=b"{}", headers={"x": "y"})
        assert again.status_code == 401 and again.json()["error"] == "missing_header"
        event = app.wait_state(rid, "delivered")
        assert event["route"] == "reframe"
        assert (tmp_path / "files" / "reframe" / rid / "o.png").read_bytes() == b"png"
    finally:
        app.close()


def test_behind_a_proxy_that_strips_the_prefix_uvicorn_root_path_serves_falhook(
    tmp_path: Path, jwks: JWKSServer, signer: FalSigner, store_section: dict[str, str]
) -> None:
    """falhook's own app alone under `uvicorn --root-path /fal`: the proxy took /fal off."""
    factory = "import falhook, os\n" "def make():\n" "    return falhook.create_app(" \
              "falhook.load_settings(os.environ['FALHOOK_CONFIG']))\n"  # fmt: skip
    (tmp_path / "alone.py").write_text(factory)
    args = [str(BIN / "uvicorn"), "alone:make", "--factory", "--app-dir", str(tmp_path),
            "--root-path", PREFIX, "--host", "127.0.0.1", "--port", "{port}"]  # fmt: skip
    app = Hosted(tmp_path, _config(tmp_path, jwks, store_section), args, name="alone")
    try:
        app.start()
        rid, answer = app.post("/webhooks/default", signer, {"n": 1})
        assert answer.json() == {"status": "accepted", "request_id": rid}
        app.wait_state(rid, "delivered")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        event = json.loads(httpx.get(app.url(f"/console/api/events/{rid}"), headers=bearer).text)
        assert event["request_id"] == rid
    finally:
        app.close()


@pytest.mark.one_store("the server's shutdown, not storage")
@pytest.mark.parametrize("module", ["fastapi_app", "starlette_app"])
def test_an_open_console_stream_does_not_hold_up_the_hosts_shutdown(
    module: str, tmp_path: Path, jwks: JWKSServer, store_section: dict[str, str]
) -> None:
    """uvicorn waits for every open response before it runs the lifespan's shutdown, and a
    console tab's live stream never ends by itself: falhook ends it on the server's signal.
    Plain uvicorn, no --timeout-graceful-shutdown."""
    app = _uvicorn(tmp_path, _config(tmp_path, jwks, store_section), module)
    try:
        app.start()
        tab = socket.create_connection(("127.0.0.1", app.port), timeout=30)
        with tab:
            tab.sendall(
                f"GET {PREFIX}/console/api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            opened = tab.recv(65536)
            assert b" 200 " in opened.split(b"\r\n", 1)[0], opened
            code, _ = app.stop(signal.SIGTERM, timeout=30)
            assert code in (0, -signal.SIGTERM), f"exit {code}:\n{app.logs()}"
            rest = b""
            while chunk := tab.recv(65536):  # the stream ended: the server closed it
                rest += chunk
    finally:
        app.close()
    logs = app.logs()
    assert "worker stopped" in logs, logs  # the lifespan's shutdown ran after it
    assert "timeout graceful shutdown exceeded" not in logs
