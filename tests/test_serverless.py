"""The Lambda entry point, driven with real Function URL / API Gateway HTTP API (v2) events."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver import serverless
from receiver.testing import FalSigner, JWKSServer, webhook_body
from tests.support.falhook_server import base_config, to_toml
from tests.support.fileserver import FileServer


def lambda_event(
    body: bytes,
    headers: dict[str, str],
    *,
    path: str = "/webhooks/default",
    b64: bool = True,
    function_url: bool = True,
) -> dict[str, Any]:
    """A payload-format-2.0 event, as a Function URL or an HTTP API sends it."""
    domain = (
        "abc.lambda-url.us-east-1.on.aws"
        if function_url
        else "abc.execute-api.us-east-1.amazonaws.com"
    )
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {k.lower(): v for k, v in headers.items()} | {"host": domain},
        "requestContext": {
            "accountId": "anonymous" if function_url else "123456789012",
            "apiId": "abc",
            "domainName": domain,
            "domainPrefix": "abc",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "fal-webhook",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "24/Nov/2026:16:00:00 +0000",
            "timeEpoch": 1795622400000,
        },
        "body": base64.b64encode(body).decode() if b64 else body.decode(),
        "isBase64Encoded": b64,
    }


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.fixture
def lambda_env(tmp_path: Path, jwks: JWKSServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def configure(**overrides: Any) -> None:
        path = tmp_path / "lambda.toml"
        path.write_text(to_toml(base_config(tmp_path, jwks.url, **overrides)))
        monkeypatch.setenv("FALHOOK_CONFIG", str(path))
        monkeypatch.setattr(serverless, "_handler", None)
        monkeypatch.setattr(serverless, "_settings", None)

    yield configure


def call(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    out = serverless.handler(event, Context())
    body = base64.b64decode(out["body"]) if out.get("isBase64Encoded") else out["body"].encode()
    return out["statusCode"], json.loads(body)


@pytest.mark.parametrize("function_url", [True, False])
@pytest.mark.parametrize("b64", [True, False])
def test_a_signed_webhook_is_accepted_in_enqueue_mode(
    lambda_env: Any, signer: FalSigner, function_url: bool, b64: bool
) -> None:
    lambda_env()
    rid, body = webhook_body(str(uuid.uuid4()), payload=None)
    status, doc = call(
        lambda_event(body, signer.headers(body, rid), b64=b64, function_url=function_url)
    )
    assert (status, doc) == (200, {"status": "accepted", "request_id": rid})
    status, doc = call(lambda_event(body, signer.headers(body, rid)))  # fal's retry
    assert doc["status"] == "duplicate"


def test_a_bad_signature_is_401(lambda_env: Any, signer: FalSigner) -> None:
    lambda_env()
    rid, body = webhook_body(str(uuid.uuid4()))
    headers = signer.headers(body, rid) | {"X-Fal-Webhook-Signature": "00" * 64}
    status, doc = call(lambda_event(body, headers))
    assert status == 401 and doc["error"] == "bad_signature"


def test_inline_mode_delivers_before_answering(
    lambda_env: Any, signer: FalSigner, files: FileServer, tmp_path: Path
) -> None:
    lambda_env(serverless={"mode": "inline", "inline_deadline": 30})
    files.add("/v.mp4", data=b"inline")
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/v.mp4")}})
    status, doc = call(lambda_event(body, signer.headers(body, rid)))
    assert status == 200 and doc["status"] == "accepted"
    assert (tmp_path / "files" / "default" / rid / "video.mp4").read_bytes() == b"inline"


def test_inline_mode_answers_5xx_while_a_sink_fails_and_fals_retry_completes_it(
    lambda_env: Any, signer: FalSigner, files: FileServer, tmp_path: Path
) -> None:
    lambda_env(serverless={"mode": "inline", "inline_deadline": 30})
    files.add("/flaky.mp4", data=b"later", fail_times=1, fail_status=503)
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/flaky.mp4")}})
    status, doc = call(lambda_event(body, signer.headers(body, rid)))
    assert status == 503 and doc["error"] == "delivery_incomplete"
    status, doc = call(lambda_event(body, signer.headers(body, rid)))  # fal retries
    assert (status, doc["status"]) == (200, "duplicate")
    assert (tmp_path / "files" / "default" / rid / "video.mp4").read_bytes() == b"later"


def test_the_body_limit_respects_lambdas_6_mb(lambda_env: Any) -> None:
    lambda_env(receiver={"max_body_bytes": 50 * 1024 * 1024})
    assert serverless._load().receiver.max_body_bytes == serverless.LAMBDA_MAX_BODY
