"""Helpers to test webhook handling the way fal calls it: sign requests with a generated
Ed25519 key, and serve the matching JWKS on loopback. Only the standard library, PyNaCl and
(in your own tests) an HTTP client are needed.

    from falhook.testing import FalSigner, JWKSServer, sign_request

    signer = FalSigner(user_id="my-fal-user")
    with JWKSServer() as jwks:               # point [receiver].jwks_url at jwks.url
        jwks.set_jwks(signer.jwks())
        request_id, body, headers = sign_request(
            signer, payload={"video": {"url": "https://example.com/out.mp4"}}
        )
        httpx.post("http://127.0.0.1:8000/webhooks/default", content=body, headers=headers)

Key rotation: ``new = signer.rotate(); jwks.set_jwks(new.jwks())``. An outage of fal's key
endpoint: ``jwks.fail(500)``, then ``jwks.fail(None)``; ``jwks.hits`` counts the fetches.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from nacl.signing import SigningKey

DEFAULT_PAYLOAD: dict[str, Any] = {
    "video": {
        "url": "http://127.0.0.1:9/output.mp4",  # loopback, where nothing listens
        "content_type": "video/mp4",
        "file_name": "output.mp4",
        "file_size": 4404019,
    }
}


class FalSigner:
    """Signs webhook bodies the way fal does."""

    def __init__(
        self,
        user_id: str = "test-user",
        signing_key: SigningKey | None = None,
        kid: str = "falhook-test",
    ) -> None:
        self.user_id = user_id
        self.signing_key = signing_key or SigningKey.generate()
        self.kid = kid

    def jwks(self) -> dict[str, Any]:
        """A JWKS document holding this signer's public key."""
        x = base64.urlsafe_b64encode(bytes(self.signing_key.verify_key)).rstrip(b"=").decode()
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": x,
                    "kid": self.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                }
            ]
        }

    def headers(self, body: bytes, request_id: str, timestamp: int | None = None) -> dict[str, str]:
        """fal's four X-Fal-Webhook-* headers for this exact body (signature in hex), plus
        ``Content-Type: application/json`` as fal sends it. `timestamp` defaults to now (unix
        seconds); pass one to test the receiver's tolerance."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        digest = hashlib.sha256(body).hexdigest()
        message = f"{request_id}\n{self.user_id}\n{ts}\n{digest}".encode()
        signature = self.signing_key.sign(message).signature.hex()
        return {
            "Content-Type": "application/json",
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": ts,
            "X-Fal-Webhook-Signature": signature,
        }

    def rotate(self) -> FalSigner:
        """A signer for the same user with a new key (as after fal rotates its keys)."""
        return FalSigner(self.user_id, kid=f"{self.kid}-{uuid.uuid4().hex[:6]}")


def sign_request(
    signer: FalSigner,
    request_id: str | None = None,
    *,
    timestamp: int | None = None,
    **envelope: Any,
) -> tuple[str, bytes, dict[str, str]]:
    """(request_id, body, headers) of a signed webhook, ready to POST. `envelope` takes
    webhook_body's keywords (status, payload, error, payload_error, gateway_request_id)."""
    request_id, body = webhook_body(request_id, **envelope)
    return request_id, body, signer.headers(body, request_id, timestamp=timestamp)


def webhook_body(
    request_id: str | None = None,
    *,
    status: str = "OK",
    payload: Any = DEFAULT_PAYLOAD,
    error: str | None = None,
    payload_error: str | None = None,
    gateway_request_id: str | None = None,
) -> tuple[str, bytes]:
    """(request_id, body) of fal's webhook envelope as JSON bytes: ``{"request_id",
    "gateway_request_id", "status", "payload", "error"?, "payload_error"?}``.

    A new UUID is used when request_id is None. The default payload is a Ray reframe-like
    ``{"video": File}`` whose URL points at a closed loopback port: callers usually pass their
    own payload (files served by a test server). For an ERROR event pass ``status="ERROR"``
    and `error`; for an unserialisable result pass ``payload=None`` and `payload_error`."""
    request_id = request_id or str(uuid.uuid4())
    doc: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": gateway_request_id or request_id,
        "status": status,
        "payload": payload,
    }
    if error is not None:
        doc["error"] = error
    if payload_error is not None:
        doc["payload_error"] = payload_error
    return request_id, json.dumps(doc).encode()


class LoopbackServer:
    """A threaded HTTP server on loopback (an ephemeral port) for tests: start()/stop() or a
    `with` block. Subclasses pass their request handler class."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> None:
        self.host = host
        self._server = ThreadingHTTPServer((host, 0), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Self:
        if self._thread is None:
            # A short poll interval: stop() waits up to one interval for serve_forever to see it.
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class JWKSServer(LoopbackServer):
    """A JWKS endpoint on loopback (an ephemeral port), for tests. It answers every GET
    with the document of set_jwks (initially no keys), or the status of fail(); `hits`
    counts the requests it received."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._doc: dict[str, Any] = {"keys": []}
        self._fail: int | None = None
        self._lock = threading.Lock()
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer._lock:
                    outer.hits += 1
                    fail, doc = outer._fail, outer._doc
                if fail is not None:
                    self.send_response(fail)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(Handler, host)

    @property
    def url(self) -> str:
        """Where the JWKS is served (for [receiver].jwks_url)."""
        return f"http://{self.host}:{self.port}/.well-known/jwks.json"

    def set_jwks(self, doc: dict[str, Any]) -> None:
        with self._lock:
            self._doc = doc

    def fail(self, status: int | None) -> None:
        """Answer `status` instead of the JWKS (None: serve it again)."""
        with self._lock:
            self._fail = status
