"""fal's queue REST API: submit (once, never retried), status, result, cancel, and file
uploads for inputs. The client for `falhook submit`, reconciliation and the emulator's tests.

Status, result and cancel use the URLs the submit answer gave: for a nested endpoint id
(`luma/agent/ray/v3.2/reframe`) they live under the app id (`luma/agent`).

FAL_KEY comes from the environment (or the caller) and goes only into the Authorization
header: never into the store, the config or a log line.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from falhook.config import DEFAULT_QUEUE_URL, Settings
from falhook.progress import Progress
from falhook_sinks.httpcommon import trust

KEY_ENV = "FAL_KEY"
UPLOAD_MODES = ("auto", "fal", "queue")
EMULATOR_UPLOAD_PATH = "/storage/upload"  # falhook.fal.emulate serves it
STORE_IO_HEADER = "X-Fal-Store-IO"
_UPLOAD_CHUNK = 1024 * 1024


class SubmitError(RuntimeError):
    """The job was not started (fal refused it, or it was never sent)."""


class SubmitRefused(SubmitError):
    """Refused before anything was sent: a mistake in the input, the files or the config."""


class MissingKey(SubmitRefused):
    def __init__(self) -> None:
        super().__init__(f"{KEY_ENV} is not set: export {KEY_ENV}=<your fal key>")


class SubmitUnknown(SubmitError):
    """The submit was sent but its answer was lost: the job may be running and billed.
    It is never resubmitted automatically."""

    def __init__(self, reason: str, local_id: str | None = None) -> None:
        super().__init__(
            f"the answer to the submit was lost ({reason}); the job may be running and billed "
            "already, so it was NOT resubmitted. Check fal's dashboard before trying again."
        )
        self.reason = reason
        self.local_id = local_id


class QueueError(RuntimeError):
    """A status, result or cancel call failed (network, or an unexpected answer)."""


# --- the queue client --------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


@dataclass(frozen=True)
class QueueStatus:
    status: str  # IN_QUEUE, IN_PROGRESS, COMPLETED (or NOT_FOUND when fal has no such request)
    http_status: int
    data: dict[str, Any]

    @property
    def done(self) -> bool:
        return self.status == "COMPLETED"


@dataclass(frozen=True)
class QueueResult:
    ok: bool
    http_status: int
    payload: Any  # the output, or the error's body (a FastAPI `detail`, usually)


NAMESPACES = ("workflows", "comfy")  # their app ids are namespace/owner/alias


def app_id(endpoint: str) -> str:
    """fal's app id: the owner and alias, the first two parts of a nested endpoint id, after
    the namespace for namespaced apps (`workflows/owner/alias/...`), as fal-client builds it."""
    parts = endpoint.strip("/").split("/")
    return "/".join(parts[:3] if parts[0] in NAMESPACES else parts[:2])


def queue_urls(queue_url: str, endpoint: str, request_id: str) -> Submitted:
    """The URLs fal's queue uses for a request, for when the submit answer did not give them."""
    base = f"{queue_url.rstrip('/')}/{app_id(endpoint)}/requests/{request_id}"
    return Submitted(request_id, f"{base}/status", base, f"{base}/cancel")


def is_fal_queue(queue_url: str) -> bool:
    host = urlsplit(queue_url).hostname or ""
    return host == "fal.run" or host.endswith(".fal.run")


