"""The EVENT document (`events show --json`, event.json): the contract's keys, its state rule."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from falhook.store.document import event_document
from falhook.store.models import DeliveryView, EventView, SubmissionView
from tests.support.contract import EVENT_KEYS as CONTRACT_KEYS

RECEIVED = datetime(2026, 11, 23, 19, 12, 29, 654321, tzinfo=UTC)
ALLOWED_EXTRAS = {"gateway_request_id", "source", "submission", "payload"}


def delivery(
    sink: str, state: str = "delivered", attempts: int = 1, error: str | None = None
) -> DeliveryView:
    return DeliveryView(
        sink=sink,
        state=state,
        attempts=attempts,
        last_error=error,
        next_attempt_at=RECEIVED + timedelta(seconds=30),
        updated_at=RECEIVED,
    )


def view(*states: str, **changes: Any) -> EventView:
    body = {"request_id": "r-1", "status": "OK", "payload": {"video": {"url": "https://f/v"}}}
    base = EventView(
        request_id="r-1",
        route="reframe",
        fal_status="OK",
        error=None,
        payload_error=None,
        gateway_request_id="g-1",
        received_at=RECEIVED,
        headers={},
        body=json.dumps(body).encode(),
        files=[
            {
                "path": "video",
                "url": "https://f/v",
                "content_type": "video/mp4",
                "file_name": None,
                "size": 5242880,
                "sha256": "ab" * 32,
                "error": None,
            }
        ],
        deliveries={f"s{i}": delivery(f"s{i}", s) for i, s in enumerate(states or ("delivered",))},
    )
    return replace(base, **changes)


def test_the_document_has_every_contract_key_and_only_allowed_extras() -> None:
    doc = event_document(view())
    assert set(doc) >= CONTRACT_KEYS
    assert set(doc) - CONTRACT_KEYS <= ALLOWED_EXTRAS


def test_the_events_fields_are_copied_from_the_view() -> None:
    doc = event_document(view(error="Invalid", payload_error="too big", fal_status="ERROR"))
    assert (doc["request_id"], doc["route"], doc["fal_status"]) == ("r-1", "reframe", "ERROR")
    assert (doc["error"], doc["payload_error"]) == ("Invalid", "too big")


def test_received_at_is_utc_to_the_second_with_a_z() -> None:
    assert event_document(view())["received_at"] == "2026-11-23T19:12:29Z"


def test_received_at_in_another_zone_is_converted_to_utc() -> None:
    paris = RECEIVED.astimezone(timezone(timedelta(hours=1)))
    doc = event_document(view(received_at=paris))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["received_at"])
    assert doc["received_at"] == "2026-11-23T19:12:29Z"


def test_each_delivery_has_state_attempts_and_last_error_by_sink_name() -> None:
    v = view(deliveries={"local": delivery("local", "retrying", 3, "HTTP 503 from fal media")})
    local = event_document(v)["deliveries"]["local"]
    assert {"state", "attempts", "last_error"} <= set(local)
    assert (local["state"], local["attempts"], local["last_error"]) == (
        "retrying",
        3,
        "HTTP 503 from fal media",
    )


def test_each_file_has_path_url_content_type_size_and_sha256() -> None:
    (f,) = event_document(view())["files"]
    assert {k: f[k] for k in ("path", "url", "content_type", "size", "sha256")} == {
        "path": "video",
        "url": "https://f/v",
        "content_type": "video/mp4",
        "size": 5242880,
        "sha256": "ab" * 32,
    }


def test_a_file_not_yet_downloaded_still_has_every_file_key() -> None:
    (f,) = event_document(view(files=[{"path": "video", "url": "https://f/v"}]))["files"]
    assert {"path", "url", "content_type", "size", "sha256"} <= set(f)
    assert (f["size"], f["sha256"]) == (None, None)


def test_a_malformed_file_keeps_its_error() -> None:
    problem = {"path": "out", "url": None, "error": "malformed File: url is empty"}
    (f,) = event_document(view(files=[problem]))["files"]
    assert f["path"] == "out" and f["error"] == "malformed File: url is empty"


def test_the_document_is_json() -> None:
    doc = event_document(view(), with_payload=True)
    assert json.loads(json.dumps(doc)) == doc


@pytest.mark.parametrize(
    ("states", "state"),
    [
        (("dead", "retrying", "delivered"), "dead"),
        (("dead", "pending"), "dead"),
        (("retrying", "delivered", "pending"), "retrying"),
        (("retrying", "delivering"), "retrying"),
        (("delivered", "delivered"), "delivered"),
        (("delivered",), "delivered"),
        (("delivered", "pending"), "pending"),
        (("pending",), "pending"),
    ],
)
def test_the_event_state_sums_up_its_deliveries(states: tuple[str, ...], state: str) -> None:
    assert event_document(view(*states))["state"] == state


@pytest.mark.parametrize("states", [("delivering",), ("delivering", "delivered")])
def test_a_delivering_delivery_counts_as_pending(states: tuple[str, ...]) -> None:
    assert event_document(view(*states))["state"] == "pending"


def test_an_event_with_no_deliveries_is_pending() -> None:
    assert event_document(view(deliveries={}))["state"] == "pending"


def test_without_a_submission_the_submission_is_null() -> None:
    assert event_document(view()).get("submission") is None


def test_a_submission_says_how_long_the_webhook_took() -> None:
    sub = SubmissionView(
        request_id="r-1",
        endpoint="luma/agent/ray/v3.2/reframe",
        route="reframe",
        input={"prompt": "a cat"},
        status_url=None,
        response_url=None,
        cancel_url=None,
        submitted_at=RECEIVED - timedelta(seconds=95, milliseconds=250),
        state="completed",
        detail=None,
        checked_at=None,
        received_at=RECEIVED,
    )
    submission = event_document(view(submission=sub))["submission"]
    assert submission["endpoint"] == "luma/agent/ray/v3.2/reframe"
    assert submission["input"] == {"prompt": "a cat"}
    assert submission["seconds_to_webhook"] == 95.25


def test_the_payload_is_left_out_unless_asked_for() -> None:
    assert "payload" not in event_document(view())


def test_with_payload_adds_the_payload_from_the_stored_body() -> None:
    doc = event_document(view(), with_payload=True)
    assert doc["payload"] == {"video": {"url": "https://f/v"}}


@pytest.mark.parametrize("stored", [b"not json", b"[1, 2]"])
def test_with_payload_of_an_unreadable_body_is_null(stored: bytes) -> None:
    assert event_document(view(body=stored), with_payload=True)["payload"] is None
