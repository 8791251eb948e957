"""Media the local fal hands out: a real, playable H.264 clip (shipped as package data, so
no encoder is needed to run the emulator) and real-size PNG images made here.

The clip is what `falhook emulate` returns as a video endpoint's output and what
`falhook emulate --sample-clip PATH` writes for the quick start to submit: 5 s of a moving
colour gradient with a sweeping bar, 640x360 at 24 frames/s, H.264 (Constrained Baseline)
in an MP4 whose movie header comes first (a browser plays it while it downloads).

It was made once by `python -m falhook.fal.sample_media --rebuild`, which needs PyAV (the
`falhook[media]` extra); running the emulator does not.
"""

from __future__ import annotations

import functools
import struct
import sys
import zlib
from importlib import resources
from pathlib import Path

CLIP_NAME = "clip.mp4"
CLIP_SECONDS = 5.0
CLIP_WIDTH, CLIP_HEIGHT, CLIP_FPS = 640, 360, 24
IMAGE_WIDTH, IMAGE_HEIGHT = 1024, 768  # fal's image models answer "landscape_4_3" by default


@functools.cache
def sample_clip() -> bytes:
    """The shipped H.264 sample clip's bytes."""
    return resources.files("falhook.fal").joinpath("samples", CLIP_NAME).read_bytes()


def write_sample_clip(path: str | Path) -> Path:
    """Write the sample clip to `path` (atomically). A file already there is left alone if it
    is the sample, and refused (FileExistsError) if it is anything else: never overwrite a
    user's file."""
    target = Path(path)
    data = sample_clip()
    if target.exists():
        if target.is_file() and target.read_bytes() == data:
            return target
        raise FileExistsError(f"{target} exists and is not the sample clip")
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


@functools.cache
def gradient_png(width: int = IMAGE_WIDTH, height: int = IMAGE_HEIGHT) -> bytes:
    """A width x height RGB PNG of a two-way colour gradient (red across, green down): a
    real-size image that compresses to a few kB, since each row differs from the one above
    by one constant value (PNG's "Up" filter makes it a run of equal bytes)."""
    if not (1 <= width <= 8192 and 1 <= height <= 8192):
        raise ValueError("width and height must be 1..8192")
    red = bytes(x * 255 // max(width - 1, 1) for x in range(width))
    rows = []
    previous = bytearray(3 * width)
    for y in range(height):
        row = bytearray(3 * width)
        row[0::3] = red
        row[1::3] = bytes([y * 255 // max(height - 1, 1)]) * width
        row[2::3] = b"\xb4" * width
        up = bytes((a - b) & 0xFF for a, b in zip(row, previous, strict=True)) if y else row
        rows.append(b"\x02" + bytes(up))  # filter type 2: Up (row 0 has a zero row above)
        previous = row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_sample_clip(path: Path) -> None:  # pragma: no cover - run by hand, needs PyAV
    """Encode the sample clip with PyAV (libx264) into `path`."""
    from fractions import Fraction

    import av

    options = {"movflags": "+faststart"}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = CLIP_WIDTH, CLIP_HEIGHT, "yuv420p"
        stream.codec_context.time_base = Fraction(1, CLIP_FPS)
        stream.options = {"profile": "baseline", "crf": "30", "preset": "veryslow"}
        frames = round(CLIP_SECONDS * CLIP_FPS)
        for i in range(frames):
            frame = av.VideoFrame(CLIP_WIDTH, CLIP_HEIGHT, "rgb24")
            plane = frame.planes[0]
            plane.update(_clip_frame(i, frames, plane.line_size))
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _clip_frame(i: int, frames: int, line_size: int) -> bytes:  # pragma: no cover
    """Frame i: a diagonal gradient drifting right, and a white bar sweeping down."""
    w, h = CLIP_WIDTH, CLIP_HEIGHT
    shift = i * 4
    bar = (i * h) // frames
    lines = []
    for y in range(h):
        if bar <= y < bar + 12:
            row = b"\xf0" * (3 * w)
        else:
            row = b"".join(
                bytes(((x + shift) * 255 // w % 256, y * 255 // h, 255 - (x + y) * 255 // (w + h)))
                for x in range(w)
            )
        lines.append(row.ljust(line_size, b"\0"))
    return b"".join(lines)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] != ["--rebuild"]:
        sys.exit("usage: python -m falhook.fal.sample_media --rebuild")
    out = Path(__file__).with_name("samples") / CLIP_NAME
    out.parent.mkdir(exist_ok=True)
    encode_sample_clip(out)
    print(f"{out}: {out.stat().st_size} bytes")
