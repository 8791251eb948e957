"""Serverless and container hosts, each run here as far as it can be (docs/deploy.md):

- Google Cloud Run: the container's own command (infra/cloudrun/service.yaml's args) with
  Cloud Run's $PORT, bound to all interfaces, stopping within Cloud Run's 10 s after SIGTERM
  with a delivery in flight, which is handed back.
- Google Cloud Functions: `falhook.cloudfunctions:falhook_webhook` served by the real
  `functions-framework` on loopback, inline mode as on Lambda (the sinks run before the 200;
  a sink that fails makes the answer 503, and fal retries).
- Modal: infra/modal/app.py's factory under uvicorn with its lifespan (Modal's cloud cannot
  be reached from here; the Modal wiring itself is checked by importing the app with the real
  `modal` package).
"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from falhook.app import Falhook
from falhook.testing import FalSigner, JWKSServer
from tests.support.falhook_server import base_config, to_toml
from tests.support.fileserver import FileServer
from tests.support.hosted import BIN, Hosted, assert_handed_back, sigterm_mid_delivery
from tests.support.paths import ROOT

CLOUD_RUN_GRACE = 10.0  # seconds from SIGTERM to SIGKILL on Cloud Run


def test_cloud_run_the_container_honours_port_and_stops_within_the_grace(
    tmp_path: Path,
    jwks: JWKSServer,
    signer: FalSigner,
    files: FileServer,
    store_section: dict[str, str],
) -> None:
    service = yaml.safe_load((ROOT / "infra" / "cloudrun" / "service.yaml").read_text())
    [container] = service["spec"]["template"]["spec"]["containers"]
    shipped = tomllib.loads((ROOT / "infra" / "cloudrun" / "falhook.toml").read_text())
    delivery = {"shutdown_grace": shipped["delivery"]["shutdown_grace"], "lease_seconds": 300}
    config = base_config(tmp_path, jwks.url, store=store_section, delivery=delivery)
    # The image's entry point is `falhook`; the service gives its arguments, no --port.
    command = [sys.executable, "-m", "falhook.cli", *container["args"]]
    app = Hosted(tmp_path, config, command, name="cloudrun", env={"PORT": "{port}"})
    app.env["PORT"] = str(app.port)
    try:
        app.start()  # /healthz answered on $PORT
        assert "0.0.0.0" in container["args"]
        rid, answer = app.post("/webhooks/default", signer, {"n": 1})
        assert answer.status_code == 200
        app.wait_state(rid, "delivered")
        held, took = sigterm_mid_delivery(app, files, signer, "/webhooks/default")
        assert took < CLOUD_RUN_GRACE, f"{took:.1f} s: Cloud Run would have killed it"
        assert_handed_back(app, held)
        assert '"worker stopped"' in app.logs()
    finally:
        app.close()


MAIN_PY = "from falhook.cloudfunctions import falhook_webhook  # noqa: F401\n"


def _cloud_function(tmp_path: Path, config: dict[str, Any]) -> Hosted:
    (tmp_path / "main.py").write_text(MAIN_PY)
    args = [str(BIN / "functions-framework"), "--target", "falhook_webhook", "--source",
            str(tmp_path / "main.py"), "--host", "127.0.0.1", "--port", "{port}"]  # fmt: skip
    return Hosted(tmp_path, config, args, name="gcf", env={"WORKERS": "1", "THREADS": "1"})


def test_cloud_functions_inline_through_functions_framework(
    tmp_path: Path,
    jwks: JWKSServer,
    signer: FalSigner,
    files: FileServer,
    store_section: dict[str, str],
) -> None:
    config = base_config(tmp_path, jwks.url, store=store_section,
                         serverless={"mode": "inline", "inline_deadline": 20})  # fmt: skip
    app = _cloud_function(tmp_path, config)
    try:
        app.start()
        files.add("/i.png", data=b"image", content_type="image/png")
        payload = {"image": {"url": files.url("/i.png"), "file_name": "i.png"}}
        rid, answer = app.post("/webhooks/default", signer, payload)
        assert answer.json() == {"status": "accepted", "request_id": rid}
        # Inline: delivered before the answer, not after.
        assert (tmp_path / "files" / "default" / rid / "i.png").read_bytes() == b"image"
        doc = app.reader.event(rid)
        assert doc is not None and doc["state"] == "delivered"
        files.add("/gone.png", status=500)
        failing, retry = app.post(
            "/webhooks/default", signer, {"i": {"url": files.url("/gone.png")}}
        )
        assert retry.status_code == 503 and retry.json()["error"] == "delivery_incomplete"
        again = httpx.post(app.url("/webhooks/default"), content=b"{}", timeout=30)
        assert again.status_code == 401  # the endpoint's own checks, as everywhere
        assert httpx.get(app.url("/readyz"), timeout=30).status_code == 200
    finally:
        app.close()
    assert failing  # stored: fal's retry will find it (a duplicate, delivered then)


MODAL = ROOT / "infra" / "modal"


def test_modal_the_web_endpoint_serves_falhooks_app(
    tmp_path: Path, jwks: JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """infra/modal/app.py with the real `modal` package (no cloud): an ASGI web endpoint
    whose function returns falhook's app, built from the factory the next test serves."""
    spec = importlib.util.spec_from_file_location("falhook_modal_app", MODAL / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # A web endpoint (modal has no public way to ask since registered_web_endpoints was
    # deprecated; the function says it itself), whose function returns an ASGI app: ours.
    assert module.web._is_web_endpoint()
    config = tmp_path / "falhook.toml"
    config.write_text(to_toml(base_config(tmp_path, jwks.url)))
    monkeypatch.setenv("FALHOOK_CONFIG", str(config))
    served = module.web.local()
    assert isinstance(served, Falhook) and served.serve_lifespan  # Modal runs its lifespan


def test_modal_the_factory_under_uvicorn_with_its_lifespan(
    tmp_path: Path,
    jwks: JWKSServer,
    signer: FalSigner,
    files: FileServer,
    store_section: dict[str, str],
) -> None:
    delivery = {"shutdown_grace": 0.0, "lease_seconds": 300}
    config = base_config(tmp_path, jwks.url, store=store_section, delivery=delivery)
    args = [str(BIN / "uvicorn"), "app:create", "--factory", "--app-dir", str(MODAL),
            "--lifespan", "on", "--host", "127.0.0.1", "--port", "{port}"]  # fmt: skip
    app = Hosted(tmp_path, config, args, name="modal")
    try:
        app.start()
        rid, answer = app.post("/webhooks/default", signer, {"n": 1})
        assert answer.status_code == 200
        app.wait_state(rid, "delivered")
        held, _ = sigterm_mid_delivery(app, files, signer, "/webhooks/default")
        assert_handed_back(app, held)
    finally:
        app.close()
    logs = app.logs()
    assert "falhook ready" in logs and "its lifespan was not run" not in logs
