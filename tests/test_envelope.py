"""fal's envelope and File discovery: pure parsing that never crashes on bad Files."""

from __future__ import annotations

import json

import pytest

from receiver.envelope import EnvelopeError, decode_data_uri, find_files, parse_envelope


def body(**doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_ok_error_and_payload_error_envelopes() -> None:
    ok = parse_envelope(body(request_id="r", gateway_request_id="g", status="OK", payload={"a": 1}))
    assert ok.ok and ok.has_result and ok.gateway_request_id == "g"
    detail = [{"loc": ["body", "prompt"], "msg": "field required"}]
    err = parse_envelope(
        body(request_id="r", status="ERROR", error="Invalid", payload={"detail": detail})
    )
    assert not err.ok and err.error == "Invalid" and err.payload == {"detail": detail}
    perr = parse_envelope(body(request_id="r", status="OK", payload=None, payload_error="too big"))
    assert perr.payload_error == "too big" and not perr.has_result


@pytest.mark.parametrize(
    "raw", [b"nope", b"[1]", b'{"status": "OK"}', b'{"request_id": 3}', b'{"request_id": ""}']
)
def test_bodies_that_are_not_envelopes_are_refused(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope(raw)


def test_files_are_found_anywhere_and_named_by_json_path() -> None:
    payload = {
        "video": {"url": "https://f/v.mp4", "content_type": "video/mp4", "width": 1920},
        "images": [{"url": "https://f/0.png"}, {"url": "https://f/1.png", "file_size": 3}],
        "a": {"b": [{"x": 1}, {"c": {"url": "data:image/png;base64,AAAA"}}]},
        "text": "https://not-a-file",
    }
    files, problems = find_files(payload)
    assert [f.path for f in files] == ["video", "images[0]", "images[1]", "a.b[1].c"]
    assert files[0].extras == {"width": 1920} and files[2].file_size == 3
    assert files[3].is_data_uri and problems == []


def test_reframe_output_with_its_exr_sidecar() -> None:
    files, _ = find_files(
        {
            "video": {"url": "https://f/v.mp4"},
            "exr_file": {"url": "https://f/e.zip", "content_type": "application/zip"},
        }
    )
    assert [f.path for f in files] == ["video", "exr_file"]


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        ({"url": 5, "content_type": "video/mp4"}, "not a string"),
        ({"url": ""}, "empty"),
        ({"url": "ftp://x/y"}, "scheme"),
        ({"url": "https://x", "file_size": -1}, "file_size"),
        ({"url": "https://x", "file_size": True}, "file_size"),
        ({"url": "https://x", "file_size": "3"}, "file_size"),
        ({"url": "https://x", "content_type": 7}, "content_type"),
        ({"url": "data:nocomma"}, "data URI"),
    ],
)
def test_malformed_files_become_problems_not_crashes(node: dict, reason: str) -> None:
    files, problems = find_files({"out": node})
    assert files == [] and problems[0].path == "out" and reason in problems[0].reason


def test_a_payload_that_is_itself_a_file() -> None:
    files, _ = find_files({"url": "https://f/x.png"})
    assert files[0].path == "payload"


def test_data_uris_decode() -> None:
    assert decode_data_uri("data:text/plain;base64,aGk=") == (b"hi", "text/plain")
    assert decode_data_uri("data:;base64,-_8") == (b"\xfb\xff", None)  # URL-safe alphabet
    assert decode_data_uri("data:,a%20b") == (b"a b", None)
    for bad in ("data:;base64,@@", "nodata"):
        with pytest.raises(ValueError):
            decode_data_uri(bad)
