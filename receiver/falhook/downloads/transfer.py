"""The files of one job: found whole in the event's spool folder (kept from an earlier
attempt), or downloaded into it once, and told to streaming sinks as they arrive."""

from __future__ import annotations

import asyncio
import secrets

from falhook.downloads.arrivals import Arrival
from falhook.downloads.cache import EventSpool
from falhook.downloads.errors import FetchError, FetchRetryable
from falhook.downloads.files import OFF_LOOP_FILES, Downloader, local_file, names_of, shown_url
from falhook.intake.envelope import FileRef
from falhook.intake.offload import off_loop
from falhook.store.models import EventView
from falhook_sinks.base import LocalFile


class JobFiles:
    def __init__(
        self,
        downloader: Downloader,
        spool: EventSpool,
        event: EventView,
        refs: list[FileRef],
        *,
        keep: bool,
    ) -> None:
        self.downloader = downloader
        self.spool = spool
        self.refs = refs
        self.keep = keep
        # What earlier downloads recorded: a kept file must still be these bytes.
        self.recorded = {f.get("path"): f.get("sha256") for f in event.files}
        self.names: list[str] = []
        self.found: dict[str, LocalFile] = {}
        self.arrivals: dict[str, Arrival] = {}

    async def prepare(self) -> None:
        """Name the files and look for them in the spool (checking size and sha256)."""
        self.names = await off_loop(len(self.refs) > OFF_LOOP_FILES, names_of, self.refs)
        try:
            found = await asyncio.to_thread(self._look)
        except OSError as exc:
            folder, reason = self.spool.folder, exc.strerror or str(exc)
            raise FetchRetryable(f"spool folder {folder} cannot be made: {reason}") from None
        self.found = found

    def _look(self) -> dict[str, LocalFile]:
        self.spool.prepare()
        found = {}
        for ref, name in zip(self.refs, self.names, strict=True):
            kept = self.spool.lookup(ref, self.recorded.get(ref.path))
            if kept is not None:
                found[ref.path] = local_file(kept, name)
        return found

    @property
    def missing(self) -> list[FileRef]:
        return [r for r in self.refs if r.path not in self.found]

    def arriving(self) -> list[Arrival]:
        """The missing files as they will arrive, for sinks that stream them (made before
        the download starts, so no byte is missed)."""
        loop = asyncio.get_running_loop()
        names = dict(zip((r.path for r in self.refs), self.names, strict=True))
        for ref in self.missing:
            self.arrivals[ref.path] = Arrival(
                loop,
                path=ref.path,
                name=names[ref.path],
                url=shown_url(ref),  # as every sink gets it
                content_type=ref.content_type,
                file_name=ref.file_name,
                local_path=self.spool.folder / f"dl-{secrets.token_hex(8)}",
                expected_size=ref.file_size,
                extras=ref.extras,
            )
        return list(self.arrivals.values())

    async def download(self) -> list[LocalFile]:
        """Every missing file, one after another, kept in the spool; all the job's files
        in payload order. FetchError when one fails (arriving files fail with it)."""
        names = dict(zip((r.path for r in self.refs), self.names, strict=True))
        got = dict(self.found)
        try:
            for ref in self.missing:
                got[ref.path] = await self._download(ref, names[ref.path])
        except FetchError as exc:
            for arrival in self.arrivals.values():
                if not arrival.complete:
                    arrival.fail(exc)
            raise
        return [got[r.path] for r in self.refs]

    async def _download(self, ref: FileRef, name: str) -> LocalFile:
        arrival = self.arrivals.get(ref.path)
        fetched = await self.downloader.download(
            ref,
            self.spool.folder,
            keep=self.keep,
            into=arrival.local_path if arrival is not None else None,
            on_written=arrival.progress if arrival is not None else None,
        )
        await asyncio.to_thread(self.spool.keep, fetched)
        done = local_file(fetched, name)
        if arrival is not None:
            arrival.finish(done)
        return done
