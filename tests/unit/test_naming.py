"""File names from payloads: sanitised, unique within the event, deterministic."""

from __future__ import annotations

import hashlib
import unicodedata

import pytest

from falhook_sinks.naming import (
    extension_for,
    file_names,
    id_component,
    name_from_path,
    sanitise_file_name,
    unique_names,
)
from tests.support.linecount import count_lines

# --- sanitise_file_name ----------------------------------------------------------------------


def test_an_ordinary_name_is_kept() -> None:
    assert sanitise_file_name("clip_01-final.mp4") == "clip_01-final.mp4"


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("../../x", "x"),
        ("/etc/passwd", "passwd"),
        ("a/b/c.png", "c.png"),
        ("..\\..\\win.exe", "win.exe"),
        ("C:\\Users\\me\\clip.mp4", "clip.mp4"),
    ],
)
def test_only_the_last_path_component_is_kept(raw: str, safe: str) -> None:
    assert sanitise_file_name(raw) == safe


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("a\x00b.txt", "a_b.txt"),
        ("a\nb\rc\td.txt", "a_b_c_d.txt"),
        ("bell\x07\x7f.txt", "bell__.txt"),
        ('a<b>:"|?*.png', "a_b______.png"),
    ],
)
def test_control_and_reserved_characters_are_replaced(raw: str, safe: str) -> None:
    assert sanitise_file_name(raw) == safe


@pytest.mark.parametrize(
    ("raw", "safe"), [(".hidden", "hidden"), ("...clip.mp4", "clip.mp4"), (".env.png", "env.png")]
)
def test_leading_dots_are_dropped(raw: str, safe: str) -> None:
    assert sanitise_file_name(raw) == safe


@pytest.mark.parametrize("raw", ["..", ".", "...", "../..", "a/..", "dir/"])
def test_dot_names_leave_nothing(raw: str) -> None:
    assert sanitise_file_name(raw) is None


@pytest.mark.parametrize("raw", [None, "", "   ", "/", "\\"])
def test_empty_names_leave_nothing(raw: str | None) -> None:
    assert sanitise_file_name(raw) is None


@pytest.mark.parametrize("stem", ["a", "é", "视"])
def test_long_names_are_capped_at_200_bytes_keeping_the_extension(stem: str) -> None:
    name = sanitise_file_name(stem * 400 + ".mp4")
    assert name is not None and name.endswith(".mp4") and len(name.encode()) <= 200
    assert name.removesuffix(".mp4") == stem * len(name.removesuffix(".mp4"))  # whole characters


def test_a_name_of_exactly_200_bytes_is_kept() -> None:
    name = "a" * 196 + ".mp4"
    assert sanitise_file_name(name) == name


@pytest.mark.parametrize("raw", ["café.mp4", "视频.mp4", "Ünïcödé clip.png"])
def test_unicode_names_are_kept(raw: str) -> None:
    assert sanitise_file_name(raw) == raw


def test_unicode_names_are_normalised_to_nfc() -> None:
    assert sanitise_file_name("cafe\u0301.mp4") == "caf\u00e9.mp4"


# --- id_component: request ids and routes as path and key components -----------------------


def test_a_fal_request_id_is_its_own_path_component() -> None:
    rid = "764cabcf-b745-4b3e-ae38-1200304cf45b"
    assert id_component(rid) == rid


@pytest.mark.parametrize("raw", ["../../etc", "..", ".", "a/b", "a\\b", "", "x\x00y", "é", "a~b"])
def test_any_identifier_becomes_one_harmless_path_component(raw: str) -> None:
    part = id_component(raw)
    assert part not in ("", ".", "..") and not part.startswith(".")
    assert set(part) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-~")


@pytest.mark.parametrize(
    "ids",
    [
        ["a/b", "a?b", "a_b", "a b"],  # differ only where the sanitiser replaces
        [".", "..", "_", "id"],  # dot names
        ["x" * 200, "x" * 200 + "y", "x" * 128, "x" * 129],  # cut to the same length
        ["a_b~" + "0" * 16, "a/b"],  # a clean-looking id shaped like a changed one
        ["é", "e", "_"],
    ],
)
def test_different_identifiers_never_share_a_component(ids: list[str]) -> None:
    assert len({id_component(i) for i in ids}) == len(ids)


def test_a_changed_identifier_keeps_a_readable_prefix_and_a_hash_of_the_exact_id() -> None:
    assert id_component("a/b") == "a_b~" + hashlib.sha256(b"a/b").hexdigest()[:16]
    assert len(id_component("y" * 10_000)) <= 128


# --- extensions and names from JSON paths ----------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "ext"),
    [
        ("video/mp4", ".mp4"),
        ("image/png", ".png"),
        ("image/jpeg", ".jpg"),
        ("image/x-exr", ".exr"),
        ("application/zip", ".zip"),
        ("Video/MP4; codecs=avc1", ".mp4"),
    ],
)
def test_the_extension_comes_from_the_content_type(content_type: str, ext: str) -> None:
    assert extension_for(content_type, "https://f/blob.bin") == ext


@pytest.mark.parametrize(
    ("content_type", "url", "ext"),
    [
        (None, "https://f/out.MP4?sig=1", ".mp4"),
        ("application/x-unheard-of", "https://f/a/out.exr", ".exr"),
        (None, "https://f/no-extension", ""),
        (None, "https://f/dir.v2/file", ""),
        (None, None, ""),
    ],
)
def test_the_url_path_gives_the_extension_without_a_known_content_type(
    content_type: str | None, url: str | None, ext: str
) -> None:
    assert extension_for(content_type, url) == ext


