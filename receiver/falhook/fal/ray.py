"""Typed views of Luma Ray 3.2 outputs on fal (see shared/reference): reframe's `video` and
its optional EXR sidecar (one EXR, or a ZIP of them, only when `exr_export` was asked for).

    out = reframe_output(payload)      # ReframeOutput, or OutputError naming the field
    out.video.url, out.exr_file and out.exr_file.is_zip

and validation of their inputs before a job is submitted (and paid for):

    validate_input("luma/agent/ray/v3.2/reframe", {...})   # None, or ValidationError
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin, get_type_hints

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


# --- inputs: validation before money is spent --------------------------------------------------

AspectRatio = Literal["3:4", "4:3", "1:1", "9:16", "16:9", "21:9"]
Resolution = Literal["540p", "720p", "1080p"]
Duration = Literal["5s", "10s"]
EditStrength = Literal[
    "adhere_1", "adhere_2", "adhere_3",
    "flex_1", "flex_2", "flex_3",
    "reimagine_1", "reimagine_2", "reimagine_3",
]  # fmt: skip
MAX_REFRAME_SECONDS = 30.0


class ValidationError(ValueError):
    """A bad input, in one message naming the field: ``input.duration: must be one of ...``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"input.{field}: {problem}")
        self.field = field
        self.problem = problem


# Unknown fields pass through (fal ignores them; a newer field must not be refused here).
class _Input(msgspec.Struct, forbid_unknown_fields=False):
    pass


class SourcePosition(msgspec.Struct, forbid_unknown_fields=False):
    """Where the source sits in reframe's output canvas, as fractions of its size."""

    x_norm: float
    y_norm: float
    w_norm: float
    h_norm: float


class ReframeInput(_Input):
    prompt: str
    video_url: str
    aspect_ratio: AspectRatio
    resolution: Resolution = "540p"
    source_position: SourcePosition | None = None
    hdr: bool = False
    exr_export: bool = False


class TextToVideoInput(_Input):
    prompt: str
    aspect_ratio: AspectRatio = "16:9"
    resolution: Resolution = "540p"
    duration: Duration = "5s"
    loop: bool = False
    hdr: bool = False
    exr_export: bool = False
    image_urls: list[str] | None = None


class ImageToVideoInput(_Input):
    prompt: str
    image_url: str
    end_image_url: str | None = None
    aspect_ratio: AspectRatio = "16:9"
    resolution: Resolution = "540p"
    duration: Literal["5s"] = "5s"  # "Image-to-video supports 5s"
    loop: bool = False
    hdr: bool = False
    exr_export: bool = False
    image_urls: list[str] | None = None


class VideoToVideoInput(_Input):
    prompt: str
    video_url: str
    start_image_url: str | None = None
    resolution: Resolution = "540p"
    duration: Duration = "5s"
    edit_strength: EditStrength | None = None
    auto_controls: bool = False
    hdr: bool = False
    exr_export: bool = False


# Schema names, usable in config to map further endpoint ids to one of them.
SCHEMAS: dict[str, type[_Input]] = {
    "reframe": ReframeInput,
    "text-to-video": TextToVideoInput,
    "image-to-video": ImageToVideoInput,
    "video-to-video": VideoToVideoInput,
}
ENDPOINT_SCHEMAS: dict[str, str] = {f"luma/agent/ray/v3.2/{name}": name for name in SCHEMAS}


def schema_for(endpoint_id: str, extra_schemas: Mapping[str, str] | None = None) -> str | None:
    """The schema name for an endpoint id (built-in ids, then the user's map), else None."""
    name = (extra_schemas or {}).get(endpoint_id) or ENDPOINT_SCHEMAS.get(endpoint_id)
    if name is not None and name not in SCHEMAS:
        # A map value may name a built-in endpoint id instead of a schema name.
        name = ENDPOINT_SCHEMAS.get(name)
        if name is None:
            known = ", ".join(SCHEMAS)
            raise ValidationError("<schema>", f"{endpoint_id!r} maps to no known schema ({known})")
    return name


