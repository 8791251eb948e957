"""Typed views of Luma Ray 3.2 outputs on fal (see shared/reference): reframe's `video` and
its optional EXR sidecar (one EXR, or a ZIP of them, only when `exr_export` was asked for).

    out = reframe_output(payload)      # ReframeOutput, or OutputError naming the field
    out.video.url, out.exr_file and out.exr_file.is_zip
"""

from __future__ import annotations

from typing import Any

import msgspec

REFRAME = "luma/agent/ray/v3.2/reframe"
VIDEO_ENDPOINTS = (
    REFRAME,
    "luma/agent/ray/v3.2/text-to-video",
    "luma/agent/ray/v3.2/image-to-video",
    "luma/agent/ray/v3.2/video-to-video",
)


class OutputError(ValueError):
    """A payload that does not have the shape the endpoint documents."""


class File(msgspec.Struct, forbid_unknown_fields=False):
    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None

    @property
    def is_zip(self) -> bool:
        name = (self.file_name or self.url.split("?", 1)[0]).lower()
        return self.content_type == "application/zip" or name.endswith(".zip")


class VideoOutput(msgspec.Struct, forbid_unknown_fields=False):
    """Output of every Ray 3.2 video endpoint: the MP4, and the EXR sidecar when asked for."""

    video: File
    exr_file: File | None = None


ReframeOutput = VideoOutput  # reframe documents exactly this shape


def video_output(payload: Any) -> VideoOutput:
    try:
        return msgspec.convert(payload, VideoOutput)
    except msgspec.ValidationError as exc:
        raise OutputError(f"not a Ray 3.2 video output: {exc}") from None


def reframe_output(payload: Any) -> ReframeOutput:
    return video_output(payload)


def typed_output(endpoint: str | None, payload: Any) -> VideoOutput | None:
    """The typed output for a known Ray 3.2 video endpoint, else None (unknown endpoint)."""
    return video_output(payload) if endpoint in VIDEO_ENDPOINTS else None
