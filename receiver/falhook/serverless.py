"""AWS Lambda entry point: ``falhook.serverless:handler`` (Function URLs and API Gateway HTTP
APIs, through Mangum; base64-encoded bodies included).

Two modes, from ``[serverless].mode``:
- ``enqueue``: verify, store, answer. Deliveries are made by `falhook worker` processes
  elsewhere, or by a scheduled drain function (``falhook.serverless:drain``), on a shared
  PostgreSQL store.
- ``inline``: verify, store, then run the route's sinks before answering, within
  ``inline_deadline``. A non-2xx answer hands the retry to fal's own schedule (10 tries over
  about 2 hours); idempotent sinks make those retries safe.

The app is built once per container, at first use, and its store connection and key cache
live as long as the container: Mangum's per-invocation lifespan is switched off for that.

Secrets: ``FALHOOK_SSM_PARAMETERS="FAL_KEY=/falhook/fal-key,FALHOOK_DATABASE_URL=/falhook/db"``
names SSM Parameter Store parameters to read (decrypted) into those environment variables once
per container, before the config is loaded, so ``${FAL_KEY}`` in it resolves. A Secrets Manager
secret is read the same way through Parameter Store's reference name
``/aws/reference/secretsmanager/<secret-id>``. botocore (in every AWS Python runtime, and in the
package through the ``s3`` extra) is imported only when the variable is set.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import TYPE_CHECKING, Any

from falhook.config import Settings, load_config
from falhook.logs import configure_logging, get_logger

if TYPE_CHECKING:
    from falhook.app import Falhook

LAMBDA_MAX_BODY = 6 * 1024 * 1024  # Lambda's synchronous request payload limit
log = get_logger("falhook.serverless")
_handler: Any = None
_settings: Settings | None = None

SSM_PARAMETERS_ENV = "FALHOOK_SSM_PARAMETERS"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SSM_CONNECT_TIMEOUT = 5.0
_SSM_READ_TIMEOUT = 10.0


class SecretsError(RuntimeError):
    """A secret named in FALHOOK_SSM_PARAMETERS could not be read. The message names the
    parameter and the variable, never a value."""


def parse_ssm_parameters(spec: str) -> list[tuple[str, str]]:
    """``ENV=/name,ENV2=/name2`` -> [(ENV, /name), ...]; blanks around items are ignored."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        env, sep, name = (part.strip() for part in item.partition("="))
        if not sep or not name or not _ENV_NAME.match(env):
            raise SecretsError(
                f"{SSM_PARAMETERS_ENV}: {item!r} must look like ENV_NAME=/parameter/name"
            )
        if env in seen:
            raise SecretsError(f"{SSM_PARAMETERS_ENV}: {env} is named twice")
        seen.add(env)
        pairs.append((env, name))
    return pairs


def _ssm_client() -> Any:
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:
        raise SecretsError(
            f"{SSM_PARAMETERS_ENV} is set but botocore is not installed (AWS's Python "
            "runtimes include it; elsewhere install falhook's s3 extra or boto3)"
        ) from None
    from botocore.exceptions import BotoCoreError

    config = Config(
        connect_timeout=_SSM_CONNECT_TIMEOUT,
        read_timeout=_SSM_READ_TIMEOUT,
        retries={"mode": "standard"},  # 3 attempts; AWS_MAX_ATTEMPTS overrides
    )
    # Lambda sets AWS_REGION (and AWS_DEFAULT_REGION, which botocore reads); an endpoint
    # override comes from AWS_ENDPOINT_URL_SSM / AWS_ENDPOINT_URL, as botocore resolves them.
    region = os.environ.get("AWS_REGION") or None
    try:
        return botocore.session.get_session().create_client(
            "ssm", region_name=region, config=config
        )
    except BotoCoreError as exc:
        raise SecretsError(f"{SSM_PARAMETERS_ENV}: no SSM client: {exc}") from None


