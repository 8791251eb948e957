"""Routing rules through the real store and worker, in this process, on SQLite and PostgreSQL:
sink filters (skipped deliveries, nothing downloaded for an event every sink skips, a sink
`after` a skipped one) and `on_dead` alerts (one alert event per dead delivery, stored with
the dead outcome, never an alert about an alert)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from falhook.config import ConfigError, settings_from_dict
from falhook.delivery.routing import alert_id
from falhook.delivery.worker import Worker
from falhook.intake.envelope import parse_envelope
from falhook.intake.events import new_event
from falhook.runtime import Runtime
from falhook.store.models import EventView, Finish, NewEvent, NewSubmission
from falhook.testing import webhook_body
from tests.support.fileserver import FileServer
from tests.support.http_target import HttpTarget
from tests.support.recorder import RECEIVED
from tests.support.stores import open_backend

SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
PUBLIC_URL = "https://hooks.example.com"


def recorder(key: str, **extra: Any) -> dict[str, Any]:
    return {"type": "python", "handler": "tests.support.recorder:record", "key": key, **extra}


class Routing:
    """The store, sinks and worker of one config, in this process."""

    def __init__(self, tmp_path: Path, store: dict[str, str], **config: Any) -> None:
        base = {
            "receiver": {"public_url": PUBLIC_URL},
            "store": store,
            "delivery": {"backoff_initial": 0.05, "backoff_max": 0.2, "max_attempts": 3},
            "downloads": {"allow_private_hosts": True, "spool_dir": str(tmp_path / "spool")},
        }
        self.settings = settings_from_dict(base | config, base_dir=tmp_path)
        self.runtime = Runtime(self.settings, worker="on_demand")

    @property
    def worker(self) -> Worker:
        assert self.runtime.worker is not None
        return self.runtime.worker

    async def send(self, route: str, payload: Any = None, **envelope: Any) -> str:
        rid, body = webhook_body(str(uuid.uuid4()), payload=payload or {"n": 1}, **envelope)
        sinks = self.settings.routes[route].sinks
        event = new_event(parse_envelope(body), route=route, sinks=sinks, body=body, headers={})
        assert await self.runtime.store.accept(event)
        return rid

    async def deliver(self, rid: str) -> EventView:
        await self.worker.deliver_now(rid, deadline=60)
        view = await self.runtime.store.get_event(rid)
        assert view is not None
        return view

    async def alerts(self) -> list[EventView]:
        return [e for e in await self.runtime.store.list_events() if e.source == "alert"]


@pytest.fixture
async def make_routing(
    tmp_path: Path, store_section: dict[str, str]
) -> AsyncIterator[Callable[..., Any]]:
    made: list[Routing] = []

    async def make(**config: Any) -> Routing:
        routing = Routing(tmp_path, store_section, **config)
        await routing.runtime.start()
        made.append(routing)
        return routing

    yield make
    for routing in made:
        await routing.runtime.close()


def states(view: EventView) -> dict[str, str]:
    return {name: d.state for name, d in view.deliveries.items()}


# --- filters ---------------------------------------------------------------------------------


async def test_a_sink_whose_filter_does_not_match_is_skipped_saying_which_filter(
    make_routing: Callable[..., Any], tmp_path: Path
) -> None:
    key = str(tmp_path)
    r = await make_routing(
        sinks={
            "all": recorder(key + "all"),
            "errors": recorder(key + "errors", filter={"fal_status": "ERROR"}),
        },
        routes={"reframe": {"sinks": ["all", "errors"]}},
    )
    ok = await r.deliver(await r.send("reframe"))
    assert ok.state == "delivered"
    assert states(ok) == {"all": "delivered", "errors": "skipped"}
    skipped = ok.deliveries["errors"]
    assert skipped.attempts == 0  # not an attempt
    assert skipped.last_error == ('skipped: the event does not match filter {"fal_status":"ERROR"}')
    assert [(h.outcome, h.error) for h in skipped.history] == [("skipped", skipped.last_error)]

    failed = await r.deliver(await r.send("reframe", status="ERROR", error="boom"))
    assert states(failed) == {"all": "delivered", "errors": "delivered"}
    assert [c.event.request_id for c in RECEIVED[key + "errors"]] == [failed.request_id]
    assert len(RECEIVED[key + "all"]) == 2
    counted = r.runtime.metrics.deliveries.labels(sink="errors", outcome="skipped")
    assert counted._value.get() == 1


async def test_filters_see_the_endpoint_submission_and_payload(
    make_routing: Callable[..., Any], tmp_path: Path
) -> None:
    key = str(tmp_path)
    spec = {
        "endpoint": {"$startsWith": "luma/"},
        "submission": {"input": {"prompt": {"$in": "scene"}}},
        "payload": {"video": {"content_type": "video/mp4"}},
    }
    r = await make_routing(
        sinks={"luma": recorder(key, filter=json.dumps(spec))},
        routes={"reframe": {"sinks": ["luma"]}},
    )
    payload = {"video": {"url": "data:video/mp4;base64,AAAA", "content_type": "video/mp4"}}
    rid = await r.send("reframe", payload)
    assert states(await r.deliver(rid)) == {"luma": "skipped"}  # no submission: no endpoint
    submitted = str(uuid.uuid4())
    await r.runtime.store.record_submission(
        NewSubmission(submitted, "luma/agent/ray/v3.2/reframe", "reframe", {"prompt": "a scene"})
    )
    _, body = webhook_body(submitted, payload=payload)
    sinks = ["luma"]
    event = new_event(parse_envelope(body), route="reframe", sinks=sinks, body=body, headers={})
    assert await r.runtime.store.accept(event)
    assert states(await r.deliver(submitted)) == {"luma": "delivered"}


async def test_nothing_is_downloaded_for_an_event_every_sink_skips(
    make_routing: Callable[..., Any], tmp_path: Path, files: FileServer
) -> None:
    key = str(tmp_path)
    r = await make_routing(
        sinks={
            "local": {"type": "disk", "root": str(tmp_path / "files"), "filter": {"route": "x"}},
            "team": recorder(key, filter={"fal_status": "ERROR"}),
        },
        routes={"reframe": {"sinks": ["local", "team"]}},
    )
    files.add("/v.mp4", data=b"v" * 1000, content_type="video/mp4")
    view = await r.deliver(await r.send("reframe", {"video": {"url": files.url("/v.mp4")}}))
    assert view.state == "delivered"
    assert states(view) == {"local": "skipped", "team": "skipped"}
    assert files.hits("/v.mp4") == 0
    assert not (tmp_path / "files" / "reframe").exists()  # the root exists: checked at start


async def test_a_sink_after_a_skipped_one_runs_without_its_output(
    make_routing: Callable[..., Any], tmp_path: Path
) -> None:
    key = str(tmp_path)
    r = await make_routing(
        sinks={
            "archive": recorder(key + "archive", filter={"fal_status": "OK"}),
            "team": recorder(key + "team", after=["archive"]),
        },
        routes={"reframe": {"sinks": ["archive", "team"]}},
    )
    failed = await r.deliver(await r.send("reframe", status="ERROR", error="boom"))
    assert states(failed) == {"archive": "skipped", "team": "delivered"}
    assert failed.deliveries["team"].attempts == 1
    [ctx] = RECEIVED[key + "team"]
    assert dict(ctx.outputs) == {}  # nothing to read from a sink that did not run
    ok = await r.deliver(await r.send("reframe"))
    assert states(ok) == {"archive": "delivered", "team": "delivered"}
    assert RECEIVED[key + "team"][1].outputs == {"archive": {"recorded": ok.request_id}}


async def test_a_skip_is_decided_again_on_replay(
    make_routing: Callable[..., Any], tmp_path: Path
) -> None:
    r = await make_routing(
        sinks={"team": recorder(str(tmp_path), filter={"fal_status": "ERROR"})},
        routes={"reframe": {"sinks": ["team"]}},
    )
    rid = await r.send("reframe")
    await r.deliver(rid)
    assert await r.runtime.store.replay(rid) == 1
    view = await r.deliver(rid)
    assert states(view) == {"team": "skipped"}
    assert [h.outcome for h in view.deliveries["team"].history] == ["skipped", "skipped"]


@pytest.mark.one_store("a configuration check")
@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            {"fal_status": {"$like": "E%"}},
            "[sinks.team].filter: fal_status.$like: unknown operator",
        ),
        ({"payload": {"size": {"$gt": [1]}}}, "[sinks.team].filter: payload.size.$gt: needs a"),
        ("{not json", "[sinks.team].filter: is not valid JSON"),
    ],
)
def test_a_bad_filter_stops_start_up_naming_the_key(
    tmp_path: Path, store_backend: str, spec: Any, problem: str
) -> None:
    config = {
        "sinks": {"team": {"type": "disk", "filter": spec}},
        "routes": {"r": {"sinks": ["team"]}},
    }
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(config, base_dir=tmp_path)
    assert str(caught.value).startswith(problem)


@pytest.mark.one_store("a configuration check")
@pytest.mark.parametrize(
    ("on_dead", "problem"),
    [
        (["nope"], "[routes.r].on_dead: names unknown sink 'nope'"),
        ("team", "[routes.r].on_dead: must be a list of sink names"),
        (["team", "team"], "[routes.r].on_dead: lists a sink twice"),
    ],
)
def test_a_bad_on_dead_stops_start_up_naming_the_key(
    tmp_path: Path, store_backend: str, on_dead: Any, problem: str
) -> None:
    config = {
        "sinks": {"team": {"type": "disk"}},
        "routes": {"r": {"sinks": ["team"], "on_dead": on_dead}},
    }
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace(".", r"\.")):
        settings_from_dict(config, base_dir=tmp_path)


# --- alerts ----------------------------------------------------------------------------------


async def test_a_dead_delivery_sends_one_alert_event_to_each_on_dead_sink(
    make_routing: Callable[..., Any], tmp_path: Path
) -> None:
    key = str(tmp_path)
    with HttpTarget(status=400) as refusing, HttpTarget() as paging:
        r = await make_routing(
            sinks={
                "forward": {"type": "http", "url": refusing.url, "secret": SECRET},
                "pager": {"type": "http", "url": paging.url, "secret": SECRET},
                "team": recorder(key, filter={"fal_status": "OK"}),  # filters skip no alert
            },
            routes={"reframe": {"sinks": ["forward"], "on_dead": ["pager", "team"]}},
        )
        rid = await r.send("reframe", status="ERROR", error="fal failed")
        dead = await r.deliver(rid)
        assert states(dead) == {"forward": "dead"}
        [alert] = await r.alerts()
        assert re.fullmatch(r"alert-[0-9a-f]{24}", alert.request_id)
        assert (alert.route, alert.fal_status, alert.source) == ("reframe", "ERROR", "alert")
        assert sorted(alert.deliveries) == ["pager", "team"]
        delivered = await r.deliver(alert.request_id)
        assert states(delivered) == {"pager": "delivered", "team": "delivered"}

        # Once more: nothing new is due, nothing is sent again.
        assert await r.worker.run_once() == 0
        assert len(await r.alerts()) == 1
        [body] = paging.bodies()
        assert len(refusing.requests) == 1
    assert body["type"] == "falhook.alert.delivery_dead"
    reported = body["data"]["payload"]
    assert reported["kind"] == "delivery_dead"
    assert (reported["request_id"], reported["route"], reported["sink"]) == (
        rid,
        "reframe",
        "forward",
    )
    assert reported["attempts"] == 1
    assert reported["last_error"] == dead.deliveries["forward"].last_error
    assert "answered 400" in reported["last_error"]
    assert reported["console_url"] == f"{PUBLIC_URL}/console/events/{rid}"
    [ctx] = RECEIVED[key]
    assert ctx.event.alert == reported and ctx.event.document()["kind"] == "delivery_dead"
    assert r.runtime.metrics.alerts.labels(route="reframe", sink="forward")._value.get() == 1


def test_an_alert_id_is_one_per_event_sink_and_dead_lease() -> None:
    first = alert_id("req-1", "forward", "token-1")
    assert first == alert_id("req-1", "forward", "token-1")  # the same outcome, recorded again
    others = {alert_id("req-2", "forward", "token-1"), alert_id("req-1", "pager", "token-1")}
    others.add(alert_id("req-1", "forward", "token-2"))  # dead again, after a replay
    assert first not in others and len(others) == 3


async def test_an_alert_sink_that_goes_dead_raises_no_alert_of_its_own(
    make_routing: Callable[..., Any], tmp_path: Path
) -> None:
    key = str(tmp_path)
    refuse = {"type": "python", "handler": "tests.support.recorder:refuse"}
    r = await make_routing(
        sinks={"forward": refuse, "pager": refuse | {"key": key}},
        routes={"reframe": {"sinks": ["forward", "pager"], "on_dead": ["pager"]}},
    )
    rid = await r.send("reframe")
    assert states(await r.deliver(rid)) == {"forward": "dead", "pager": "dead"}
    alerts = await r.alerts()
    assert sorted(json.loads(a.body)["payload"]["sink"] for a in alerts) == ["forward", "pager"]
    for alert in alerts:
        assert states(await r.deliver(alert.request_id)) == {"pager": "dead"}
    assert await r.worker.run_once() == 0
    assert len(await r.alerts()) == 2  # the dead alerts raised nothing
    assert len(RECEIVED[key]) == 3  # the result once, each alert once


# --- the store keeps an alert with its dead outcome, or neither ------------------------------


def _alert(request_id: str, **fields: Any) -> NewEvent:
    body = json.dumps({"request_id": request_id, "status": "ERROR", "payload": {}}).encode()
    values: dict[str, Any] = {
        "request_id": request_id,
        "route": "r",
        "fal_status": "ERROR",
        "error": "dead",
        "payload_error": None,
        "gateway_request_id": None,
        "headers": {},
        "body": body,
        "files": [],
        "sinks": ["pager"],
        "source": "alert",
    }
    return NewEvent(**(values | fields))


async def test_the_store_keeps_an_alert_only_with_the_dead_outcome(
    store_backend: str, tmp_path: Path
) -> None:
    async with open_backend(store_backend, tmp_path) as store:
        rid = str(uuid.uuid4())
        assert await store.accept(_alert(rid, source="webhook", sinks=["a"]))
        [job] = await store.lease(owner="w", limit=10, lease_seconds=60)
        [held] = job.deliveries
        stale = Finish(rid, "a", "not-the-token", "dead", "x", alerts=(_alert("alert-1"),))
        assert not await store.finish(stale)
        assert await store.get_event("alert-1") is None  # the outcome was not recorded

        # An alert that cannot be stored takes the outcome down with it.
        broken = _alert("alert-2", body=None)
        with pytest.raises(Exception):  # noqa: B017 - whatever the engine says
            await store.finish(Finish(rid, "a", held.token, "dead", "x", alerts=(broken,)))
        view = await store.get_event(rid)
        assert view is not None and view.deliveries["a"].state == "delivering"

        ok = Finish(rid, "a", held.token, "dead", "x", alerts=(_alert("alert-3"),))
        assert await store.finish(ok)
        alert = await store.get_event("alert-3")
        assert alert is not None and alert.source == "alert"
        assert {n: d.state for n, d in alert.deliveries.items()} == {"pager": "pending"}
        assert (await store.get_event(rid)).deliveries["a"].state == "dead"  # type: ignore[union-attr]
        [due] = await store.lease(owner="w", limit=10, lease_seconds=60)
        assert due.event.request_id == "alert-3"  # due at once
