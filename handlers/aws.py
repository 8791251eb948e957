"""botocore's errors in the worker's two kinds, for the AWS sinks (s3, sqs)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from falhook.sinks.base import Permanent, Retryable


def classify(
    exc: BaseException, where: str, hints: Mapping[str, str], retryable: Collection[str]
) -> Retryable | Permanent:
    """`where` names the target (``s3 bucket 'x'``); `hints` explain codes retrying will not
    fix; `retryable` are codes to retry besides 5xx, 408 and 429."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        detail = hints.get(code) or err.get("Message") or code or "error"
        message = f"{where}: {code or status} ({detail})"
        if code in retryable or status >= 500 or status in (408, 429):
            return Retryable(message)
        return Permanent(message)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return Permanent(f"{where}: no usable AWS credentials in the standard chain")
    if isinstance(exc, bx.ParamValidationError):
        return Permanent(f"{where}: {exc}")
    # Connection refused/reset, timeouts, a spool read error: transient.
    return Retryable(f"{where}: {type(exc).__name__}: {exc}")
