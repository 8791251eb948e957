"""fal's envelope and File discovery: pure parsing that never crashes on bad Files."""

from __future__ import annotations

import json
from typing import Any

import pytest

from falhook.intake.envelope import (
    EnvelopeError,
    FileProblem,
    decode_data_uri,
    find_files,
    parse_envelope,
)

DETAIL = [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]


def body(**doc: object) -> bytes:
    return json.dumps(doc).encode()


# --- the envelope ----------------------------------------------------------------------------


def test_an_ok_envelope_carries_its_payload() -> None:
    env = parse_envelope(
        body(request_id="r-1", gateway_request_id="g-1", status="OK", payload={"a": 1})
    )
    assert (env.request_id, env.gateway_request_id, env.status) == ("r-1", "g-1", "OK")
    assert env.payload == {"a": 1} and env.error is None and env.payload_error is None
    assert env.ok and env.has_result


def test_an_error_envelope_keeps_the_message_and_the_fastapi_detail_payload() -> None:
    env = parse_envelope(
        body(
            request_id="r-1",
            status="ERROR",
            error="Invalid status code: 422",
            payload={"detail": DETAIL},
        )
    )
    assert env.error == "Invalid status code: 422" and env.payload == {"detail": DETAIL}
    assert not env.ok and not env.has_result


def test_an_error_given_as_a_detail_list_becomes_a_json_message() -> None:
    env = parse_envelope(body(request_id="r-1", status="ERROR", error=DETAIL, payload=None))
    assert isinstance(env.error, str) and json.loads(env.error) == DETAIL


def test_a_payload_error_envelope_has_a_null_payload_and_no_result() -> None:
    env = parse_envelope(
        body(request_id="r-1", status="OK", payload=None, payload_error="Response too large")
    )
    assert env.payload is None and env.payload_error == "Response too large"
    assert not env.has_result


@pytest.mark.parametrize(
    "raw",
    [b"", b"nope", b"{", b"\xff\xfe", b'"r-1"'],
    ids=["empty", "text", "truncated", "not utf-8", "a JSON string"],
)
def test_a_body_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope(raw)


def test_a_json_array_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="object"):
        parse_envelope(b'[{"request_id": "r-1"}]')


@pytest.mark.parametrize(
    "doc",
    [{"status": "OK"}, {"request_id": 3}, {"request_id": None}, {"request_id": ""}],
    ids=["missing", "a number", "null", "empty"],
)
def test_a_request_id_that_is_not_a_non_empty_string_is_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError, match="request_id"):
        parse_envelope(json.dumps(doc).encode())


# --- File discovery --------------------------------------------------------------------------


def test_files_are_found_in_nested_dicts_and_lists_named_by_json_path() -> None:
    payload = {
        "video": {"url": "https://f/v.mp4"},
        "images": [{"url": "https://f/0.png"}, {"url": "https://f/1.png"}],
        "a": {"b": [{"x": 1}, {"c": {"url": "https://f/deep.bin"}}]},
        "text": "https://not-a-file",
        "seed": 42,
    }
    files, problems = find_files(payload)
    assert [f.path for f in files] == ["video", "images[0]", "images[1]", "a.b[1].c"]
    assert [f.url for f in files][-1] == "https://f/deep.bin" and problems == []


def test_a_files_known_fields_are_parsed_and_model_extras_kept() -> None:
    node = {
        "url": "https://f/v.mp4",
        "content_type": "video/mp4",
        "file_name": "clip.mp4",
        "file_size": 5242880,
        "width": 1920,
        "height": 1080,
    }
    (f,), _ = find_files({"video": node})
    assert (f.content_type, f.file_name, f.file_size) == ("video/mp4", "clip.mp4", 5242880)
    assert f.extras == {"width": 1920, "height": 1080}


def test_a_data_uri_is_a_file() -> None:
    (f,), problems = find_files({"image": {"url": "data:image/png;base64,iVBORw0KGgo="}})
    assert f.path == "image" and f.is_data_uri and problems == []


def test_a_payload_that_is_itself_a_file_is_named_payload() -> None:
    (f,), _ = find_files({"url": "https://f/x.png", "content_type": "image/png"})
    assert f.path == "payload" and f.url == "https://f/x.png"


