"""What the event page says about a file it cannot show: why it could not be fetched, and
why its sha256 is missing, from the event's deliveries (pure: views.py)."""

from __future__ import annotations

from typing import Any

from falhook.console.views import detail, digest_note, fetch_problem, shown_headers
from falhook.store.models import AttemptView, DeliveryView, EventView, utcnow


def view(files: list[dict[str, Any]], **deliveries: tuple[str, str | None]) -> EventView:
    now = utcnow()
    return EventView(
        request_id="rid-1",
        route="default",
        fal_status="OK",
        error=None,
        payload_error=None,
        gateway_request_id=None,
        received_at=now,
        headers={},
        body=b'{"request_id": "rid-1", "status": "OK", "payload": {}}',
        files=files,
        deliveries={
            sink: DeliveryView(
                sink, state, 1, error, None, now,
                history=(AttemptView(now, "dead" if state == "dead" else "delivered", error, 5),),
            )
            for sink, (state, error) in deliveries.items()
        },
    )  # fmt: skip


VIDEO = {"path": "video", "url": "https://v3.fal.media/files/x/out.mp4"}


def test_a_download_error_names_the_file_it_is_about() -> None:
    event = view([VIDEO, {"path": "images[0]", "url": "https://x/a.png"}],
                 local=("dead", "images[0]: the file server answered 404"))  # fmt: skip
    assert fetch_problem(event, event.files[1]) == "the file server answered 404"
    assert fetch_problem(event, event.files[0]) is None  # not this one's fault
    assert digest_note(event, None).startswith("not downloaded: the delivery died (images[0]")


def test_the_sha256_line_says_why_it_is_missing() -> None:
    assert digest_note(view([VIDEO], local=("pending", None)), None) == "not downloaded yet"
    assert digest_note(view([VIDEO], local=("retrying", "video: x")), "x") == "not downloaded: x"
    links_only = view([VIDEO], slack=("delivered", None))
    assert digest_note(links_only, None) == "not downloaded: no sink of this route reads files"


def test_a_malformed_file_is_unavailable_for_its_intake_error() -> None:
    bad = {"path": "video", "url": None, "error": "malformed File: no url"}
    assert fetch_problem(view([bad], local=("delivered", None)), bad) == "malformed File: no url"


def test_only_a_file_without_a_copy_of_ours_is_unavailable() -> None:
    event = view([VIDEO], local=("dead", "video: the file server answered 403"))
    [file] = detail(event, {}, "/console")["files"]
    assert file["unavailable"] == "the file server answered 403"
    assert file["digest"] == "not downloaded: the file server answered 403"


def test_the_list_previews_no_file_known_to_fail() -> None:
    gone = {"path": "images[0]", "url": "https://x/gone.png", "content_type": "image/png"}
    event = view([gone], local=("dead", "images[0]: the file server answered 404"))
    row = detail(event, {}, "/console")["row"]
    assert row["preview"] == {"kind": "image", "url": None}  # a placeholder, not a 404


def test_the_event_page_shows_the_signature_cut_short_and_other_headers_whole() -> None:
    signature = "ab" * 64
    shown = dict(
        shown_headers({"X-Fal-Webhook-Signature": signature, "x-fal-webhook-user-id": "user-1"})
    )
    assert shown["X-Fal-Webhook-Signature"] == signature[:16] + "…"
    assert shown["x-fal-webhook-user-id"] == "user-1"
