"""File names from payloads: sanitised, unique within the event, deterministic."""

from __future__ import annotations

import pytest

from receiver.naming import (
    extension_for,
    file_names,
    name_from_path,
    safe_component,
    sanitise_file_name,
    unique_names,
)


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("clip.mp4", "clip.mp4"),
        ("../../x", "x"),
        ("..\\..\\win.exe", "win.exe"),
        ("/etc/passwd", "passwd"),
        ("..", None),
        (".hidden", "hidden"),
        ("a\x00b\nc.txt", "a_b_c.txt"),
        ('a<b>:"|?*.png', "a_b______.png"),
        ("", None),
        (None, None),
        ("   ", None),
        ("café.mp4", "café.mp4"),
    ],
)
def test_payload_names_are_sanitised(raw: str | None, safe: str | None) -> None:
    assert sanitise_file_name(raw) == safe


def test_long_names_are_capped_keeping_the_extension() -> None:
    name = sanitise_file_name("é" * 300 + ".mp4")
    assert name is not None and name.endswith(".mp4") and len(name.encode()) <= 200


def test_identifiers_become_one_safe_path_component() -> None:
    assert safe_component("764cabcf-b745-4b3e") == "764cabcf-b745-4b3e"
    assert "/" not in safe_component("../../etc") and safe_component("..") not in (".", "..")
    assert safe_component("") == "_"


def test_names_from_json_paths_get_an_extension() -> None:
    assert name_from_path("images[0]", "image/png", None) == "images_0.png"
    assert name_from_path("video", None, "https://f/out.MP4?sig=1") == "video.mp4"
    assert name_from_path("video", "video/mp4", None) == "video.mp4"
    assert extension_for(None, "data:image/png;base64,xx") == ""


def test_names_are_unique_case_insensitively_and_never_event_json() -> None:
    assert unique_names(["a.mp4", "A.mp4", "a.mp4", "event.json"]) == [
        "a.mp4",
        "A-2.mp4",
        "a-3.mp4",
        "event-2.json",
    ]


def test_file_names_are_deterministic() -> None:
    files = [("video", "../out.mp4", "video/mp4", "u"), ("images[0]", None, "image/png", "u")]
    assert file_names(files) == file_names(files) == ["out.mp4", "images_0.png"]