def test_reframe_output_yields_the_video_and_its_exr_sidecar() -> None:
    files, problems = find_files(
        {
            "video": {"url": "https://v3.fal.media/v.mp4", "content_type": "video/mp4"},
            "exr_file": {"url": "https://v3.fal.media/e.zip", "content_type": "application/zip"},
        }
    )
    assert [(f.path, f.content_type) for f in files] == [
        ("video", "video/mp4"),
        ("exr_file", "application/zip"),
    ]
    assert problems == []


def test_reframe_output_without_exr_export_has_only_the_video() -> None:
    files, _ = find_files({"video": {"url": "https://v3.fal.media/v.mp4"}, "exr_file": None})
    assert [f.path for f in files] == ["video"]


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        ({"url": 5, "content_type": "video/mp4"}, "url is not a string"),
        ({"url": None, "file_size": 3}, "url is not a string"),
        ({"url": ""}, "url is empty"),
        ({"url": "   "}, "url is empty"),
        ({"url": "ftp://x/y.mp4"}, "'ftp'"),
        ({"url": "file:///etc/passwd"}, "'file'"),
        ({"url": "v.mp4"}, "scheme"),
        ({"url": "https://x", "file_size": -1}, "file_size"),
        ({"url": "https://x", "file_size": True}, "file_size"),
        ({"url": "https://x", "file_size": "3"}, "file_size"),
        ({"url": "https://x", "file_size": 1.5}, "file_size"),
        ({"url": "https://x", "content_type": 7}, "content_type is not a string"),
        ({"url": "https://x", "file_name": ["a"]}, "file_name is not a string"),
        ({"url": "data:nocomma"}, "data URI"),
    ],
)
def test_a_malformed_file_becomes_a_problem_with_its_reason(
    node: dict[str, Any], reason: str
) -> None:
    files, problems = find_files({"out": node})
    assert files == [] and len(problems) == 1
    assert problems[0].path == "out" and reason in problems[0].reason


def test_a_malformed_file_does_not_hide_its_good_siblings() -> None:
    files, problems = find_files({"images": [{"url": "ftp://x/0.png"}, {"url": "https://f/1.png"}]})
    assert [f.path for f in files] == ["images[1]"]
    assert [p.path for p in problems] == ["images[0]"]


@pytest.mark.parametrize(
    "payload",
    [None, 3, "text", [], {}, [[[]]], {"url": {"nested": 1}}, {"a": [None, True, 1.5]}],
)
def test_payloads_without_files_give_nothing_and_never_raise(payload: Any) -> None:
    assert find_files(payload) == ([], [])


def test_a_deeply_nested_payload_does_not_exhaust_the_stack() -> None:
    payload: Any = {"url": "https://f/deep.png"}
    for _ in range(5000):
        payload = {"n": [payload]}
    files, _ = find_files(payload)
    assert len(files) == 1 and files[0].path.endswith("n[0]")


def test_problems_are_plain_data() -> None:
    _, problems = find_files({"out": {"url": ""}})
    assert problems == [FileProblem(path="out", reason="url is empty")]


# --- data: URIs ------------------------------------------------------------------------------


def test_a_base64_data_uri_decodes_with_its_media_type() -> None:
    assert decode_data_uri("data:text/plain;base64,aGk=") == (b"hi", "text/plain")


def test_a_base64_data_uri_with_parameters_decodes() -> None:
    assert decode_data_uri("data:text/plain;charset=utf-8;base64,aGk=") == (b"hi", "text/plain")


def test_a_urlsafe_base64_data_uri_decodes() -> None:
    assert decode_data_uri("data:;base64,-_8") == (b"\xfb\xff", None)


def test_a_percent_encoded_data_uri_decodes() -> None:
    assert decode_data_uri("data:text/plain,a%20b%2Cc") == (b"a b,c", "text/plain")


@pytest.mark.parametrize(
    "url", ["data:;base64,@@", "data:image/png;base64,aGk=!", "nodata", "data:image/png"]
)
def test_an_invalid_data_uri_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        decode_data_uri(url)
