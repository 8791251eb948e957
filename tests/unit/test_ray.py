"""Typed views of Ray 3.2 outputs (reframe's video and EXR sidecar), and input validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from falhook.fal.emulate import tiny_mp4
from falhook.fal.ray import (
    REFRAME,
    OutputError,
    ValidationError,
    mp4_duration,
    reframe_output,
    typed_output,
    validate_input,
)

VIDEO = {
    "url": "https://v3.fal.media/files/x/out.mp4",
    "content_type": "video/mp4",
    "file_name": "out.mp4",
    "file_size": 4404019,
    "width": 2560,
}


def test_reframe_output_without_a_sidecar() -> None:
    out = reframe_output({"video": VIDEO})
    assert out.video.url.endswith("out.mp4") and out.video.file_size == 4404019
    assert out.exr_file is None


@pytest.mark.parametrize(
    ("exr", "is_zip"),
    [
        ({"url": "https://f/frames.zip", "content_type": "application/zip"}, True),
        ({"url": "https://f/frame.exr", "content_type": "image/x-exr"}, False),
    ],
)
def test_reframe_output_with_its_exr_sidecar(exr: dict, is_zip: bool) -> None:
    out = reframe_output({"video": VIDEO, "exr_file": exr})
    assert out.exr_file is not None and out.exr_file.is_zip is is_zip


@pytest.mark.parametrize(
    "payload", [{}, {"video": {"content_type": "video/mp4"}}, {"video": {"url": 3}}, None, [VIDEO]]
)
def test_other_shapes_are_a_clear_error(payload: object) -> None:
    with pytest.raises(OutputError, match=r"Ray 3\.2"):
        reframe_output(payload)


def test_only_known_endpoints_get_a_typed_view() -> None:
    assert typed_output(REFRAME, {"video": VIDEO}) is not None
    assert typed_output("fal-ai/flux/dev", {"images": []}) is None


# --- input validation: every rule has a failing and a passing case ------------------------------

T2V = "luma/agent/ray/v3.2/text-to-video"
I2V = "luma/agent/ray/v3.2/image-to-video"
V2V = "luma/agent/ray/v3.2/video-to-video"
BASE = {
    REFRAME: {"prompt": "p", "video_url": "https://f/v.mp4", "aspect_ratio": "21:9"},
    T2V: {"prompt": "p"},
    I2V: {"prompt": "p", "image_url": "https://f/i.png"},
    V2V: {"prompt": "p", "video_url": "https://f/v.mp4"},
}
POS = {"x_norm": 0.25, "y_norm": 0.0, "w_norm": 0.5, "h_norm": 1.0}
HDR = {"hdr": True, "resolution": "720p"}
ES = {"edit_strength": "adhere_1"}


def sp(**changes: float) -> dict:
    return {"source_position": POS | changes}


# (endpoint, extra fields that pass, the same rule broken, the field the message names)
RULES = [
    # required fields
    (REFRAME, {}, {"prompt": None}, "prompt"),
    (REFRAME, {}, {"video_url": None}, "video_url"),
    (REFRAME, {}, {"aspect_ratio": None}, "aspect_ratio"),
    (I2V, {}, {"image_url": None}, "image_url"),
    (V2V, {}, {"video_url": None}, "video_url"),
    (T2V, {}, {"prompt": None}, "prompt"),
    # types
    (REFRAME, {"prompt": "x"}, {"prompt": 3}, "prompt"),
    (T2V, {"loop": False}, {"loop": "yes"}, "loop"),
    # enums
    (REFRAME, {"aspect_ratio": "9:16"}, {"aspect_ratio": "2:1"}, "aspect_ratio"),
    (T2V, {"aspect_ratio": "1:1"}, {"aspect_ratio": "5:4"}, "aspect_ratio"),
    (REFRAME, {"resolution": "1080p"}, {"resolution": "4k"}, "resolution"),
    (T2V, {"duration": "10s"}, {"duration": "7s"}, "duration"),
    (I2V, {"duration": "5s"}, {"duration": "10s"}, "duration"),
    (V2V, {"edit_strength": "flex_2"}, {"edit_strength": "flex_4"}, "edit_strength"),
    # hdr needs 720p or 1080p
    (T2V, HDR, {"hdr": True}, "hdr"),
    (T2V, {"hdr": True, "resolution": "1080p"}, {"hdr": True, "resolution": "540p"}, "hdr"),
    (V2V, HDR, {"hdr": True}, "hdr"),
    (REFRAME, HDR, {"hdr": True}, "hdr"),
    # hdr not with 10 s, not with loop
    (T2V, HDR | {"duration": "5s"}, HDR | {"duration": "10s"}, "hdr"),
    (T2V, HDR, HDR | {"loop": True}, "hdr"),
    (I2V, HDR, HDR | {"loop": True}, "hdr"),
    # exr_export needs hdr
    (T2V, HDR | {"exr_export": True}, {"exr_export": True}, "exr_export"),
    (REFRAME, HDR | {"exr_export": True}, {"exr_export": True}, "exr_export"),
    (V2V, HDR | {"exr_export": True}, {"exr_export": True, "hdr": False}, "exr_export"),
    # loop only 5 s, without an end frame
    (T2V, {"loop": True, "duration": "5s"}, {"loop": True, "duration": "10s"}, "loop"),
    (I2V, {"loop": True}, {"loop": True, "end_image_url": "https://f/e.png"}, "loop"),
    (I2V, {"end_image_url": "https://f/e.png"}, {"loop": True, "end_image_url": "x"}, "loop"),
    # edit_strength and auto_controls are exclusive
    (V2V, {"auto_controls": True}, {"auto_controls": True, **ES}, "auto_controls"),
    (V2V, {**ES, "auto_controls": False}, {**ES, "auto_controls": True}, "auto_controls"),
    # reframe's source rectangle: within 0..1 and inside the canvas
    (REFRAME, sp(), sp(x_norm=-0.1), "source_position.x_norm"),
    (REFRAME, sp(), sp(h_norm=1.5), "source_position.h_norm"),
    (REFRAME, sp(), sp(w_norm=0), "source_position.w_norm"),
    (REFRAME, sp(x_norm=0.5), sp(x_norm=0.6), "source_position"),  # 0.6 + 0.5 > 1
    (REFRAME, sp(y_norm=0.0), sp(y_norm=0.1), "source_position"),  # 0.1 + 1.0 > 1
    (REFRAME, sp(), {"source_position": {"x_norm": 0.1}}, "source_position.y_norm"),
]


def _with(endpoint: str, extra: dict) -> dict:
    doc = {**BASE[endpoint], **extra}
    return {k: v for k, v in doc.items() if v is not None}


@pytest.mark.parametrize(("endpoint", "good", "bad", "field"), RULES)
def test_each_rule_passes_and_fails(endpoint: str, good: dict, bad: dict, field: str) -> None:
    validate_input(endpoint, _with(endpoint, good))
    with pytest.raises(ValidationError) as caught:
        validate_input(endpoint, _with(endpoint, bad))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"input.{field}: ")


def test_an_enum_message_lists_the_choices() -> None:
    with pytest.raises(ValidationError, match=r"input\.resolution: must be one of 540p, 720p"):
        validate_input(REFRAME, _with(REFRAME, {"resolution": "480p"}))


def test_unknown_endpoints_and_fields_pass_through() -> None:
    validate_input("fal-ai/flux/dev", {"anything": [1, 2]})
    validate_input(REFRAME, _with(REFRAME, {"seed": 7, "_emulate": {"outcome": "drop"}}))


def test_users_map_further_endpoint_ids_to_a_schema() -> None:
    mine = {"my-org/ray-proxy": "text-to-video", "my-org/reframe": REFRAME}
    validate_input("my-org/ray-proxy", {"prompt": "p"}, extra_schemas=mine)
    with pytest.raises(ValidationError, match="duration"):
        validate_input("my-org/ray-proxy", {"prompt": "p", "duration": "9s"}, extra_schemas=mine)
    with pytest.raises(ValidationError, match="aspect_ratio"):
        validate_input("my-org/reframe", {"prompt": "p", "video_url": "u"}, extra_schemas=mine)
    with pytest.raises(ValidationError, match="no known schema"):
        validate_input("my-org/x", {}, extra_schemas={"my-org/x": "nope"})


def test_a_non_object_input_is_refused() -> None:
    with pytest.raises(ValidationError, match="JSON object"):
        validate_input(REFRAME, ["prompt"])


def test_reframe_video_at_most_30_s_when_readable_locally(tmp_path: Path) -> None:
    short, long, opaque = tmp_path / "short.mp4", tmp_path / "long.mp4", tmp_path / "x.mp4"
    short.write_bytes(tiny_mp4(30.0))
    long.write_bytes(tiny_mp4(30.5))
    opaque.write_bytes(b"not an mp4 at all")
    inp = _with(REFRAME, {})
    validate_input(REFRAME, inp, local_files={"video_url": short})
    validate_input(REFRAME, inp, local_files={"video_url": opaque})  # unreadable: fal decides
    with pytest.raises(ValidationError, match=r"input\.video_url: .*30\.5 s"):
        validate_input(REFRAME, inp, local_files={"video_url": long})


def test_mp4_duration_reads_the_movie_header(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(tiny_mp4(12.25))
    assert mp4_duration(path) == 12.25
    path.write_bytes(tiny_mp4(12.25)[:40])  # cut inside the header
    assert mp4_duration(path) is None
    assert mp4_duration(tmp_path / "missing.mp4") is None
