"""Where the console finds each file of an event: the disk copy a disk sink wrote (served by
the console itself), the S3 copy an S3 sink made (its presigned link), and fal's own URL.

Links come from the payload and from sinks' outputs: only http(s) URLs are ever rendered
(never `javascript:` or `data:`), and a disk copy is served only from inside its sink's root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from falhook.config import Settings
from falhook.delivery.media import VIDEO_SUFFIXES
from falhook.store.models import EventView
from falhook_sinks.links import link_in_outputs, web_url

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif")
# Types the browser may show inline from the console's origin; anything else is a download
# (an HTML or SVG "file" from a payload must never run in the console's origin).
INLINE_TYPES = frozenset(
    {
        "video/mp4",
        "video/webm",
        "video/quicktime",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
    }
)


@dataclass(frozen=True)
class FileLinks:
    disk: str | None  # the console's URL of the disk copy
    s3: str | None
    fal: str | None

    @property
    def best(self) -> str | None:
        return self.disk or self.s3 or self.fal


def kind_of(file: dict[str, Any]) -> str:
    """video, image, zip, exr or file: how the console previews it."""
    content_type = str(file.get("content_type") or "").split(";")[0].strip().lower()
    name = str(file.get("name") or file.get("file_name") or file.get("url") or "").lower()
    name = name.split("?", 1)[0]
    if content_type.startswith("video/") or name.endswith(VIDEO_SUFFIXES):
        return "video"
    if (content_type.startswith("image/") and "exr" not in content_type) or name.endswith(
        IMAGE_EXT
    ):
        return "image"
    if "zip" in content_type or name.endswith(".zip"):
        return "zip"
    if "exr" in content_type or name.endswith(".exr"):
        return "exr"
    return "file"


def disk_roots(settings: Settings) -> dict[str, Path]:
    """Each disk sink's root folder, resolved."""
    return {
        name: settings.resolve_path(str(s.options.get("root", ""))).resolve()
        for name, s in settings.sinks.items()
        if s.type == "disk" and s.options.get("root")
    }


def disk_copy(view: EventView, sink: str, path: str, roots: dict[str, Path]) -> Path | None:
    """The disk copy of the file at `path` that `sink` wrote, if it is inside its root."""
    root = roots.get(sink)
    written = _written(view, sink, path)
    if root is None or written is None:
        return None
    target = Path(written).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def disk_url(base: str, request_id: str, sink: str, path: str) -> str:
    """The console's URL of a disk copy (`base`: where the console is, paths.py)."""
    query = urlencode({"sink": sink, "path": path})
    return f"{base}/files/{quote(request_id, safe='')}?{query}"


def file_links(view: EventView, roots: dict[str, Path], base: str) -> dict[str, FileLinks]:
    """The links of each file of the event, by its JSON path."""
    found: dict[str, FileLinks] = {}
    for file in view.files:
        path = str(file.get("path", ""))
        disk = next(
            (disk_url(base, view.request_id, s, path) for s in roots if _written(view, s, path)),
            None,
        )
        s3 = link_in_outputs((d.output for d in view.deliveries.values()), path)
        found[path] = FileLinks(disk=disk, s3=s3, fal=web_url(file.get("url")))
    return found


def _written(view: EventView, sink: str, path: str) -> str | None:
    """Where `sink`'s output says it wrote the file at `path` (the disk sink's `files`)."""
    delivery = view.deliveries.get(sink)
    output = delivery.output if delivery is not None else None
    files = output.get("files") if isinstance(output, dict) else None
    written = files.get(path) if isinstance(files, dict) else None
    return written if isinstance(written, str) else None
