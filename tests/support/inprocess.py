"""falhook in the test's own process: the ASGI app (`falhook.create_app`) reached through
`httpx.ASGITransport`, its Runtime (store, sinks, JWKS keys, worker) started and closed by
the test, and the store read back through its EventReader role as the contract's EVENT
document. No process starts, so a webhook is accepted and delivered in milliseconds.

    fh = await inprocess()                    # the `inprocess_factory` fixture
    rid = await fh.send(signer, {"video": {"url": files.url("/v.mp4")}})
    event = await fh.wait_state(rid, "delivered")

ASGITransport runs no ASGI lifespan: `start()` starts the runtime itself (the endpoint would
start it on its first request anyway). `listen=True` also serves the app on a loopback port
(uvicorn in this event loop), for callers that must reach it over HTTP, such as fal's
emulator sending its webhooks. `cli()` runs a real `falhook` command on the same store.

Every wait is a condition with a deadline; nothing sleeps for luck.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from falhook.app import Falhook, create_app
from falhook.config import Settings, settings_from_dict
from falhook.runtime import Runtime
from falhook.store import Store
from falhook.store.document import event_document
from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import base_config, to_toml

T = TypeVar("T")

# Faster than the process tests' defaults: a retry or a poll costs tens of milliseconds.
FAST_DELIVERY = {"backoff_initial": 0.05, "backoff_max": 0.5, "poll_interval": 0.05}


async def wait_until(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 30.0,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """Await `condition` until it returns something truthy, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(interval)


