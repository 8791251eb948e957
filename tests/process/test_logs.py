"""Logs: JSON lines bound to request_id and route; no signatures, keys or bodies."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from falhook.testing import FalSigner, webhook_body
from tests.support.falhook_server import Falhook
from tests.support.fileserver import FileServer


@pytest.mark.one_store("what is logged, not where events are stored")
def test_request_and_delivery_lines_carry_request_id_and_route_and_no_secrets(
    falhook: Falhook, signer: FalSigner, files: FileServer
) -> None:
    files.add("/v.mp4", data=b"v" * 1000)
    secret_payload = "do-not-log-" + uuid.uuid4().hex
    rid, body = webhook_body(
        str(uuid.uuid4()),
        payload={"video": {"url": files.url("/v.mp4")}, "note": secret_payload},
    )
    headers = signer.headers(body, rid)
    assert (
        httpx.post(falhook.url("/webhooks/reframe"), content=body, headers=headers).status_code
        == 200
    )
    bad = dict(headers, **{"X-Fal-Webhook-Signature": "ab" * 64})
    httpx.post(falhook.url("/webhooks/reframe"), content=body, headers=bad)
    falhook.wait_state(rid, "delivered")
    falhook.stop()
    text = falhook.logs()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == rid]
    assert {"downloaded"} <= {line["event"] for line in mine}
    assert all(line["route"] == "reframe" for line in mine)
    # Accepted and delivered are written once for the events they happened to together,
    # the request ids listed by route and by sink.
    batches = {line["event"]: line for line in lines if rid in json.dumps(line)}
    assert rid in batches["webhooks accepted"]["accepted"]["reframe"]
    assert rid in batches["deliveries recorded"]["delivered"]["local"]
    for forbidden in (headers["X-Fal-Webhook-Signature"], "ab" * 64, secret_payload):
        assert forbidden not in text


def test_log_timestamps_are_iso_utc_with_microseconds() -> None:
    import re
    import time
    from datetime import UTC, datetime

    from falhook.logs import _UtcTimestamp

    stamp = _UtcTimestamp()
    before = time.time()
    first = stamp(None, "info", {})["timestamp"]
    second = stamp(None, "info", {})["timestamp"]  # the cached second, a later time
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first)
    parsed = datetime.strptime(first, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed.timestamp() - before) < 1.0
    assert second >= first
