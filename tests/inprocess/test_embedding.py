"""falhook inside the user's own ASGI application: mounted under a path prefix (Starlette's
and FastAPI's `mount`), its lifespan run by the host, and used without it (lazily, with one
warning). The process tier (tests/process/test_embedding.py) runs docs/embedding.md's
examples through a real uvicorn."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import falhook.app
from falhook.app import Falhook, create_app
from falhook.config import ConfigError, settings_from_dict
from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import base_config
from tests.support.fileserver import FileServer
from tests.support.inprocess import FAST_DELIVERY, wait_until
from tests.support.logs import captured

PREFIX = "/fal"
TOKEN = "embedding-console-token"  # a console behind a public URL is served only with one


def _settings(tmp_path: Path, jwks_url: str, store: dict[str, str], **extra: Any) -> Any:
    config = base_config(
        tmp_path,
        jwks_url,
        store=store,
        delivery=FAST_DELIVERY,
        receiver={"public_url": f"https://app.example.com{PREFIX}"},
        console={"token": TOKEN},
        **extra,
    )
    return settings_from_dict(config, base_dir=tmp_path)


async def _home(_: Any) -> PlainTextResponse:
    return PlainTextResponse("the host's own page")


def starlette_host(fh: Falhook) -> Starlette:
    return Starlette(routes=[Route("/", _home), Mount(PREFIX, app=fh)], lifespan=fh.lifespan)


def fastapi_host(fh: Falhook) -> FastAPI:
    api = FastAPI(lifespan=fh.lifespan)

    @api.get("/")
    async def home() -> dict[str, str]:
        return {"page": "the host's own"}

    api.mount(PREFIX, fh)
    return api


@contextlib.asynccontextmanager
async def served(host: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The host app with its lifespan run, as a server runs it, and a client to it."""
    async with host.router.lifespan_context(host):
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            yield client


async def _post(
    client: httpx.AsyncClient, signer: FalSigner, payload: Any, route: str = "default"
) -> tuple[str, httpx.Response]:
    rid, body = webhook_body(str(uuid.uuid4()), payload=payload)
    resp = await client.post(
        f"{PREFIX}/webhooks/{route}", content=body, headers=signer.headers(body, rid)
    )
    return rid, resp


@pytest.mark.parametrize("host", [starlette_host, fastapi_host], ids=["starlette", "fastapi"])
async def test_a_mounted_app_stores_and_delivers_webhooks_under_its_prefix(
    host: Any,
    tmp_path: Path,
    jwks: Any,
    signer: FalSigner,
    files: FileServer,
    store_section: dict[str, str],
) -> None:
    fh = create_app(_settings(tmp_path, jwks.url, store_section))
    files.add("/v.mp4", data=b"video bytes", content_type="video/mp4")
    async with served(host(fh)) as client:
        # The lifespan ran with the host: keys loaded and worker running before any request.
        assert fh.runtime.started and fh.runtime.worker is not None
        video = {"url": files.url("/v.mp4"), "file_name": "output.mp4"}
        rid, resp = await _post(client, signer, {"video": video})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"status": "accepted", "request_id": rid}

        async def delivered() -> bool:
            view = await fh.runtime.store.get_event(rid)
            return view is not None and view.state == "delivered"

        await wait_until(delivered, what="the event to be delivered")
        assert (tmp_path / "files" / "default" / rid / "output.mp4").read_bytes() == b"video bytes"
        # Health, readiness and metrics under the prefix, the host's own routes untouched.
        assert (await client.get(f"{PREFIX}/healthz")).json() == {"status": "ok"}
        ready = await client.get(f"{PREFIX}/readyz")
        assert ready.status_code == 200, ready.text
        metrics = await client.get(f"{PREFIX}/metrics")
        assert 'falhook_webhooks_total{outcome="accepted",reason="",route="default"}' in (
            metrics.text
        )
        assert (await client.get("/")).status_code == 200
        # The console is routed to under the prefix (its pages are the console's own).
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        api = await client.get(f"{PREFIX}/console/api/events/{rid}", headers=bearer)
        assert api.status_code == 200, api.text
        assert api.json()["request_id"] == rid
        # Outside the prefix, nothing of falhook answers.
        assert (await client.post("/webhooks/default", content=b"{}")).status_code == 404
    assert not fh.runtime.started  # stopped with the host