def sync_condition(check: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A synchronous check (a server's state, say) as a condition for wait_until."""

    async def condition() -> T:
        return check()

    return condition


async def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A real `falhook` command, without blocking the event loop the app runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "falhook.cli",
        *args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


class InProcess:
    """One falhook app and its runtime in this process, on this test's store."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], *, name: str = "falhook") -> None:
        self.tmp_path = tmp_path
        self.config = config
        self.settings: Settings = settings_from_dict(config, base_dir=tmp_path)
        # The same config as a file, for `falhook` commands run against this store.
        self.config_path = tmp_path / f"{name}.toml"
        self.config_path.write_text(to_toml(config))
        self.app: Falhook | None = None
        self.client: httpx.AsyncClient | None = None
        self.base_url: str | None = None  # set while listening on loopback
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def runtime(self) -> Runtime:
        assert self.app is not None, "start() first"
        return self.app.runtime

    @property
    def store(self) -> Store:
        return self.runtime.store

    async def start(
        self, *, run_worker: bool = True, sock: socket.socket | None = None, **parts: Any
    ) -> InProcess:
        """Build the app (sinks built: a config mistake raises here), start its runtime,
        and serve it on `sock` when given. `parts`: a store, sinks or keys of the test's."""
        self.app = create_app(self.settings, run_worker=run_worker, **parts)
        await self.runtime.start()
        transport = httpx.ASGITransport(app=self.app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://falhook.test")
        if sock is not None:
            await self._listen(sock)
        return self

    async def _listen(self, sock: socket.socket) -> None:
        assert self.app is not None
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False)
        self._server = uvicorn.Server(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        server = self._server

        async def started() -> bool:
            if self._serving is not None and self._serving.done():
                self._serving.result()  # raises what stopped it
            return server.started

        await wait_until(started, timeout=10, what="uvicorn to listen")
        host, port = sock.getsockname()[:2]
        self.base_url = f"http://{host}:{port}"

    async def aclose(self) -> None:
        """Stop serving, close the client and the runtime (idempotent)."""
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._serving, 30)
            self._server = self._serving = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.app is not None:
            await self.runtime.close()

    # --- requests --------------------------------------------------------------------------

    async def post(
        self,
        body: bytes | Any,
        headers: dict[str, str],
        route: str = "default",
        method: str = "POST",
    ) -> httpx.Response:
        assert self.client is not None, "start() first"
        return await self.client.request(
            method, f"/webhooks/{route}", content=body, headers=headers
        )

    async def get(self, path: str) -> httpx.Response:
        assert self.client is not None, "start() first"
        return await self.client.get(path)

    async def send(
        self, signer: FalSigner, payload: Any, route: str = "default", **envelope: Any
    ) -> str:
        """Post a signed webhook that must be accepted; its request_id."""
        rid, body = webhook_body(str(uuid.uuid4()), payload=payload, **envelope)
        resp = await self.post(body, signer.headers(body, rid), route=route)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"status": "accepted", "request_id": rid}
        return rid

    # --- reading the store -----------------------------------------------------------------

    async def event(self, request_id: str) -> dict[str, Any] | None:
        """The contract's EVENT document (what `falhook events show --json` prints)."""
        view = await self.store.get_event(request_id)
        return event_document(view) if view is not None else None

    async def wait_event(
        self, request_id: str, check: Callable[[dict[str, Any]], bool], *, timeout: float = 30,
        what: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        async def matches() -> dict[str, Any] | None:
            doc = await self.event(request_id)
            return doc if doc is not None and check(doc) else None

        return await wait_until(matches, timeout=timeout, what=what or f"{request_id}: {check}")

    async def wait_state(
        self, request_id: str, state: str, *, timeout: float = 30
    ) -> dict[str, Any]:
        return await self.wait_event(
            request_id,
            lambda doc: doc["state"] == state,
            timeout=timeout,
            what=f"{request_id} to be {state}",
        )

    # --- files and commands ------------------------------------------------------------------

    def sink_root(self, sink: str = "local") -> Path:
        return Path(self.config["sinks"][sink]["root"])

    def event_dir(self, route: str, request_id: str, sink: str = "local") -> Path:
        return self.sink_root(sink) / route / request_id

    async def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run `falhook ARGS --config <this app's config>` as a real process."""
        return await run_cli(
            *args, "--config", str(self.config_path), cwd=self.tmp_path, env=env, timeout=timeout
        )


def loopback_socket() -> socket.socket:
    """A bound loopback socket on a free port, for `start(sock=...)`: its URL is known
    before the config is written (fal's emulator needs the webhook URL up front)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


class InProcessFactory:
    """Builds and starts InProcess apps on one test's store; closes them all at the end."""

    def __init__(self, tmp_path: Path, jwks_url: str, store_section: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.jwks_url = jwks_url
        self.store_section = store_section
        self.made: list[InProcess] = []

    def config(self, **overrides: Any) -> dict[str, Any]:
        """base_config on this test's store, with fast delivery timings unless overridden."""
        overrides["store"] = {**self.store_section, **overrides.get("store", {})}
        overrides["delivery"] = {**FAST_DELIVERY, **overrides.get("delivery", {})}
        jwks_url = overrides.pop("jwks_url", self.jwks_url)
        return base_config(self.tmp_path, jwks_url, **overrides)

    def build(self, *, name: str = "falhook", **overrides: Any) -> InProcess:
        """An app not yet started (start it with its own parts, or listening)."""
        fh = InProcess(self.tmp_path, self.config(**overrides), name=name)
        self.made.append(fh)
        return fh

    async def __call__(
        self,
        *,
        name: str = "falhook",
        run_worker: bool = True,
        listen: bool = False,
        parts: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> InProcess:
        """A started app; `overrides` are config sections (see base_config). `listen`: also
        served on a loopback port, which `[receiver].public_url` names."""
        sock = loopback_socket() if listen else None
        if sock is not None:
            receiver = {"public_url": socket_url(sock), **overrides.get("receiver", {})}
            overrides["receiver"] = receiver
        fh = self.build(name=name, **overrides)
        try:
            return await fh.start(run_worker=run_worker, sock=sock, **(parts or {}))
        except BaseException:
            if sock is not None and fh.base_url is None:  # never handed to uvicorn
                sock.close()
            raise

    async def aclose(self) -> None:
        for fh in reversed(self.made):
            with contextlib.suppress(Exception):
                await fh.aclose()


@contextlib.asynccontextmanager
async def inprocess_apps(
    tmp_path: Path, jwks_url: str, store_section: dict[str, str]
) -> AsyncIterator[InProcessFactory]:
    factory = InProcessFactory(tmp_path, jwks_url, store_section)
    try:
        yield factory
    finally:
        await factory.aclose()


class Served:
    """Any ASGI app (a host application mounting falhook, say) served by uvicorn on a
    loopback port in this event loop; `close()` stops it."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], url: str) -> None:
        self.server, self.task, self.url = server, task, url

    async def close(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)


async def serve_asgi(app: Any) -> Served:
    sock = loopback_socket()
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        if task.done():
            task.result()  # raises what stopped it
        return server.started

    await wait_until(started, timeout=10, what="uvicorn to listen")
    return Served(server, task, socket_url(sock))
