"""Downloads against a real loopback file server: streamed, hashed, checked, classified."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from falhook.downloads.fetch import FetchRetryable
from falhook.intake.envelope import FileRef
from tests.inprocess.test_fetch import LOOPBACK_ONLY, CountingResolver, fetcher
from tests.support.fileserver import FileServer


@pytest.fixture
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FileServer, Path]]:
    """An HTTPS file server whose (self-signed) certificate names files.test only."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=files.test", "-addext", "subjectAltName=DNS:files.test"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with FileServer(certfile=str(cert), keyfile=str(key)) as s:
        yield s, cert


async def test_tls_is_verified_against_the_host_name_not_the_address(
    tls_server: tuple[FileServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted as the only CA
    server.add("/v", data=b"over tls")
    names = {"files.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    f = fetcher(allow_private_hosts=False, guard=LOOPBACK_ONLY, resolver=CountingResolver(names))
    got = await f.fetch(FileRef("v", server.url("/v", host="files.test")), tmp_path)
    assert got.local_path.read_bytes() == b"over tls"
    # Same address, another name: the certificate does not cover it, so no download.
    with pytest.raises(FetchRetryable, match="certificate"):
        await f.fetch(FileRef("v", server.url("/v", host="other.test")), tmp_path)
    await f.aclose()
    assert server.hits("/v") == 1
