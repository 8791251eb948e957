"""The envelope parser and File discovery under hostile input: property-based (Hypothesis,
bounded in examples and time) and the cases an attacker built by hand.

Promises: any bytes give an Envelope or EnvelopeError, nothing else (no RecursionError, no
500); File discovery never raises; the work grows linearly with the input (counted in Python
lines executed, never timed). For longer coverage-guided runs outside CI, atheris can drive
`parse_envelope` the same way.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from falhook.intake.envelope import MAX_DEPTH, EnvelopeError, find_files, parse_envelope
from falhook.intake.events import new_event
from tests.support.linecount import count_lines
from tests.support.payloads import nested

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=40,
)
file_like = st.fixed_dictionaries(
    {"url": st.one_of(st.text(max_size=30), st.integers(), st.just("data:image/png;base64,aGk="))},
    optional={
        "content_type": json_scalars,
        "file_name": json_scalars,
        "file_size": st.one_of(st.integers(), st.floats(), st.text(max_size=5)),
    },
)
payloads = st.recursive(
    json_scalars | file_like,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=40,
)


def parses_or_refuses(raw: bytes) -> None:
    try:
        env = parse_envelope(raw)
    except EnvelopeError:
        return
    # What the endpoint does next must not fail either.
    new_event(env, route="r", sinks=["s"], body=raw, headers={})


@FUZZ
@given(st.binary(max_size=512))
def test_any_bytes_give_an_envelope_or_the_parsers_own_error(raw: bytes) -> None:
    parses_or_refuses(raw)


@FUZZ
@given(json_values)
def test_any_json_gives_an_envelope_or_the_parsers_own_error(doc: Any) -> None:
    parses_or_refuses(json.dumps(doc).encode())


@FUZZ
@given(
    st.fixed_dictionaries(
        {"request_id": st.text(min_size=1, max_size=20) | json_scalars, "payload": payloads},
        optional={
            "status": st.sampled_from(["OK", "ERROR"]) | json_scalars,
            "error": json_values,
            "payload_error": json_values,
            "gateway_request_id": json_scalars,
        },
    )
)
def test_envelope_shaped_documents_never_raise_anything_else(doc: dict[str, Any]) -> None:
    parses_or_refuses(json.dumps(doc).encode())


@FUZZ
@given(payloads)
def test_file_discovery_never_raises_on_any_payload(payload: Any) -> None:
    files, problems = find_files(payload)
    assert all(isinstance(f.url, str) for f in files)
    assert all(p.reason for p in problems)


@pytest.mark.parametrize("levels", [MAX_DEPTH, 300, 1000, 100_000])
@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("where", ["payload", "error", "payload_error", "top"])
def test_deep_nesting_anywhere_is_refused_as_a_bad_envelope(
    levels: int, kind: str, where: str
) -> None:
    deep = nested(levels, kind)
    if where == "top":
        raw = deep.encode()
    else:
        raw = f'{{"request_id": "r", "status": "OK", "{where}": {deep}}}'.encode()
    with pytest.raises(EnvelopeError):
        parse_envelope(raw)


def test_nesting_within_the_limit_is_accepted() -> None:
    env = parse_envelope(
        f'{{"request_id": "r", "payload": {nested(MAX_DEPTH - 1, "array")}}}'.encode()
    )
    assert env.request_id == "r"


def files_payload(count: int) -> bytes:
    images = [
        {"url": f"https://v3.fal.media/files/{i}.png", "file_name": "frame.png"}
        for i in range(count)
    ]
    return json.dumps({"request_id": "r", "status": "OK", "payload": {"images": images}}).encode()


def test_parsing_and_discovery_work_grows_linearly_with_the_input() -> None:
    def intake(raw: bytes) -> None:
        new_event(parse_envelope(raw), route="r", sinks=["s"], body=raw, headers={})

    small, large = files_payload(500), files_payload(4000)
    ratio = count_lines(intake, large) / count_lines(intake, small)
    assert ratio < 8 * 1.25  # 8 times the files: about 8 times the work


def test_wide_documents_are_walked_without_recursion() -> None:
    wide = {"request_id": "r", "status": "OK", "payload": [[{"url": "https://x/y"}]] * 20_000}
    files, _ = find_files(parse_envelope(json.dumps(wide).encode()).payload)
    assert len(files) == 20_000
