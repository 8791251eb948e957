"""A real S3-protocol server on loopback for tests and benchmarks: moto's standalone server.

- `MotoServer`: in this process (moto's ThreadedMotoServer). `stop()` closes the listening
  socket (clients get "connection refused", as with a store that is down) and `start()` opens
  it again on the same port with the same buckets and objects: an outage and a recovery.
- `MotoProcess`: `moto_server` as a subprocess, so a benchmark measures only its own process.

Credentials are fake and go through the environment (`AWS_ENV`), as the standard AWS chain
reads them; `boto3_client()` gives a synchronous client for assertions, and `object_sha256()`
the SHA-256 of a stored object.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Any

import httpx

from tests.support.falhook_server import free_port, wait_for

BUCKET = "falhook-test"  # the bucket the `s3` fixture creates

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never read the developer's own AWS files.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _reachable(url: str) -> bool:
    try:
        return httpx.get(url + "/moto-api/", timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


class MotoServer:
    """moto in a thread of this process; restartable on the same port, state kept."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server
        wait_for(lambda: _reachable(self.url), timeout=30, what="moto to answer")
        return self

    @property
    def running(self) -> bool:
        return self._server is not None

    def reset(self) -> None:
        """Forget every bucket: moto's state is per process, shared by servers in it."""
        httpx.post(self.url + "/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            # ThreadedMotoServer leaves the socket listening: close it so the port refuses.
            if server._server is not None:
                server._server.server_close()

    def __enter__(self) -> MotoServer:
        self.start().reset()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MotoProcess:
    """`moto_server` as a child process (our own pid, stopped by that pid)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **AWS_ENV},
        )
        wait_for(self._up, timeout=30, what="moto_server to answer")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"moto_server exited with {self.proc.returncode}")
        return _reachable(self.url)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> MotoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def boto3_client(endpoint_url: str) -> Any:
    """A plain boto3 S3 client against the server, for setup and assertions."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


def object_sha256(s3: Any, key: str) -> str:
    """The SHA-256 of object `key` in BUCKET, read in 1 MiB chunks (objects of hundreds of MiB
    are never held in memory whole)."""
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()