def load_ssm_parameters(spec: str | None = None) -> list[str]:
    """Read each named parameter (decrypted) into its environment variable; returns the
    variables set. An existing value of such a variable is replaced: the parameter is the
    source of truth. Any failure raises SecretsError naming the parameter, never a value."""
    text = os.environ.get(SSM_PARAMETERS_ENV, "") if spec is None else spec
    pairs = parse_ssm_parameters(text)
    if not pairs:
        return []
    client = _ssm_client()
    from botocore.exceptions import BotoCoreError, ClientError

    values: dict[str, str] = {}
    for env, name in pairs:
        what = f"SSM parameter {name} (for {env})"
        try:
            answer = client.get_parameter(Name=name, WithDecryption=True)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "error"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "ParameterNotFound":
                raise SecretsError(f"{what} does not exist") from None
            if code in ("AccessDeniedException", "AccessDenied") or status == 403:
                raise SecretsError(
                    f"{what}: access denied; grant ssm:GetParameter on it (and "
                    "kms:Decrypt on a customer-managed key) to the function's role"
                ) from None
            detail = " ".join(str(error.get("Message", "")).split())[:300]
            raise SecretsError(f"{what}: {code}: {detail}".rstrip(": ")) from None
        except BotoCoreError as exc:
            raise SecretsError(f"{what} cannot be read: {exc}") from None
        value = (answer.get("Parameter") or {}).get("Value")
        if not isinstance(value, str):
            raise SecretsError(f"{what}: the answer holds no value")
        values[env] = value
    os.environ.update(values)  # all or nothing
    log.info("secrets read from SSM", variables=sorted(values))
    return sorted(values)


def _load() -> Settings:
    global _settings
    if _settings is None:
        configure_logging()
        # Once per container, like the settings; a failure is retried by the next invocation.
        load_ssm_parameters()
        _settings = load_config(None)
        if _settings.receiver.max_body_bytes > LAMBDA_MAX_BODY:
            from msgspec.structs import replace

            receiver = replace(_settings.receiver, max_body_bytes=LAMBDA_MAX_BODY)
            _settings = replace(_settings, receiver=receiver)
            log.info("max_body_bytes lowered to Lambda's request limit", limit=LAMBDA_MAX_BODY)
        warn_if_sqlite(_settings)
    return _settings


def build_app(settings: Settings) -> Falhook:
    """The app of a function platform (Lambda, Cloud Functions): no worker of its own, the
    sinks run before the answer in inline mode, and the runtime lives as long as the
    instance (started by its first request, never by a per-invocation lifespan)."""
    from falhook.app import create_app

    return create_app(
        settings,
        run_worker=False,
        inline=settings.serverless.mode == "inline",
        managed_lifespan=False,
    )


def warn_if_sqlite(settings: Settings) -> None:
    if settings.sqlite_path() is not None:
        log.warning("serverless with SQLite: events live only as long as this instance")


def build_handler(settings: Settings) -> Any:
    from mangum import Mangum

    return Mangum(build_app(settings), lifespan="off", api_gateway_base_path="/")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda handler."""
    global _handler
    if _handler is None:
        _handler = build_handler(_load())
    answer: dict[str, Any] = _handler(event, context)
    return answer


def drain(event: dict[str, Any] | None = None, context: Any = None) -> dict[str, int]:
    """A scheduled function for enqueue mode: deliver what is due, within the invocation."""
    return asyncio.get_event_loop().run_until_complete(_drain(_load(), context))


async def _drain(settings: Settings, context: Any) -> dict[str, int]:
    from falhook.runtime import open_runtime

    attempted = 0
    async with open_runtime(settings, worker="on_demand") as runtime:
        assert runtime.worker is not None
        # Leave a margin before Lambda's own deadline; each batch is bounded by concurrency.
        while context is None or context.get_remaining_time_in_millis() > 30_000:
            done = await runtime.worker.run_once()
            attempted += done
            if done == 0 or context is None:
                break
    return {"attempted": attempted}
