"""Submission metadata's rules (falhook.metadata): plain-name keys, string values, a size
bound; and where it shows: the event document, the HTTP sink's body, Slack's context."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from falhook.metadata import MAX_BYTES, MAX_KEYS, MetadataError, check_metadata, parse_pairs
from falhook.store.document import event_document
from falhook.store.models import EventView, SubmissionView
from falhook_sinks.slack_blocks import build_message
from tests.support.sink_ctx import make_ctx


def test_pairs_become_metadata() -> None:
    assert parse_pairs(["customer=42", "order=9001", "note=a=b", "empty="]) == {
        "customer": "42",
        "order": "9001",
        "note": "a=b",
        "empty": "",
    }
    assert parse_pairs(["k=1", "k=2"]) == {"k": "2"}  # the last wins


@pytest.mark.parametrize(
    "pair", ["novalue", "=42", "bad key=1", "1st=x", "a.b=c", "ключ=v", "k/x=1", "x" * 65 + "=1"]
)
def test_a_key_that_is_not_a_plain_name_is_refused(pair: str) -> None:
    with pytest.raises(MetadataError):
        parse_pairs([pair])


def test_values_are_strings_without_control_characters() -> None:
    with pytest.raises(MetadataError, match=r"'n'.*string"):
        check_metadata({"n": 42})  # type: ignore[dict-item]
    with pytest.raises(MetadataError, match="control"):
        check_metadata({"k": "line\nbreak"})
    assert check_metadata({"k": "Zoë · 東京"}) == {"k": "Zoë · 東京"}


def test_metadata_is_bounded() -> None:
    with pytest.raises(MetadataError, match=f"at most {MAX_KEYS}"):
        check_metadata({f"k{i}": "v" for i in range(MAX_KEYS + 1)})
    with pytest.raises(MetadataError, match=f"at most {MAX_BYTES}"):
        check_metadata({f"k{i}": "v" * 500 for i in range(10)})
    with pytest.raises(MetadataError, match="over 512"):
        check_metadata({"k": "v" * 513})


def _view(metadata: dict[str, str]) -> EventView:
    at = datetime(2026, 11, 23, 19, 12, 29, tzinfo=UTC)
    sub = SubmissionView("r1", "luma/agent/ray/v3.2/reframe", "reframe", {"prompt": "p"},
                         None, None, None, at, "completed", None, None, at, metadata)  # fmt: skip
    return EventView("r1", "reframe", "OK", None, None, None, at, {}, b"{}", [], {},
                     submission=sub)  # fmt: skip


def test_the_event_document_carries_submission_metadata() -> None:
    doc = event_document(_view({"customer": "42"}))
    assert doc["submission"]["metadata"] == {"customer": "42"}
    assert event_document(_view({}))["submission"]["metadata"] == {}


def test_slack_shows_the_metadata_as_context() -> None:
    ctx = make_ctx([], metadata={"customer": "42", "who": "<!here>"})
    blocks = build_message(ctx)["blocks"]
    texts = [e["text"] for b in blocks if b["type"] == "context" for e in b["elements"]]
    assert "customer=42 · who=&lt;!here&gt;" in texts  # escaped: no mention from a label