@pytest.mark.one_store("routing, not storage")
async def test_the_endpoint_answers_unknown_routes_under_the_prefix_with_its_own_404(
    tmp_path: Path, jwks: Any, signer: FalSigner, store_section: dict[str, str]
) -> None:
    fh = create_app(_settings(tmp_path, jwks.url, store_section))
    async with served(starlette_host(fh)) as client:
        _, resp = await _post(client, signer, {}, route="nope")
        assert resp.status_code == 404
        assert resp.json()["error"] == "unknown_route"
        get = await client.get(f"{PREFIX}/webhooks/default")
        assert get.status_code == 405


@pytest.mark.one_store("the alert's link, not storage")
async def test_the_alerts_console_link_carries_the_public_urls_path(
    tmp_path: Path, jwks: Any, signer: FalSigner, store_section: dict[str, str]
) -> None:
    from falhook.delivery.routing import Router

    settings = _settings(tmp_path, jwks.url, store_section)
    router = Router(settings)
    rid, body = webhook_body("req/1")
    fh = create_app(settings)
    async with served(starlette_host(fh)) as client:
        resp = await client.post(
            f"{PREFIX}/webhooks/default", content=body, headers=signer.headers(body, rid)
        )
        assert resp.status_code == 200
        view = await fh.runtime.store.get_event(rid)
    assert view is not None
    assert router.console(view) == "https://app.example.com/fal/console/events/req%2F1"


@pytest.mark.one_store("start-up wiring, not storage")
async def test_without_the_hosts_lifespan_it_starts_lazily_and_warns_once(
    tmp_path: Path, jwks: Any, signer: FalSigner, store_section: dict[str, str]
) -> None:
    fh = create_app(_settings(tmp_path, jwks.url, store_section))
    host = Starlette(routes=[Mount(PREFIX, app=fh)])  # lifespan=fh.lifespan forgotten
    with captured(falhook.app) as logs:
        async with served(host) as client:
            assert not fh.runtime.started
            for _ in range(3):
                _, resp = await _post(client, signer, {})
                assert resp.status_code == 200, resp.text
            assert (await client.get(f"{PREFIX}/readyz")).status_code == 200
            assert fh.runtime.started and fh.runtime.worker is not None
        await fh.runtime.close()
    warnings = [e for e in logs if "lifespan" in e["event"]]
    assert len(warnings) == 1, warnings
    assert "lifespan=" in warnings[0]["event"] and warnings[0]["log_level"] == "warning"


@pytest.mark.one_store("start-up wiring, not storage")
async def test_the_lifespan_can_be_entered_inside_the_hosts_own(
    tmp_path: Path, jwks: Any, signer: FalSigner, store_section: dict[str, str]
) -> None:
    fh = create_app(_settings(tmp_path, jwks.url, store_section))
    order: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        order.append("host up")
        async with fh.lifespan(app):
            order.append(f"falhook up: {fh.runtime.started}")
            yield
        order.append(f"falhook down: {fh.runtime.started}")

    host = Starlette(routes=[Mount(PREFIX, app=fh)], lifespan=lifespan)
    with captured(falhook.app) as logs:
        async with served(host) as client:
            _, resp = await _post(client, signer, {})
            assert resp.status_code == 200
    assert order == ["host up", "falhook up: True", "falhook down: False"]
    assert not [e for e in logs if "lifespan" in e["event"] and e["log_level"] == "warning"]


@pytest.mark.one_store("settings, not storage")
async def test_a_config_mistake_found_by_the_lifespan_stops_the_host(
    tmp_path: Path, jwks: Any, store_section: dict[str, str]
) -> None:
    """A sink folder that cannot be written fails the host's start-up, as `serve`'s."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    settings = _settings(
        tmp_path,
        jwks.url,
        store_section,
        sinks={"local": {"type": "disk", "root": str(blocked / "files")}},
    )
    fh = create_app(settings)
    with pytest.raises(ConfigError, match=r"\[sinks.local\]"):
        async with served(starlette_host(fh)):
            pass
    assert not fh.runtime.started
