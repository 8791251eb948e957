"""A local fal: the queue (submit with `fal_webhook`, status, result, cancel), a JWKS with a
key of its own, a file store, and signed webhooks, all on loopback.

It stands in for fal's cloud in tests and in the quick start (`falhook emulate`). Each
request goes IN_QUEUE -> IN_PROGRESS -> COMPLETED over `delay` seconds, then its webhook is
POSTed, signed the way fal signs, with an output shaped like the real endpoint's: Ray video
endpoints get a playable H.264 MP4 `video` (the sample clip of `falhook.fal.sample_media`,
and a ZIP `exr_file` when `exr_export` is set), image endpoints get `images` (real-size PNGs:
the size `image_size` asks for, fal's 1024x768 by default).

A request can ask for another outcome with a special input field (the emulator's own, fal
would ignore it):

    "_emulate": {"outcome": "ok" | "error" | "payload_error" | "drop", "delay": 0.5,
                 "access": "allow" | "forbid" | "hide"}

- access: the output files' access rule, as fal's `initial_acl` sets it: `forbid` answers
  403, `hide` 404, unless read through a signed URL from `POST /v1/storage/files/sign`.
- error: the webhook says ERROR (a FastAPI-style `detail` list in `payload`), the result 422.
- payload_error: the webhook is OK with `payload: null` and `payload_error`; the result is OK.
- drop: no webhook at all (as when fal's retries ran out); status and result still answer,
  so a reconciler can recover it.

Every request the emulator gets is kept in `Emulator.requests` (method, path, query, headers,
body) so tests can check exactly what fal would have received.

The URLs it returns (status, response, cancel, files) use `public_url` when given, else the
`X-Forwarded-Proto` / `X-Forwarded-Host` of the request, else the address it was asked on.
App ids are the owner and alias (`luma/agent` of `luma/agent/ray/v3.2/reframe`), with the
namespace first for namespaced apps (`workflows/owner/alias/...`, `comfy/...`), as fal-client
builds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from falhook.fal.emulate_storage import (
    ACCESS_RULES,
    SIGN_PATH,
    SIGNATURE_PARAM,
    Answer,
    EmulatedStorage,
)
from falhook.fal.queue import NAMESPACES, app_id
from falhook.fal.sample_media import IMAGE_HEIGHT, IMAGE_WIDTH, gradient_png, sample_clip
from falhook.fal.tls import TLSFiles, default_hosts, make_tls_files
from falhook.testing import FalSigner
from falhook_sinks.httpcommon import trust

OUTCOMES = ("ok", "error", "payload_error", "drop")
CONTROL_FIELD = "_emulate"
UPLOAD_PATH = "/storage/upload"  # POST raw bytes; X-Fal-File-Name names the file
JWKS_PATH = "/.well-known/jwks.json"
_MAX_DELAY = 3600.0
_WEBHOOK_TIMEOUT = 10.0


# --- generated media ---------------------------------------------------------------------------


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def tiny_mp4(seconds: float = 5.0, *, padding: int = 2048) -> bytes:
    """An MP4 header that says `seconds` long and holds no frames: for tests of duration
    checks on a local `--file` (the emulator's own outputs are the playable sample clip)."""
    timescale = 1000
    mvhd = struct.pack(
        ">B3xIIIIIH10x36x24xI",
        0,  # version 0, flags 0
        0,  # creation time
        0,  # modification time
        timescale,
        round(seconds * timescale),
        0x00010000,  # rate 1.0
        0x0100,  # volume 1.0
        2,  # next track id
    )
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2avc1mp41")
    return ftyp + _box(b"moov", _box(b"mvhd", mvhd)) + _box(b"mdat", bytes(padding))


# fal's named image sizes (`image_size` of its image models), width x height.
IMAGE_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
_MAX_IMAGES = 4


def image_size(value: Any) -> tuple[int, int]:
    """The size an image request asks for (a named size or {width, height}, within reason),
    else fal's default, landscape 4:3."""
    if isinstance(value, str) and value in IMAGE_SIZES:
        return IMAGE_SIZES[value]
    if isinstance(value, dict):
        w, h = value.get("width"), value.get("height")
        if isinstance(w, int) and isinstance(h, int) and 16 <= w <= 4096 and 16 <= h <= 4096:
            return w, h
    return IMAGE_WIDTH, IMAGE_HEIGHT


def tiny_zip(name: str, data: bytes) -> bytes:
    """A one-entry ZIP (stored), standing in for an EXR sidecar package."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def is_image_endpoint(endpoint: str) -> bool:
    """Image models answer `images: [File]`; every video model (reframe too) a `video`."""
    last = endpoint.rsplit("/", 1)[-1]
    if "video" in last or "reframe" in last:
        return False
    return any(word in endpoint for word in ("image", "flux", "photon", "edit"))


# --- state -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One HTTP request as the emulator got it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Job:
    request_id: str
    endpoint: str
    app_id: str
    input: dict[str, Any]
    webhook_url: str | None
    outcome: str
    delay: float
    base_url: str
    access: str = "allow"
    status: str = "IN_QUEUE"  # IN_QUEUE, IN_PROGRESS, COMPLETED, CANCELLED
    output: dict[str, Any] | None = None
    webhook_answers: list[int | str] = field(default_factory=list)  # status codes or errors
    webhook_sent: bool = False


class Emulator:
    """The emulator's state and its Starlette app (`.app`)."""

    def __init__(
        self,
        *,
        delay: float = 1.0,
        user_id: str = "emulator-user",
        signer: FalSigner | None = None,
        webhook_attempts: int = 3,
        default_outcome: str = "ok",
        public_url: str | None = None,
    ) -> None:
        if default_outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        self.public_url = public_url.rstrip("/") if public_url else None
        self.delay = delay
        self.signer = signer or FalSigner(user_id=user_id, kid="falhook-emulator")
        self.webhook_attempts = max(1, webhook_attempts)
        self.default_outcome = default_outcome
        self.requests: list[Received] = []
        self.jobs: dict[str, Job] = {}
        self.storage = EmulatedStorage()
        self.files = self.storage.files  # "<id>/<name>" -> (bytes, type)
        self._tasks: set[asyncio.Task[None]] = set()
        self.app = Starlette(
            routes=[
                Route(JWKS_PATH, self._jwks, methods=["GET"]),
                Route(UPLOAD_PATH, self._upload, methods=["POST"]),
                Route(SIGN_PATH, self._sign, methods=["POST"]),
                Route("/files/{fid}/{name}", self._file, methods=["GET"]),
                Route("/{app:path}/requests/{rid}/status", self._status, methods=["GET"]),
                Route("/{app:path}/requests/{rid}/cancel", self._cancel, methods=["PUT"]),
                Route("/{app:path}/requests/{rid}", self._result, methods=["GET"]),
                Route("/{endpoint:path}", self._submit, methods=["POST"]),
            ]
        )

    # Tests read these.
    def idle(self) -> bool:
        """True when no job is still running (its webhook sent, or given up)."""
        return not self._tasks

    def submits(self) -> list[Received]:
        return [
            r
            for r in self.requests
            if r.method == "POST" and r.path not in (UPLOAD_PATH, SIGN_PATH)
        ]

    async def _record(self, request: Request) -> Received:
        received = Received(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
        )
        self.requests.append(received)
        return received

    @staticmethod
    def _authorized(received: Received) -> bool:
        scheme, _, key = received.headers.get("authorization", "").partition(" ")
        return scheme == "Key" and bool(key.strip())

    def _base(self, request: Request) -> str:
        """The base of the URLs handed out: --public-url, else what a proxy in front says
        (X-Forwarded-Proto/Host), else the address the request came to."""
        if self.public_url:
            return self.public_url
        host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        base = str(request.base_url).rstrip("/")
        if host or proto in ("http", "https"):
            scheme = proto if proto in ("http", "https") else request.url.scheme
            return f"{scheme}://{host or request.url.netloc}"
        return base

    # --- routes -------------------------------------------------------------------------------

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse(self.signer.jwks())

    async def _upload(self, request: Request) -> Response:
        received = await self._record(request)
        if not self._authorized(received):
            return JSONResponse({"detail": "Missing or invalid Authorization"}, status_code=401)
        name = received.headers.get("x-fal-file-name") or "upload.bin"
        name = name.replace("/", "_").replace("\\", "_") or "upload.bin"
        content_type = received.headers.get("content-type", "application/octet-stream")
        key = f"{uuid.uuid4().hex}/{name}"
        self.storage.put(key, received.body, content_type)
        return JSONResponse({"url": f"{self._base(request)}/files/{key}"})

    async def _file(self, request: Request) -> Response:
        key = f"{request.path_params['fid']}/{request.path_params['name']}"
        got = self.storage.read(key, request.query_params.get(SIGNATURE_PARAM))
        if isinstance(got, Answer):
            return JSONResponse(got.body, status_code=got.status)
        return Response(got.data, media_type=got.content_type)

    async def _sign(self, request: Request) -> Response:
        """fal's storage signing API (api.fal.ai/v1/storage/files/sign), for our files."""
        received = await self._record(request)
        if not self._authorized(received):
            return JSONResponse({"detail": "Missing or invalid Authorization"}, status_code=401)
        try:
            body = json.loads(received.body or b"null")
        except ValueError:
            return JSONResponse({"detail": "Body is not JSON"}, status_code=422)
        answer = self.storage.sign(received.query.get("url"), body)
        return JSONResponse(answer.body, status_code=answer.status)

    async def _submit(self, request: Request) -> Response:
        received = await self._record(request)
        endpoint = request.path_params["endpoint"].strip("/")
        if not self._authorized(received):
            return JSONResponse({"detail": "Missing or invalid Authorization"}, status_code=401)
        parts = endpoint.split("/")
        if len(parts) < (3 if parts[0] in NAMESPACES else 2):
            return JSONResponse({"detail": f"Unknown app {endpoint!r}"}, status_code=404)
        try:
            body = json.loads(received.body or b"{}")
        except ValueError:
            return JSONResponse({"detail": "Body is not JSON"}, status_code=422)
        if not isinstance(body, dict):
            return JSONResponse({"detail": "Body must be a JSON object"}, status_code=422)
        control = _control(body.get(CONTROL_FIELD), self.default_outcome, self.delay)
        if isinstance(control, str):
            return JSONResponse({"detail": control}, status_code=422)
        outcome, delay, access = control
        job = Job(
            request_id=str(uuid.uuid4()),
            endpoint=endpoint,
            app_id=app_id(endpoint),
            input=body,
            webhook_url=received.query.get("fal_webhook"),
            outcome=outcome,
            delay=min(max(delay, 0.0), _MAX_DELAY),
            base_url=self._base(request),
            access=access,
        )
        self.jobs[job.request_id] = job
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # fal's answer: the request is queued, with the URLs to follow it.
        return JSONResponse(self._urls(job) | {"status": "IN_QUEUE", "queue_position": 0})

    def _urls(self, job: Job) -> dict[str, str]:
        base = f"{job.base_url}/{job.app_id}/requests/{job.request_id}"
        return {
            "request_id": job.request_id,
            "gateway_request_id": job.request_id,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    async def _authorized_job(self, request: Request) -> Job | Response:
        """The request's job, or fal's answer when it cannot be had (401, 404)."""
        received = await self._record(request)
        if not self._authorized(received):
            return JSONResponse({"detail": "Missing or invalid Authorization"}, status_code=401)
        job = self._job(request)
        if job is None:
            return JSONResponse({"detail": "Request not found"}, status_code=404)
        return job

    def _job(self, request: Request) -> Job | None:
        job = self.jobs.get(request.path_params["rid"])
        app = request.path_params["app"].strip("/")
        return job if job is not None and job.app_id == app else None

    async def _status(self, request: Request) -> Response:
        job = await self._authorized_job(request)
        if isinstance(job, Response):
            return job
        doc: dict[str, Any] = {"status": job.status, "request_id": job.request_id}
        doc["response_url"] = self._urls(job)["response_url"]
        # fal answers logs only when asked (?logs=1; fal-client sends logs=true/false).
        logs = _logs(job) if request.query_params.get("logs", "0") in ("1", "true") else None
        if job.status == "IN_QUEUE":
            return JSONResponse(doc | {"queue_position": 0, "logs": logs}, status_code=202)
        if job.status == "IN_PROGRESS":
            return JSONResponse(doc | {"logs": logs}, status_code=202)
        doc["status"] = "COMPLETED"  # a cancelled request is completed, with an error
        doc |= {"logs": logs, "metrics": {"inference_time": job.delay}}
        if job.status == "CANCELLED":
            doc["error"] = "Request was cancelled"
        elif job.outcome == "error":
            doc["error"] = "Invalid status code: 422"
        return JSONResponse(doc)

    async def _result(self, request: Request) -> Response:
        job = await self._authorized_job(request)
        if isinstance(job, Response):
            return job
        if job.status == "CANCELLED":
            return JSONResponse({"detail": "Request was cancelled"}, status_code=400)
        if job.status != "COMPLETED":
            return JSONResponse({"detail": "Request is still in progress"}, status_code=400)
        if job.outcome == "error":
            return JSONResponse({"detail": _error_detail()}, status_code=422)
        return JSONResponse(job.output)

    async def _cancel(self, request: Request) -> Response:
        job = await self._authorized_job(request)
        if isinstance(job, Response):
            return job
        if job.status == "IN_QUEUE":
            job.status = "CANCELLED"
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)

    # --- the job's life -----------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        await asyncio.sleep(job.delay / 2)
        if job.status == "CANCELLED":
            return
        job.status = "IN_PROGRESS"
        await asyncio.sleep(job.delay / 2)
        job.output = self._output(job)
        job.status = "COMPLETED"
        if job.outcome != "drop" and job.webhook_url:
            await self._send_webhook(job)

    def _output(self, job: Job) -> dict[str, Any]:
        def file(name: str, data: bytes, content_type: str) -> dict[str, Any]:
            key = f"{job.request_id}/{name}"
            self.storage.put(key, data, content_type, job.access)
            return {
                "url": f"{job.base_url}/files/{key}",
                "content_type": content_type,
                "file_name": name,
                "file_size": len(data),
            }

        if is_image_endpoint(job.endpoint):
            width, height = image_size(job.input.get("image_size"))
            png = gradient_png(width, height)
            count = job.input.get("num_images", 1)
            count = min(max(count, 1), _MAX_IMAGES) if isinstance(count, int) else 1
            images = [
                file(f"image-{i}.png", png, "image/png") | {"width": width, "height": height}
                for i in range(count)
            ]
            return {"images": images, "seed": 42}
        output: dict[str, Any] = {"video": file("output.mp4", sample_clip(), "video/mp4")}
        if job.input.get("exr_export"):
            exr = tiny_zip("frame-0001.exr", b"v/1\x01" + bytes(64))
            output["exr_file"] = file("output-exr.zip", exr, "application/zip")
        return output

    def webhook_body(self, job: Job) -> bytes:
        doc: dict[str, Any] = {
            "request_id": job.request_id,
            "gateway_request_id": job.request_id,
            "status": "OK",
            "payload": job.output,
        }
        if job.outcome == "error":
            doc |= {
                "status": "ERROR",
                "error": "Invalid status code: 422",
                "payload": {"detail": _error_detail()},
            }
        elif job.outcome == "payload_error":
            doc |= {"payload": None, "payload_error": "Response payload is not JSON serializable"}
        return json.dumps(doc).encode()

    async def _send_webhook(self, job: Job) -> None:
        """POST the signed webhook; a few quick retries (fal's own take ~2 h)."""
        assert job.webhook_url is not None
        body = self.webhook_body(job)
        async with httpx.AsyncClient(timeout=_WEBHOOK_TIMEOUT, verify=trust()) as client:
            for attempt in range(self.webhook_attempts):
                headers = self.signer.headers(body, job.request_id)  # fresh timestamp each try
                try:
                    response = await client.post(job.webhook_url, content=body, headers=headers)
                    job.webhook_answers.append(response.status_code)
                    if response.is_success:
                        job.webhook_sent = True
                        return
                except httpx.HTTPError as exc:
                    job.webhook_answers.append(type(exc).__name__)
                await asyncio.sleep(min(0.5 * 2**attempt, 5.0))


def _control(value: Any, outcome: str, delay: float) -> tuple[str, float, str] | str:
    """(outcome, delay, access) a request asks for with "_emulate", or what is wrong."""
    control = value or {}
    if not isinstance(control, dict):
        return f"{CONTROL_FIELD} must be an object"
    outcome = control.get("outcome", outcome)
    if outcome not in OUTCOMES:
        return f"{CONTROL_FIELD}.outcome must be one of {', '.join(OUTCOMES)}"
    try:
        delay = float(control.get("delay", delay))
    except (TypeError, ValueError):
        return f"{CONTROL_FIELD}.delay must be seconds"
    access = control.get("access", "allow")
    if access not in ACCESS_RULES:
        return f"{CONTROL_FIELD}.access must be one of {', '.join(ACCESS_RULES)}"
    return outcome, delay, access


def _logs(job: Job) -> list[dict[str, Any]]:
    """Log lines shaped like fal's (message, level, source, timestamp)."""
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    lines = [f"request {job.request_id} queued"]
    if job.status != "IN_QUEUE":
        lines.append(f"running {job.endpoint}")
    if job.status == "COMPLETED":
        lines.append("done")
    return [{"message": m, "level": "INFO", "source": "user", "timestamp": at} for m in lines]


def _error_detail() -> list[dict[str, Any]]:
    return [
        {
            "loc": ["body", "video_url"],
            "msg": "The emulator was asked to fail this request",
            "type": "value_error",
        }
    ]


# --- running it --------------------------------------------------------------------------------


class EmulatorServer:
    """The emulator on loopback in a background thread (for tests and embedding).

    with EmulatorServer(Emulator(delay=0.2)) as fal:
        fal.url, fal.jwks_url

    tls_dir: serve https with a certificate made there (`fal.tls.ca` is the CA file).
    """

    def __init__(
        self,
        emulator: Emulator | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_dir: str | os.PathLike[str] | None = None,
    ):
        self.emulator = emulator or Emulator()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.tls: TLSFiles | None = None
        if tls_dir is not None:
            public = urlsplit(self.emulator.public_url or "").hostname
            self.tls = make_tls_files(tls_dir, default_hosts(host, public))
        config = uvicorn.Config(
            self.emulator.app, log_level="warning", lifespan="off", **_tls_options(self.tls)
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def jwks_url(self) -> str:
        return self.url + JWKS_PATH

    @property
    def sign_url(self) -> str:
        return self.url + SIGN_PATH

    def start(self, timeout: float = 10.0) -> EmulatorServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fal emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tls_options(tls: TLSFiles | None) -> dict[str, Any]:
    if tls is None:
        return {}
    return {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}


def serve(emulator: Emulator, sock: socket.socket, tls: TLSFiles | None = None) -> None:
    """Run the emulator in the foreground on a bound socket (`falhook emulate`)."""
    config = uvicorn.Config(emulator.app, log_level="warning", lifespan="off", **_tls_options(tls))
    uvicorn.Server(config).run(sockets=[sock])
