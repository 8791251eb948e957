"""What the AWS sinks (s3, sqs) share: one boto3 client called from the sink's own threads,
and botocore's errors in the worker's two kinds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from falhook_sinks.base import Permanent, Retryable

T = TypeVar("T")


class ThreadedClient:
    """A boto3 client made once, on first use, in one of `threads` pool threads (making one
    costs about 0.1 s of CPU), and those threads, in which every call runs: signing,
    checksums and socket writes stay off the event loop. botocore clients are thread-safe;
    one serves every event loop and thread. `config` goes to botocore's Config; the worker
    owns retries, so botocore makes one quick retry at most (after a stale pooled
    connection)."""

    def __init__(
        self,
        service: str,
        thread_name: str,
        *,
        threads: int,
        profile: str | None,
        region: str | None,
        endpoint_url: str | None,
        connect_timeout: float,
        read_timeout: float,
        **config: Any,
    ) -> None:
        self.service, self.thread_name, self.threads = service, thread_name, threads
        self.profile, self.region, self.endpoint_url = profile, region, endpoint_url
        self.config = {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "max_pool_connections": threads,
            "retries": {"mode": "standard", "total_max_attempts": 2},
            **config,
        }
        self._client: Any = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                session = boto3.session.Session(profile_name=self.profile or None)
                self._client = session.client(
                    self.service,
                    region_name=self.region,
                    endpoint_url=self.endpoint_url or None,
                    config=Config(**self.config),
                )
            return self._client

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """fn(client, *args, **kwargs) in one of the threads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self.thread_name)
        return self._pool.submit(lambda: fn(self.client(), *args, **kwargs))

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def close(self) -> None:
        """Queued calls are dropped; a call already in a thread ends within read_timeout."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        client, self._client = self._client, None
        if client is not None:
            client.close()


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
