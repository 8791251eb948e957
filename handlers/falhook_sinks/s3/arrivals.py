"""The files an S3 delivery uploads, seen one way whether they are whole or still arriving
(a streaming delivery gets them as the download writes them): one upload path serves
``deliver`` and ``deliver_streaming``."""

from __future__ import annotations

from falhook_sinks.base import ArrivingFile, LocalFile, on_disk


class Whole:
    """A file already downloaded, seen as one that has arrived."""

    def __init__(self, file: LocalFile) -> None:
        self.file = file
        self.path, self.name, self.url = file.path, file.name, file.url
        self.content_type, self.file_name = file.content_type, file.file_name
        self.local_path = on_disk(file)
        self.expected_size = file.size
        self.complete = True

    async def wait(self, size: int) -> int:
        return self.file.size or 0

    async def finished(self) -> LocalFile:
        return self.file


async def whole_now(file: ArrivingFile, threshold: int) -> LocalFile | None:
    """The whole file, when it is complete: already, or once a file expected below
    `threshold` bytes (or of unknown size) has had the chance to show it is small. None for a
    file still arriving, whose parts then go up as the download writes them."""
    if not file.complete and (file.expected_size or 0) < threshold:
        await file.wait(threshold)
    return await file.finished() if file.complete else None
