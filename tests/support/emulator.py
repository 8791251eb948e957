"""fal's emulator on one loopback server for a whole test module, with a fresh `Emulator`
(its own jobs, files, signer and recorded requests) behind it for each test: stopping the
server is what costs (uvicorn notices a stop at its next 0.1 s tick), not the emulator.
The module-scoped `fal_host` fixture (tests/conftest.py) is that server; a test module adds:

    @pytest.fixture
    def fal(fal_host: SharedEmulator) -> SharedEmulator:
        return fal_host.use(Emulator(delay=0.1))     # fal.url, fal.jwks_url, fal.emulator

A previous test's jobs may still finish in the background (their webhooks go where that test
said); what they record stays on their own Emulator.
"""

from __future__ import annotations

from typing import Any

from falhook.fal.emulate import Emulator, EmulatorServer


class SharedEmulator:
    """One EmulatorServer whose app is whichever Emulator `use` put behind it last."""

    def __init__(self) -> None:
        self.emulator = Emulator()
        self._server = EmulatorServer(self)  # type: ignore[arg-type]  # it serves self.app

    @property
    def app(self) -> SharedEmulator:
        """What EmulatorServer serves: this object, an ASGI app."""
        return self

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.emulator.app(scope, receive, send)

    def use(self, emulator: Emulator) -> SharedEmulator:
        self.emulator = emulator
        return self

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def jwks_url(self) -> str:
        return self._server.jwks_url

    def __enter__(self) -> SharedEmulator:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
