"""Video facts and poster frames, with the optional `falhook[media]` extra (PyAV, which
bundles FFmpeg under the GPL). For each downloaded video: duration, width, height and codec
go on its file entry (`"media": {...}`), and a JPEG of its first frame joins the event's
files as `<path>.poster` (`"poster_of": <path>`): the disk sink writes it, the S3 sink
stores it, and Slack previews it from there. Without the extra, or for a file FFmpeg cannot
read, nothing is added and delivery goes on as before.

They are made in a thread after the sinks that need none (delivery/job.py), never before
them: probing a video and decoding its first frame takes tens of milliseconds that no sink
should wait for, or compete with, unless it shows the poster. A file that only claims to be
a video (its type or name) is looked at first by its container's signature, a read of a few
bytes, and one that is not a container FFmpeg could read is never handed to it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import structlog

from falhook_sinks.base import LocalFile

log = structlog.get_logger("falhook.media")
POSTER_SUFFIX = ".poster"
POSTER_MAX_WIDTH = 1280  # a poster is a preview: no need for a 4K JPEG
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".m4v", ".mkv")


@functools.cache
def available() -> bool:
    return importlib.util.find_spec("av") is not None


def is_video(file: LocalFile) -> bool:
    kind = (file.content_type or "").split(";")[0].strip().lower()
    return kind.startswith("video/") or file.name.lower().endswith(VIDEO_SUFFIXES)


def worth_probing(files: list[LocalFile]) -> bool:
    """Whether a downloaded file is a video worth handing to FFmpeg (and falhook[media] is
    installed). A file just downloaded is in the page cache: reading its first bytes here
    costs less than a thread's hand-off."""
    if not available():
        return False
    return any(f.local_path and _candidate(f) and looks_like_video(f.local_path) for f in files)


async def enrich_in_thread(files: list[LocalFile], spool_dir: Path) -> list[LocalFile]:
    """`enrich`, in a thread."""
    return await asyncio.to_thread(enrich, files, spool_dir)


# Container signatures (offset, bytes) of what FFmpeg reads as video: ISO BMFF (mp4, mov,
# m4v, 3gp: a box type at offset 4), Matroska and WebM (EBML), AVI, FLV, MPEG-PS, MPEG-TS, Ogg.
_SIGNATURES = (
    (4, (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")),
    (0, (b"\x1aE\xdf\xa3", b"FLV", b"\x00\x00\x01\xba", b"OggS")),
)


def looks_like_video(path: Path) -> bool:
    """Whether the file starts like a video container (a few bytes read, no decoding)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    if head[:1] == b"\x47":  # an MPEG-TS sync byte: more of them must follow
        return _mpeg_ts(path)
    return any(head[at : at + len(sig)] == sig for at, sigs in _SIGNATURES for sig in sigs)


def _mpeg_ts(path: Path) -> bool:
    """MPEG-TS: a sync byte every 188 bytes (three in a row, so random bytes rarely pass)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(188 * 3 + 1)
    except OSError:
        return False
    return len(head) > 376 and head[0] == head[188] == head[376] == 0x47


def _candidate(file: LocalFile) -> bool:
    """A file whose type or name says video (a poster is made again from its video)."""
    return is_video(file) and not file.extras.get("poster_of")


def enrich(files: list[LocalFile], spool_dir: Path) -> list[LocalFile]:
    """The files with each video's facts in its extras and its poster after it (blocking:
    call it in a thread)."""
    out: list[LocalFile] = []
    names = {f.name for f in files}
    posters = {f.path for f in files if f.extras.get("poster_of")}
    for file in files:
        if file.path in posters:
            continue  # made again below from its video
        if not is_video(file) or file.local_path is None or not looks_like_video(file.local_path):
            out.append(file)
            continue
        try:
            facts, jpeg = probe(file.local_path)
            poster = _poster(file, jpeg, spool_dir, names) if jpeg is not None else None
        except Exception as exc:  # not a video FFmpeg can read: deliver it as it is
            log.info("no video facts", path=file.path, error=f"{type(exc).__name__}: {exc}")
            out.append(file)
            continue
        out.append(replace(file, extras={**file.extras, "media": facts}))
        if poster is not None:
            out.append(poster)
    return out


def _poster(video: LocalFile, jpeg: bytes, spool_dir: Path, names: set[str]) -> LocalFile:
    stem = video.name.rsplit(".", 1)[0] or "video"
    name = f"{stem}.poster.jpg"
    counter = 1
    while name in names:
        counter += 1
        name = f"{stem}.poster-{counter}.jpg"
    names.add(name)
    target = spool_dir / f".poster.{len(names)}.jpg"
    target.write_bytes(jpeg)
    return LocalFile(
        path=video.path + POSTER_SUFFIX,
        name=name,
        url="",
        local_path=target,
        size=len(jpeg),
        sha256=hashlib.sha256(jpeg).hexdigest(),
        content_type="image/jpeg",
        extras={"poster_of": video.path},
    )


def probe(path: Path) -> tuple[dict[str, Any], bytes | None]:
    """(duration in seconds, width, height, codec) and a JPEG of the first frame."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # av.time_base
        facts = {
            "duration": round(duration, 3) if duration is not None else None,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "codec": stream.codec_context.name,
        }
        frame = next(container.decode(stream), None)
        jpeg = _jpeg(frame) if frame is not None else None
    return facts, jpeg


def _jpeg(frame: Any) -> bytes:
    import av

    width = min(frame.width, POSTER_MAX_WIDTH)
    height = max(2, round(frame.height * width / frame.width / 2) * 2)
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    scaled = frame.reformat(width=width, height=height, format="yuvj420p")
    packets = [*encoder.encode(scaled), *encoder.encode(None)]
    return b"".join(bytes(p) for p in packets)


def annotate(views: list[dict[str, Any]], files: list[LocalFile]) -> list[dict[str, Any]]:
    """The event's stored file list with each video's facts and its poster's entry."""
    by_path = {f.path: f for f in files}
    out = []
    for view in views:
        got = by_path.get(str(view.get("path")))
        media = got.extras.get("media") if got is not None else None
        out.append(view | {"media": media} if media else view)
    known = {v.get("path") for v in views}
    for f in files:
        if f.extras.get("poster_of") and f.path not in known:
            out.append(
                {"path": f.path, "url": "", "content_type": f.content_type, "size": f.size,
                 "sha256": f.sha256, "name": f.name, "poster_of": f.extras["poster_of"]}
            )  # fmt: skip
    return out
