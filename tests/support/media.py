"""Real, tiny video files for tests, encoded with PyAV (the `falhook[media]` extra, part of
the test extras): a browser plays them and FFmpeg probes them."""

from __future__ import annotations

import io
from fractions import Fraction


def tiny_mp4(seconds: float = 1.0, width: int = 64, height: int = 48, fps: int = 10) -> bytes:
    """An H.264 MP4 of `seconds` of a moving colour gradient."""
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i in range(max(1, round(seconds * fps))):
            row = b"".join(
                bytes((x * 255 // width, (i * 25) % 256, 255 - x * 255 // width))
                for x in range(width)
            )
            frame = av.VideoFrame(width, height, "rgb24")
            plane = frame.planes[0]
            plane.update(b"".join(row.ljust(plane.line_size, b"\0") for _ in range(height)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def video_facts(data: bytes) -> dict[str, object]:
    """What FFmpeg (PyAV) finds in `data`: the first video track's codec, size and how many
    frames decode. Raises when there is no video track."""
    import av

    with av.open(io.BytesIO(data)) as container:
        [stream] = container.streams.video[:1] or [None]
        if stream is None:
            raise ValueError("no video track")
        decoded = sum(1 for _ in container.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "profile": stream.codec_context.profile,
            "width": stream.width,
            "height": stream.height,
            "frames": decoded,
            "seconds": container.duration / 1_000_000 if container.duration else None,
        }


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR (checking that it is one)."""
    import struct

    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height
