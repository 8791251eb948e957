"""From a verified envelope to the stored event: headers kept, files listed, nothing fetched."""

from __future__ import annotations

import base64
import json
from typing import Any

from falhook.intake.envelope import parse_envelope
from falhook.intake.events import new_event
from falhook.store.models import NewEvent

FAL_HEADERS = {
    "x-fal-webhook-request-id": "r-1",
    "x-fal-webhook-user-id": "user-1",
    "x-fal-webhook-timestamp": "1795460000",
    "x-fal-webhook-signature": "ab" * 64,
}


def event(
    status: str = "OK", payload: Any = None, headers: dict[str, str] | None = None, **doc: Any
) -> NewEvent:
    raw = json.dumps({"request_id": "r-1", "status": status, "payload": payload, **doc}).encode()
    return new_event(
        parse_envelope(raw),
        route="reframe",
        sinks=["local", "team"],
        body=raw,
        headers=FAL_HEADERS if headers is None else headers,
    )


def test_the_event_carries_the_envelope_route_sinks_and_raw_body() -> None:
    e = event(payload={"video": {"url": "https://f/v.mp4"}}, gateway_request_id="g-1")
    assert (e.request_id, e.route, e.fal_status, e.gateway_request_id) == (
        "r-1",
        "reframe",
        "OK",
        "g-1",
    )
    assert list(e.sinks) == ["local", "team"]
    assert json.loads(e.body)["payload"] == {"video": {"url": "https://f/v.mp4"}}


def test_only_the_four_fal_webhook_headers_are_kept() -> None:
    e = event(
        headers={
            **FAL_HEADERS,
            "authorization": "Bearer secret",
            "cookie": "session=1",
            "content-type": "application/json",
            "x-forwarded-for": "10.0.0.1",
        }
    )
    assert e.headers == FAL_HEADERS


def test_missing_fal_headers_are_simply_absent() -> None:
    assert event(headers={"content-type": "application/json"}).headers == {}


def test_an_ok_payloads_files_are_listed_before_download() -> None:
    e = event(payload={"video": {"url": "https://f/v.mp4", "content_type": "video/mp4"}})
    (f,) = e.files
    assert (f["path"], f["url"], f["content_type"]) == ("video", "https://f/v.mp4", "video/mp4")
    assert f["sha256"] is None and f["error"] is None


def test_the_declared_file_size_is_the_size_until_download() -> None:
    e = event(payload={"video": {"url": "https://f/v.mp4", "file_size": 5242880}})
    assert e.files[0]["size"] == 5242880


def test_an_error_payloads_files_are_not_listed() -> None:
    e = event(
        status="ERROR",
        payload={"detail": [{"msg": "bad"}], "input": {"image": {"url": "https://f/in.png"}}},
        error="Invalid",
    )
    assert e.files == [] and (e.fal_status, e.error) == ("ERROR", "Invalid")


def test_a_payload_error_event_has_no_files() -> None:
    e = event(payload=None, payload_error="Response too large")
    assert e.files == [] and e.payload_error == "Response too large"


def test_a_long_data_uri_is_abbreviated_in_the_view() -> None:
    data = base64.b64encode(b"\x89PNG" + bytes(4000)).decode()
    e = event(payload={"image": {"url": f"data:image/png;base64,{data}"}})
    url = e.files[0]["url"]
    assert url.startswith("data:image/png;base64,") and data not in url and len(url) < 100


def test_the_full_data_uri_stays_in_the_stored_body() -> None:
    data = base64.b64encode(bytes(4000)).decode()
    e = event(payload={"image": {"url": f"data:image/png;base64,{data}"}})
    assert data.encode() in e.body


def test_malformed_files_are_listed_with_an_error() -> None:
    e = event(payload={"images": [{"url": "https://f/0.png"}, {"url": "ftp://f/1.png"}]})
    good, bad = e.files
    assert good["path"] == "images[0]" and good["error"] is None
    assert bad["path"] == "images[1]" and bad["url"] is None
    assert "malformed" in bad["error"] and "ftp" in bad["error"]


def test_the_source_is_webhook_unless_told_otherwise() -> None:
    raw = b'{"request_id": "r-1", "status": "OK", "payload": {}}'
    env = parse_envelope(raw)
    assert event().source == "webhook"
    polled = new_event(env, route="reframe", sinks=["local"], body=raw, headers={}, source="poll")
    assert polled.source == "poll"