class FalQueue:
    """An async client of fal's queue REST API (or anything serving it, like the emulator)."""

    def __init__(
        self,
        queue_url: str = DEFAULT_QUEUE_URL,
        *,
        key: str | None = None,
        timeout: float = 60.0,
        upload: str = "auto",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if upload not in UPLOAD_MODES:
            raise ValueError(f"upload must be one of {UPLOAD_MODES}")
        self.queue_url = queue_url.rstrip("/")
        self._key = key if key is not None else os.environ.get(KEY_ENV)
        self.upload_mode = upload
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport, verify=trust())

    def __repr__(self) -> str:  # never shows the key
        return f"FalQueue({self.queue_url!r})"

    async def __aenter__(self) -> FalQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _auth(self) -> dict[str, str]:
        if not self._key:
            raise MissingKey()
        return {"Authorization": f"Key {self._key}"}

    async def submit(
        self,
        endpoint: str,
        input: dict[str, Any],
        *,
        webhook_url: str | None = None,
        store_io: bool = True,
    ) -> Submitted:
        """POST once. SubmitError: not started. SubmitUnknown: maybe started.

        store_io=False sends `X-Fal-Store-IO: 0` (fal then keeps the result for about an
        hour, 6 minutes when it is 10 KB or more); only on the caller's explicit request."""
        url = f"{self.queue_url}/{endpoint.strip('/')}"
        if webhook_url is not None:
            url += "?" + urlencode({"fal_webhook": webhook_url})
        headers = self._auth()
        if not store_io:
            headers[STORE_IO_HEADER] = "0"
        try:
            response = await self._client.post(url, json=input, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # No connection was made, so nothing was sent: safe to try again later.
            raise SubmitError(f"could not reach {self.queue_url}: {exc!r}") from None
        except httpx.HTTPError as exc:
            raise SubmitUnknown(f"{type(exc).__name__} after sending") from None
        if response.status_code >= 500:
            raise SubmitUnknown(f"HTTP {response.status_code} from the queue")
        if response.status_code >= 400:
            raise SubmitError(
                f"fal refused the job: HTTP {response.status_code}: {_detail(response)}"
            )
        try:
            doc = response.json()
            request_id = doc["request_id"]
        except (ValueError, KeyError, TypeError):
            raise SubmitUnknown("the answer has no request_id") from None
        if not isinstance(request_id, str) or not request_id:
            raise SubmitUnknown("the answer has no request_id")
        fallback = queue_urls(self.queue_url, endpoint, request_id)
        return Submitted(
            request_id=request_id,
            status_url=doc.get("status_url") or fallback.status_url,
            response_url=doc.get("response_url") or fallback.response_url,
            cancel_url=doc.get("cancel_url") or fallback.cancel_url,
        )

    async def status(self, status_url: str) -> QueueStatus:
        response = await self._call("GET", status_url)
        if response.status_code == 404:
            return QueueStatus("NOT_FOUND", 404, {"detail": _detail(response)})
        if response.status_code not in (200, 202):
            raise QueueError(f"status: HTTP {response.status_code}: {_detail(response)}")
        try:
            data = response.json()
            return QueueStatus(str(data["status"]), response.status_code, data)
        except (ValueError, KeyError, TypeError):
            raise QueueError("status: the answer has no status") from None

    async def result(self, response_url: str) -> QueueResult:
        response = await self._call("GET", response_url)
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        if response.status_code == 200:
            return QueueResult(True, 200, body)
        if response.status_code in (401, 403, 404, 408, 429) or response.status_code >= 500:
            raise QueueError(f"result: HTTP {response.status_code}: {_detail(response)}")
        return QueueResult(False, response.status_code, body)  # the job failed (4xx)

    async def cancel(self, cancel_url: str) -> bool:
        """True when fal took the cancellation (only a queued request can be cancelled)."""
        response = await self._call("PUT", cancel_url)
        return response.status_code in (200, 202)

    async def _call(self, method: str, url: str) -> httpx.Response:
        try:
            return await self._client.request(method, url, headers=self._auth())
        except httpx.HTTPError as exc:
            raise QueueError(f"{method} {urlsplit(url).path}: {type(exc).__name__}") from None

    async def upload(self, path: str | os.PathLike[str], progress: Progress | None = None) -> str:
        """Upload a local file to storage fal can read; its URL. ``progress`` counts bytes
        (for the queue's own upload path; fal-client's upload reports nothing)."""
        mode = self.upload_mode
        if mode == "auto":
            mode = "fal" if is_fal_queue(self.queue_url) else "queue"
        if mode == "fal":
            return await self._upload_fal(Path(path))
        return await self._upload_queue(Path(path), progress)

    async def _upload_fal(self, path: Path) -> str:
        try:
            import fal_client
        except ImportError:
            raise SubmitError(
                "uploading to fal storage needs fal-client: pip install fal-client"
            ) from None
        if not self._key:
            raise MissingKey()
        try:
            url: str = await fal_client.AsyncClient(key=self._key).upload_file(path)
            return url
        except Exception as exc:  # fal-client raises many kinds; none may leak the key
            raise SubmitError(f"uploading {path.name} failed: {type(exc).__name__}") from None

    async def _upload_queue(self, path: Path, progress: Progress | None) -> str:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        size = (await asyncio.to_thread(os.stat, path)).st_size
        headers = self._auth() | {
            "Content-Type": content_type,
            "Content-Length": str(size),
            "X-Fal-File-Name": path.name,
        }
        try:
            response = await self._client.post(
                self.queue_url + EMULATOR_UPLOAD_PATH,
                content=_chunks(path, progress),
                headers=headers,
            )
        except httpx.HTTPError as exc:
            raise SubmitError(f"uploading {path.name} failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise SubmitError(f"uploading {path.name}: HTTP {response.status_code}")
        return str(response.json()["url"])


async def _chunks(path: Path, progress: Progress | None) -> AsyncIterator[bytes]:
    """The file in pieces, read off the event loop: a large video is never whole in memory."""
    with path.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, _UPLOAD_CHUNK):
            if progress is not None:
                progress.advance(len(chunk))
            yield chunk


def _detail(response: httpx.Response) -> str:
    try:
        doc = response.json()
    except ValueError:
        return response.text[:300]
    detail = doc.get("detail", doc) if isinstance(doc, dict) else doc
    return (detail if isinstance(detail, str) else str(detail))[:300]


# --- the submit flow ---------------------------------------------------------------------------


def make_queue(settings: Settings, *, key: str | None = None) -> FalQueue:
    return FalQueue(
        settings.receiver.queue_url,
        key=key,
        timeout=settings.submit.timeout,
        upload=settings.submit.upload,
    )
