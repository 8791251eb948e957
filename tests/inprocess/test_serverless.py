"""The Lambda entry point, driven with real Lambda event shapes: Function URL and API Gateway
HTTP API (payload format 2.0) events, as AWS documents them, bodies plain or base64-encoded.

Secrets come from moto's standalone server over the real SSM protocol (botocore, SigV4, an
endpoint override); the enqueue-mode store is the machine's PostgreSQL, in a database of this
module's own that is dropped at the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from falhook import serverless
from falhook.testing import FalSigner, JWKSServer, webhook_body
from tests.support.falhook_server import base_config, to_toml
from tests.support.fileserver import FileServer
from tests.support.moto import MotoServer
from tests.support.stores import PG_URL

# --- events ------------------------------------------------------------------------------------


def _headers(headers: dict[str, str], domain: str) -> dict[str, str]:
    # Both front doors lower-case header names and add these.
    return {k.lower(): v for k, v in headers.items()} | {
        "host": domain,
        "x-amzn-trace-id": "Root=1-67891233-abcdef012345678912345678",
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }


def _body(body: bytes, b64: bool) -> dict[str, Any]:
    return {
        "body": base64.b64encode(body).decode() if b64 else body.decode(),
        "isBase64Encoded": b64,
    }


def _http(method: str, path: str) -> dict[str, str]:
    return {
        "method": method,
        "path": path,
        "protocol": "HTTP/1.1",
        "sourceIp": "203.0.113.7",
        "userAgent": "fal-webhook/1.0",
    }


def function_url_event(
    body: bytes, headers: dict[str, str], *, path: str = "/webhooks/default", b64: bool = True,
    method: str = "POST", query: str = "",
) -> dict[str, Any]:  # fmt: skip
    """A Lambda Function URL request (AuthType NONE), payload format 2.0."""
    url_id = "abcdefghijklmnopqrstuvwxyz012345"
    domain = f"{url_id}.lambda-url.us-east-1.on.aws"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": _headers(headers, domain),
        "requestContext": {
            "accountId": "anonymous",
            "apiId": url_id,
            "domainName": domain,
            "domainPrefix": url_id,
            "http": _http(method, path),
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "24/Nov/2026:16:00:00 +0000",
            "timeEpoch": 1795622400000,
        },
        **_body(body, b64),
    }


def http_api_event(
    body: bytes, headers: dict[str, str], *, path: str = "/webhooks/default", b64: bool = True,
    method: str = "POST", query: str = "",
) -> dict[str, Any]:  # fmt: skip
    """An API Gateway HTTP API request through a `POST /webhooks/{route}` route on the
    `$default` stage, payload format 2.0."""
    domain = "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com"
    route_key = f"{method} /webhooks/{{route}}" if path.startswith("/webhooks/") else "$default"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": _headers(headers, domain) | {"content-length": str(len(body))},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "a1b2c3d4e5",
            "domainName": domain,
            "domainPrefix": "a1b2c3d4e5",
            "http": _http(method, path),
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": route_key,
            "stage": "$default",
            "time": "24/Nov/2026:16:00:00 +0000",
            "timeEpoch": 1795622400000,
        },
        **_body(body, b64),
    }
    if path.startswith("/webhooks/"):
        event["pathParameters"] = {"route": path.rsplit("/", 1)[1]}
    if query:
        event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    return event


EVENT_SHAPES = {"function_url": function_url_event, "http_api": http_api_event}


class Context:
    """The bits of Lambda's context object falhook reads."""

    function_name = "falhook-receiver"
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def call(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    out = serverless.handler(event, Context())
    body = base64.b64decode(out["body"]) if out.get("isBase64Encoded") else out["body"].encode()
    return out["statusCode"], json.loads(body)


def runtime() -> Any:
    """The app state the container keeps between invocations."""
    assert serverless._handler is not None
    return serverless._handler.app.runtime


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def restored_environ() -> Iterator[None]:
    """The entry point writes the secrets it reads into os.environ (as it must in Lambda):
    undo that after each test, or later tests inherit FAL_KEY and database URLs."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _close_container() -> None:
    """What the end of a Lambda container does, minus the freezing: close what it opened."""
    handler = serverless._handler
    if handler is not None and handler.app.runtime.started:
        asyncio.get_event_loop().run_until_complete(handler.app.runtime.close())


@pytest.fixture
def lambda_env(
    tmp_path: Path, jwks: JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Path]]:
    """configure(**overrides): a fresh container with this config (FALHOOK_CONFIG)."""

    def configure(**overrides: Any) -> Path:
        path = tmp_path / "lambda.toml"
        path.write_text(to_toml(base_config(tmp_path, jwks.url, **overrides)))
        monkeypatch.setenv("FALHOOK_CONFIG", str(path))
        monkeypatch.delenv(serverless.SSM_PARAMETERS_ENV, raising=False)
        monkeypatch.setattr(serverless, "_handler", None)
        monkeypatch.setattr(serverless, "_settings", None)
        return path

    yield configure
    _close_container()


def _in_thread(coro_fn: Callable[[], Any]) -> Any:
    # asyncio.run on its own thread: it must not touch this thread's event loop, which the
    # "container" (Mangum) keeps between invocations.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn())).result()


def pg_query(url: str, sql: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=10)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return _in_thread(run)


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A database of this module's own on the local PostgreSQL (falhook's store always uses
    the schema `falhook` of the URL's database); dropped at the end."""
    name = f"falhook_t_sls_{secrets.token_hex(4)}"
    pg_query(PG_URL, f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        pg_query(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def aws(moto: MotoServer, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Fake credentials and moto as the SSM endpoint, the way a deployment would override it;
    gives a botocore client factory for setting up parameters and secrets."""
    import botocore.session

    moto.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", moto.url)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)

    def client(service: str, **kw: Any) -> Any:
        return botocore.session.get_session().create_client(
            service, endpoint_url=moto.url, region_name="us-east-1", **kw
        )

    return client


def put_secure(aws: Any, name: str, value: str) -> None:
    aws("ssm").put_parameter(Name=name, Value=value, Type="SecureString")


# --- intake through both front doors -----------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(EVENT_SHAPES))
@pytest.mark.parametrize("b64", [True, False])
def test_a_signed_webhook_is_accepted_in_enqueue_mode(
    lambda_env: Any, signer: FalSigner, shape: str, b64: bool
) -> None:
    lambda_env()
    make = EVENT_SHAPES[shape]
    rid, body = webhook_body(str(uuid.uuid4()), payload=None)
    status, doc = call(make(body, signer.headers(body, rid), b64=b64))
    assert (status, doc) == (200, {"status": "accepted", "request_id": rid})
    status, doc = call(make(body, signer.headers(body, rid), b64=b64))  # fal's retry
    assert (status, doc) == (200, {"status": "duplicate", "request_id": rid})


@pytest.mark.parametrize("shape", sorted(EVENT_SHAPES))
def test_a_bad_signature_is_401(lambda_env: Any, signer: FalSigner, shape: str) -> None:
    lambda_env()
    rid, body = webhook_body(str(uuid.uuid4()))
    headers = signer.headers(body, rid) | {"X-Fal-Webhook-Signature": "00" * 64}
    status, doc = call(EVENT_SHAPES[shape](body, headers))
    assert status == 401 and doc["error"] == "bad_signature"
    assert "00" * 64 not in json.dumps(doc)
    # A body changed after signing (the base64 layer decoded correctly, then verified).
    headers = signer.headers(body, rid)
    status, doc = call(EVENT_SHAPES[shape](body.replace(b"}", b" }", 1), headers))
    assert status == 401


def test_routes_health_and_the_query_string_pass_through(
    lambda_env: Any, signer: FalSigner
) -> None:
    lambda_env()
    rid, body = webhook_body(str(uuid.uuid4()), payload=None)
    status, doc = call(function_url_event(body, signer.headers(body, rid), path="/webhooks/nope"))
    assert (status, doc["error"]) == (404, "unknown_route")
    status, doc = call(
        http_api_event(body, signer.headers(body, rid), path="/webhooks/reframe", query="x=1")
    )
    assert (status, doc["status"]) == (200, "accepted")
    status, doc = call(function_url_event(b"", {}, path="/healthz", method="GET", b64=False))
    assert (status, doc) == (200, {"status": "ok"})
    status, doc = call(function_url_event(b"", {}, path="/readyz", method="GET", b64=False))
    assert status == 200 and doc["status"] == "ready"


def test_the_body_limit_respects_lambdas_6_mb(lambda_env: Any, signer: FalSigner) -> None:
    lambda_env(receiver={"max_body_bytes": 50 * 1024 * 1024})
    assert serverless._load().receiver.max_body_bytes == serverless.LAMBDA_MAX_BODY
    rid = str(uuid.uuid4())
    body = json.dumps({"request_id": rid, "status": "OK", "payload": None}).encode()
    body += b" " * (serverless.LAMBDA_MAX_BODY + 1 - len(body))
    status, doc = call(function_url_event(body, signer.headers(body, rid)))
    assert (status, doc["error"]) == (413, "body_too_large")


# --- inline mode -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(EVENT_SHAPES))
def test_inline_mode_delivers_to_the_disk_sink_before_answering(
    lambda_env: Any, signer: FalSigner, files: FileServer, tmp_path: Path, shape: str
) -> None:
    lambda_env(serverless={"mode": "inline", "inline_deadline": 30})
    files.add("/v.mp4", data=b"inline")
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/v.mp4")}})
    status, doc = call(EVENT_SHAPES[shape](body, signer.headers(body, rid)))
    assert status == 200 and doc["status"] == "accepted"
    folder = tmp_path / "files" / "default" / rid
    assert (folder / "video.mp4").read_bytes() == b"inline"
    assert json.loads((folder / "event.json").read_text())["request_id"] == rid


def test_inline_mode_answers_5xx_while_a_download_fails_and_fals_retry_completes_it(
    lambda_env: Any, signer: FalSigner, files: FileServer, tmp_path: Path
) -> None:
    lambda_env(serverless={"mode": "inline", "inline_deadline": 30})
    files.add("/flaky.mp4", data=b"later", fail_times=1, fail_status=503)
    rid, body = webhook_body(str(uuid.uuid4()), payload={"video": {"url": files.url("/flaky.mp4")}})
    status, doc = call(function_url_event(body, signer.headers(body, rid)))
    assert status == 503 and doc["error"] == "delivery_incomplete"
    status, doc = call(function_url_event(body, signer.headers(body, rid)))  # fal retries
    assert (status, doc["status"]) == (200, "duplicate")
    assert (tmp_path / "files" / "default" / rid / "video.mp4").read_bytes() == b"later"


def test_inline_mode_answers_5xx_while_the_disk_sink_fails_and_a_retry_delivers(
    lambda_env: Any, signer: FalSigner, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the sink's folder should be")
    lambda_env(
        serverless={"mode": "inline", "inline_deadline": 30},
        sinks={"local": {"type": "disk", "root": str(blocker / "files")}},
    )
    rid, body = webhook_body(str(uuid.uuid4()), status="ERROR", error="boom", payload=None)
    status, doc = call(http_api_event(body, signer.headers(body, rid)))
    assert (status, doc["error"]) == (503, "delivery_incomplete")
    assert "local" in doc["detail"]
    blocker.unlink()  # the disk is back
    status, doc = call(http_api_event(body, signer.headers(body, rid)))  # fal retries
    assert (status, doc["status"]) == (200, "duplicate")
    stored = json.loads((blocker / "files" / "default" / rid / "event.json").read_text())
    assert stored["error"] == "boom"


# --- one container, many invocations -----------------------------------------------------------


def test_keys_and_store_open_once_per_container(
    lambda_env: Any, signer: FalSigner, jwks: JWKSServer, pg_database: str
) -> None:
    """Three invocations: one JWKS fetch, one store: the PostgreSQL sessions the first one
    opened serve the later ones (the pool may grow, never start over)."""
    lambda_env(store={"url": pg_database})
    falhook_backends = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'falhook'"
    )
    statuses, backends, pools = [], [], []
    for make in (function_url_event, http_api_event, function_url_event):
        rid, body = webhook_body(str(uuid.uuid4()), payload=None)
        statuses.append(call(make(body, signer.headers(body, rid)))[1]["status"])
        backends.append({r["pid"] for r in pg_query(pg_database, falhook_backends)})
        pools.append((runtime().store, runtime().store._pool))
    assert statuses == ["accepted"] * 3
    assert jwks.hits == 1
    assert backends[0] and backends[0] <= backends[1] <= backends[2]
    assert pools[0] == pools[1] == pools[2]


# --- enqueue mode on PostgreSQL, secrets from SSM ----------------------------------------------


def test_enqueue_mode_stores_in_postgresql_with_the_url_from_ssm(
    lambda_env: Any,
    signer: FalSigner,
    aws: Any,
    pg_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = lambda_env(store={"url": "${FALHOOK_DATABASE_URL}"})
    put_secure(aws, "/falhook/test/database-url", pg_database)
    put_secure(aws, "/falhook/test/fal-key", "key-id:key-secret")
    monkeypatch.delenv("FALHOOK_DATABASE_URL", raising=False)
    monkeypatch.delenv("FAL_KEY", raising=False)
    monkeypatch.setenv(
        serverless.SSM_PARAMETERS_ENV,
        "FAL_KEY=/falhook/test/fal-key, FALHOOK_DATABASE_URL=/falhook/test/database-url",
    )
    assert "${FALHOOK_DATABASE_URL}" in config.read_text()
    rid, body = webhook_body(str(uuid.uuid4()), payload=None)
    status, doc = call(function_url_event(body, signer.headers(body, rid)))
    assert (status, doc["status"]) == (200, "accepted")
    assert os.environ["FAL_KEY"] == "key-id:key-secret"
    assert serverless._load().store.url == pg_database
    rows = pg_query(
        pg_database,
        "SELECT e.route, d.sink, d.state FROM falhook.events e"
        " JOIN falhook.deliveries d USING (request_id) WHERE e.request_id = $1",
        rid,
    )
    assert [tuple(r) for r in rows] == [("default", "local", "pending")]
    # Read once per container: a parameter changed later is not read again.
    aws("ssm").put_parameter(
        Name="/falhook/test/fal-key", Value="rotated", Type="SecureString", Overwrite=True
    )
    rid, body = webhook_body(str(uuid.uuid4()), payload=None)
    assert call(function_url_event(body, signer.headers(body, rid)))[0] == 200
    assert os.environ["FAL_KEY"] == "key-id:key-secret"


def test_a_secrets_manager_secret_is_read_through_its_parameter_store_reference(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws("secretsmanager").create_secret(Name="falhook/fal-key", SecretString="from-secrets")
    monkeypatch.delenv("FAL_KEY", raising=False)
    got = serverless.load_ssm_parameters("FAL_KEY=/aws/reference/secretsmanager/falhook/fal-key")
    assert got == ["FAL_KEY"] and os.environ["FAL_KEY"] == "from-secrets"


def test_a_missing_parameter_is_named_and_nothing_is_set(
    lambda_env: Any, signer: FalSigner, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lambda_env()
    put_secure(aws, "/falhook/test/fal-key", "never-shown-value")
    monkeypatch.delenv("FAL_KEY", raising=False)
    monkeypatch.setenv(
        serverless.SSM_PARAMETERS_ENV, "FAL_KEY=/falhook/test/fal-key,DB=/falhook/test/absent"
    )
    rid, body = webhook_body(str(uuid.uuid4()), payload=None)
    with pytest.raises(serverless.SecretsError) as failed:
        call(function_url_event(body, signer.headers(body, rid)))
    message = str(failed.value)
    assert message == "SSM parameter /falhook/test/absent (for DB) does not exist"
    assert "FAL_KEY" not in os.environ  # all or nothing
    # The next invocation tries again, and succeeds once the parameter exists.
    put_secure(aws, "/falhook/test/absent", "now-here")
    status, _ = call(function_url_event(body, signer.headers(body, rid)))
    assert status == 200 and os.environ["DB"] == "now-here"


def test_access_denied_names_the_parameter_never_its_value(
    aws: Any, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto checks IAM here: a role without ssm:GetParameter gets AccessDeniedException."""
    put_secure(aws, "/falhook/test/fal-key", "never-shown-value")
    iam = aws("iam")
    iam.create_user(UserName="no-ssm")
    iam.put_user_policy(
        UserName="no-ssm",
        PolicyName="s3-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="no-ssm")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    monkeypatch.delenv("FAL_KEY", raising=False)
    httpx.post(moto.url + "/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        with pytest.raises(serverless.SecretsError) as failed:
            serverless.load_ssm_parameters("FAL_KEY=/falhook/test/fal-key")
    finally:
        httpx.post(moto.url + "/moto-api/reset-auth", content=b"inf").raise_for_status()
    message = str(failed.value)
    assert message.startswith("SSM parameter /falhook/test/fal-key (for FAL_KEY): access denied")
    assert "never-shown-value" not in message and "FAL_KEY" not in os.environ


def test_an_unreachable_endpoint_is_a_clear_error(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.falhook_server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own setting: no retries here
    with pytest.raises(serverless.SecretsError, match=r"^SSM parameter /p \(for X\) cannot be"):
        serverless.load_ssm_parameters("X=/p")


@pytest.mark.parametrize(
    "spec", ["FAL_KEY", "FAL_KEY=", "=/p", "1X=/p", "A-B=/p", "X=/a,X=/b"]
)  # fmt: skip
def test_a_malformed_parameter_list_is_refused(spec: str) -> None:
    with pytest.raises(serverless.SecretsError, match=serverless.SSM_PARAMETERS_ENV):
        serverless.parse_ssm_parameters(spec)