def test_a_data_uri_never_gives_an_extension_from_its_base64_text() -> None:
    assert extension_for(None, "data:;base64,aGk/Lm1wNA") == ""  # no media type: none


def test_a_data_uri_without_content_type_takes_the_extension_of_its_media_type() -> None:
    assert name_from_path("images[0]", None, "data:image/png;base64,iVBORw0KGgo=") == (
        "images_0.png"
    )


@pytest.mark.parametrize(
    ("path", "content_type", "url", "name"),
    [
        ("images[0]", "image/png", None, "images_0.png"),
        ("video", "video/mp4", "https://f/v", "video.mp4"),
        ("video", None, "https://f/out.MP4?sig=1", "video.mp4"),
        ("a.b[1].c", "image/png", None, "a_b_1_c.png"),
        ("payload", None, "https://f/x", "payload"),
    ],
)
def test_a_name_from_the_json_path_gets_an_extension(
    path: str, content_type: str | None, url: str | None, name: str
) -> None:
    assert name_from_path(path, content_type, url) == name


# --- unique names ----------------------------------------------------------------------------


def test_duplicate_names_get_a_numbered_suffix_before_the_extension() -> None:
    assert unique_names(["a.mp4", "a.mp4", "a.mp4"]) == ["a.mp4", "a-2.mp4", "a-3.mp4"]


def test_names_differing_only_in_case_are_duplicates() -> None:
    assert unique_names(["Clip.MP4", "clip.mp4"]) == ["Clip.MP4", "clip-2.mp4"]


@pytest.mark.parametrize("name", ["event.json", "EVENT.JSON"])
def test_event_json_is_reserved(name: str) -> None:
    assert unique_names([name]) == [f"{name[:5]}-2{name[5:]}"]


def test_names_without_an_extension_are_numbered_at_the_end() -> None:
    assert unique_names(["video", "video", "README"]) == ["video", "video-2", "README"]


def test_a_numbered_name_never_collides_with_a_given_one() -> None:
    names = unique_names(["a.mp4", "a-2.mp4", "a.mp4"])
    assert names[:2] == ["a.mp4", "a-2.mp4"]
    assert len({n.lower() for n in names}) == 3


def test_file_names_prefer_the_sanitised_file_name_else_the_json_path() -> None:
    files = [
        ("video", "../out.mp4", "video/mp4", "https://f/v"),
        ("images[0]", None, "image/png", "https://f/i"),
        ("images[1]", "..", "image/png", "https://f/j"),
    ]
    assert file_names(files) == ["out.mp4", "images_0.png", "images_1.png"]


def test_file_names_are_unique_within_the_event() -> None:
    files = [
        ("images[0]", "out.png", "image/png", "https://f/a"),
        ("images[1]", "out.png", "image/png", "https://f/b"),
        ("meta", "event.json", "application/json", "https://f/c"),
    ]
    assert file_names(files) == ["out.png", "out-2.png", "event-2.json"]


def test_file_names_are_deterministic() -> None:
    files = [
        ("images[0]", "out.png", "image/png", "https://f/a"),
        ("images[1]", "out.png", "image/png", "https://f/b"),
        ("video", None, "video/mp4", "https://f/v"),
    ]
    assert file_names(files) == file_names(list(files)) == ["out.png", "out-2.png", "video.mp4"]


# --- names that do not lie -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "invoice\u202egnp.exe",  # RIGHT-TO-LEFT OVERRIDE: shown as "invoiceexe.png"
        "invoice\u2066gnp.exe\u2069",  # isolates
        "inv\u200boice\u200dgnp.exe",  # zero-width space and joiner
        "\ufeffinvoicegnp.exe",  # byte order mark
    ],
)
def test_format_characters_are_removed_so_a_name_shows_what_it_is(raw: str) -> None:
    name = sanitise_file_name(raw)
    assert name is not None and name.endswith(".exe")
    assert all(unicodedata.category(ch) not in ("Cf", "Cc") for ch in name)


@pytest.mark.parametrize("raw", ["\ufeff", "\u200b\u200b", "\u202e", "\u2028\u2029", "\U000e0041"])
def test_a_name_of_only_invisible_characters_falls_back_to_the_json_path(raw: str) -> None:
    assert sanitise_file_name(raw) is None
    assert file_names([("video", raw, "video/mp4", "https://f/v")]) == ["video.mp4"]


def test_odd_spaces_become_plain_spaces() -> None:
    assert sanitise_file_name("a\u00a0b\u3000c.png") == "a b c.png"


# --- naming is linear --------------------------------------------------------------------------


def test_thousands_of_same_named_files_are_named_in_linear_steps() -> None:
    """8,000 files called frame.png: the work grows with the count, not its square (counted
    in Python lines executed, not in seconds)."""
    small = count_lines(unique_names, ["frame.png"] * 1000)
    large = count_lines(unique_names, ["frame.png"] * 8000)
    assert large < 10 * small  # quadratic naming made this ratio about 64
    names = unique_names(["frame.png"] * 8000)
    assert len(set(names)) == 8000 and names[-1] == "frame-8000.png"