def validate_input(
    endpoint_id: str,
    input: Any,
    *,
    extra_schemas: Mapping[str, str] | None = None,
    local_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> None:
    """Raise ValidationError naming the field when a known Ray 3.2 endpoint would refuse
    `input`; unknown endpoints pass unvalidated. `local_files` (field -> path) are files that
    will be uploaded into those fields: their properties (a video's duration) are checked too."""
    name = schema_for(endpoint_id, extra_schemas)
    if name is None:
        return
    if not isinstance(input, dict):
        raise ValidationError("<root>", "must be a JSON object")
    parsed = _convert(input, SCHEMAS[name])
    _RULES[name](parsed)
    if name == "reframe" and local_files and "video_url" in local_files:
        seconds = mp4_duration(local_files["video_url"])
        if seconds is not None and seconds > MAX_REFRAME_SECONDS:
            raise ValidationError(
                "video_url",
                f"the source video is {seconds:.1f} s long; reframe takes at most "
                f"{MAX_REFRAME_SECONDS:g} s",
            )


_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def _convert(input: dict[str, Any], schema: type[_Input]) -> _Input:
    try:
        return msgspec.convert(input, schema, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        problem = message[: match.start()] if match else message
        field = match.group("path") if match else ""
        if problem.startswith("Object missing required field"):
            missing = problem.split("`")[1]
            field = f"{field}.{missing}" if field else missing
            raise ValidationError(field, "is required") from None
        choices = _choices(schema, field)
        if choices and problem.startswith("Invalid enum value"):
            raise ValidationError(field, f"must be one of {', '.join(choices)}") from None
        what = problem[:1].lower() + problem[1:]
        raise ValidationError(field or "<root>", what.replace("`", "")) from None


def _choices(schema: type[_Input], field: str) -> tuple[str, ...]:
    hint = get_type_hints(schema).get(field)
    for arg in (hint, *get_args(hint)):
        if get_origin(arg) is Literal:
            return tuple(str(a) for a in get_args(arg))
    return ()


def _hdr_rules(inp: Any, *, no_10s: bool, no_loop: bool) -> None:
    if inp.exr_export and not inp.hdr:
        raise ValidationError("exr_export", "needs hdr = true")
    if not inp.hdr:
        return
    if inp.resolution not in ("720p", "1080p"):
        raise ValidationError("hdr", f"needs resolution 720p or 1080p (got {inp.resolution})")
    if no_10s and getattr(inp, "duration", None) == "10s":
        raise ValidationError("hdr", "is not supported with duration 10s")
    if no_loop and getattr(inp, "loop", False):
        raise ValidationError("hdr", "is not supported with loop (loops are standard range)")


def _loop_rules(inp: Any) -> None:
    if not inp.loop:
        return
    if inp.duration != "5s":
        raise ValidationError("loop", f"only works with duration 5s (got {inp.duration})")
    if getattr(inp, "end_image_url", None):
        raise ValidationError("loop", "cannot be combined with end_image_url")


def _reframe_rules(inp: Any) -> None:
    _hdr_rules(inp, no_10s=False, no_loop=False)
    pos = inp.source_position
    if pos is None:
        return
    for key in ("x_norm", "y_norm", "w_norm", "h_norm"):
        value = getattr(pos, key)
        if not 0.0 <= value <= 1.0:
            raise ValidationError(f"source_position.{key}", f"must be within 0..1 (got {value})")
    for key in ("w_norm", "h_norm"):
        if getattr(pos, key) == 0:
            raise ValidationError(f"source_position.{key}", "must be greater than 0")
    if pos.x_norm + pos.w_norm > 1.0 + 1e-9:
        raise ValidationError("source_position", "x_norm + w_norm goes past the canvas (> 1)")
    if pos.y_norm + pos.h_norm > 1.0 + 1e-9:
        raise ValidationError("source_position", "y_norm + h_norm goes past the canvas (> 1)")


def _t2v_rules(inp: Any) -> None:
    _loop_rules(inp)
    _hdr_rules(inp, no_10s=True, no_loop=True)


def _i2v_rules(inp: Any) -> None:
    _loop_rules(inp)
    _hdr_rules(inp, no_10s=True, no_loop=True)


def _v2v_rules(inp: Any) -> None:
    if inp.edit_strength is not None and inp.auto_controls:
        raise ValidationError("auto_controls", "cannot be combined with edit_strength")
    _hdr_rules(inp, no_10s=False, no_loop=False)  # v2v documents only the resolution rule


_RULES: dict[str, Any] = {
    "reframe": _reframe_rules,
    "text-to-video": _t2v_rules,
    "image-to-video": _i2v_rules,
    "video-to-video": _v2v_rules,
}


# --- reading a local MP4's duration (ISO BMFF: moov/mvhd) --------------------------------------

_MAX_BOXES = 4096  # bounded walk: a hostile or broken file cannot spin us


def mp4_duration(path: str | os.PathLike[str]) -> float | None:
    """Seconds from the movie header of an MP4/MOV file, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            moov = _find_box(f, 0, size, b"moov")
            if moov is None:
                return None
            mvhd = _find_box(f, moov[0], moov[1], b"mvhd")
            if mvhd is None:
                return None
            f.seek(mvhd[0])
            head = f.read(32)
    except OSError:
        return None
    if len(head) < 20:
        return None
    if head[0] == 1 and len(head) >= 32:  # version 1: 64-bit times
        timescale, duration = struct.unpack(">IQ", head[20:32])
    else:
        timescale, duration = struct.unpack(">II", head[12:20])
    return duration / timescale if timescale else None


def _find_box(f: Any, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """(payload start, payload end) of the first `kind` box between start and end."""
    pos = start
    for _ in range(_MAX_BOXES):
        if pos + 8 > end:
            return None
        f.seek(pos)
        header = f.read(16)
        if len(header) < 8:
            return None
        length, box = struct.unpack(">I4s", header[:8])
        skip = 8
        if length == 1 and len(header) >= 16:
            length, skip = struct.unpack(">Q", header[8:16])[0], 16
        elif length == 0:
            length = end - pos
        if length < skip:
            return None
        if box == kind:
            return pos + skip, min(pos + length, end)
        pos += length
    return None
