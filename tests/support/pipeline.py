"""falhook's delivery path in this process: a SQLite store under tmp_path, the configured sinks
and the real Worker, with events stored as the webhook endpoint stores them. For tests of a
sink through the worker (retries, replays, outputs kept) without a subprocess."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from falhook.config import settings_from_dict
from falhook.delivery.worker import Worker
from falhook.intake.envelope import parse_envelope
from falhook.intake.events import new_event
from falhook.runtime import Runtime
from falhook.store.models import EventView
from falhook.testing import webhook_body


class Pipeline:
    """``async with Pipeline(tmp_path, sinks) as p``: every sink on one route, ``reframe``."""

    def __init__(self, tmp_path: Path, sinks: dict[str, dict[str, Any]], **delivery: Any) -> None:
        self.route = "reframe"
        self.sink_names = list(sinks)
        config = {
            "store": {"url": f"sqlite:///{tmp_path}/data/events.db"},
            "delivery": {"backoff_initial": 0.05, "backoff_max": 0.2, **delivery},
            "downloads": {"allow_private_hosts": True, "spool_dir": str(tmp_path / "spool")},
            "sinks": sinks,
            "routes": {self.route: {"sinks": self.sink_names}},
        }
        self.settings = settings_from_dict(config, base_dir=tmp_path)
        self.runtime = Runtime(self.settings, worker="on_demand")

    async def __aenter__(self) -> Pipeline:
        await self.runtime.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runtime.close()

    @property
    def worker(self) -> Worker:
        assert self.runtime.worker is not None
        return self.runtime.worker

    async def send(self, payload: Any = None, **envelope: Any) -> str:
        """Store a webhook for the route (as the endpoint does after verifying it)."""
        rid, body = webhook_body(str(uuid.uuid4()), payload=payload or {"text": "hi"}, **envelope)
        event = new_event(
            parse_envelope(body), route=self.route, sinks=self.sink_names, body=body, headers={}
        )
        assert await self.runtime.store.accept(event)
        return rid

    async def deliver(self, rid: str) -> EventView:
        """One attempt of each unfinished delivery of the event, due or not."""
        await self.worker.deliver_now(rid, deadline=60)
        view = await self.runtime.store.get_event(rid)
        assert view is not None
        return view

    async def replay(self, rid: str, *, force: bool = False) -> EventView:
        assert await self.runtime.store.replay(rid, force=force) > 0
        return await self.deliver(rid)
