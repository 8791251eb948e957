"""Typed views of Ray 3.2 outputs (reframe's video and EXR sidecar)."""

from __future__ import annotations

import pytest

from receiver.ray import REFRAME, OutputError, reframe_output, typed_output

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
