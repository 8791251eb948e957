"""Routing rules through a real `falhook serve` (SQLite and PostgreSQL): a Slack stand-in with
`filter = {fal_status = "ERROR"}` gets only the ERROR event while the OK event ends
`delivered` with that sink `skipped`; a route whose only sink filters everything out
downloads nothing; a sink that answers 400 goes dead and the route's `on_dead` Slack sink
posts one alert, rendered as an alert."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import Falhook, wait_for
from tests.support.fileserver import FileServer
from tests.support.http_target import HttpTarget
from tests.support.slack_stub import SlackStub, block_problems

SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def send(fh: Falhook, signer: FalSigner, route: str, **envelope: Any) -> str:
    rid, body = webhook_body(str(uuid.uuid4()), **envelope)
    headers = signer.headers(body, rid)
    answer = httpx.post(fh.url(f"/webhooks/{route}"), content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return rid


def test_a_slack_sink_filtered_on_errors_posts_only_the_error_event(
    falhook_factory: Callable[..., Falhook],
    signer: FalSigner,
    files: FileServer,
    slack: SlackStub,
    tmp_path: Any,
) -> None:
    files.add("/ok.mp4", data=b"o" * 2048, content_type="video/mp4")
    files.add("/quiet.mp4", data=b"q" * 2048, content_type="video/mp4")
    fh = falhook_factory(
        sinks={
            "local": {"type": "disk", "root": str(tmp_path / "files")},
            "team": {
                "type": "slack",
                "webhook_url": slack.webhook_url,
                "filter": {"fal_status": "ERROR"},
            },
            "muted": {
                "type": "disk",
                "root": str(tmp_path / "muted"),
                "filter": {"payload": {"video": {"content_type": {"$startsWith": "image/"}}}},
            },
        },
        routes={"reframe": {"sinks": ["local", "team"]}, "quiet": {"sinks": ["muted"]}},
    ).start()

    ok = send(fh, signer, "reframe", payload={"video": {"url": files.url("/ok.mp4")}})
    failed = send(fh, signer, "reframe", status="ERROR", error="GPU out of memory", payload=None)
    event = fh.wait_state(ok, "delivered")
    assert {n: d["state"] for n, d in event["deliveries"].items()} == {
        "local": "delivered",
        "team": "skipped",
    }
    team = event["deliveries"]["team"]
    assert team["attempts"] == 0
    assert '{"fal_status":"ERROR"}' in team["last_error"]
    assert [(h["outcome"], h["error"]) for h in team["history"]] == [
        ("skipped", team["last_error"])
    ]
    event = fh.wait_state(failed, "delivered")
    assert event["deliveries"]["team"]["state"] == "delivered"
    [post] = slack.posts()
    assert failed in post.body.decode() and ok not in post.body.decode()
    assert files.hits("/ok.mp4") == 1

    # The route whose only sink filters everything out: delivered, nothing fetched.
    quiet = send(fh, signer, "quiet", payload={"video": {"url": files.url("/quiet.mp4")}})
    event = fh.wait_state(quiet, "delivered")
    assert event["deliveries"]["muted"]["state"] == "skipped"
    assert files.hits("/quiet.mp4") == 0
    assert not (tmp_path / "muted" / "quiet").exists()  # the root exists: checked at start

    metrics = httpx.get(fh.url("/metrics"), timeout=10).text
    assert 'falhook_deliveries_total{outcome="skipped",sink="team"} 1.0' in metrics
    assert 'falhook_deliveries_total{outcome="skipped",sink="muted"} 1.0' in metrics


def test_a_sink_answering_400_goes_dead_and_slack_posts_one_alert(
    falhook_factory: Callable[..., Falhook], signer: FalSigner, slack: SlackStub
) -> None:
    with HttpTarget(status=400) as refusing:
        fh = falhook_factory(
            receiver={"public_url": "https://hooks.example.com"},
            sinks={
                "forward": {"type": "http", "url": refusing.url, "secret": SECRET},
                "team": {"type": "slack", "webhook_url": slack.webhook_url},
            },
            routes={"reframe": {"sinks": ["forward"], "on_dead": ["team"]}},
        ).start()
        rid = send(fh, signer, "reframe", payload={"text": "no files"})
        event = fh.wait_state(rid, "dead")
        [post] = wait_for(slack.posts, timeout=30, what="the alert's Slack post")
        assert len(refusing.requests) == 1
    listed = fh.cli("events", "list", "--json")
    [alert] = [e for e in json.loads(listed.stdout)["events"] if e["source"] == "alert"]
    fh.wait_state(alert["request_id"], "delivered")
    assert len(slack.posts()) == 1

    doc = post.json
    assert block_problems(doc, set()) is None
    assert doc["blocks"][0]["text"]["text"] == "⚠️ Delivery dead · forward · reframe"
    text = str(doc["blocks"])
    assert rid in text and "answered 400" in text
    assert f"https://hooks.example.com/console/events/{rid}" in text
    assert doc["text"].startswith(f"falhook: delivery of {rid} to forward (reframe) is dead")
    assert event["deliveries"]["forward"]["attempts"] == 1
    metrics = httpx.get(fh.url("/metrics"), timeout=10).text
    assert 'falhook_alerts_total{route="reframe",sink="forward"} 1.0' in metrics
