"""The emulator answers like fal where clients notice: https with a CA it makes, the URLs it
hands out (public URL, proxies' X-Forwarded-*), IN_QUEUE on submit, logs when asked, and
namespaced app ids."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.falhook_server import free_port, wait_for


def test_falhook_emulate_tls_prints_the_ca_to_trust(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "emulate.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "falhook.cli", "emulate", "--tls", "--port", str(port)],
            cwd=tmp_path, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        ca = tmp_path / "falhook-emulator-tls" / "ca.pem"

        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                trusted = ssl.create_default_context(cafile=str(ca))
                url = f"https://127.0.0.1:{port}/.well-known/jwks.json"
                return httpx.get(url, verify=trusted, timeout=1).is_success
            except (httpx.HTTPError, OSError, ssl.SSLError):
                return False

        wait_for(up, timeout=30, what="falhook emulate --tls to answer")
        banner = log_path.read_text()
        assert f"export SSL_CERT_FILE={ca}" in banner
        assert f'queue_url = "https://127.0.0.1:{port}"' in banner
        assert f"FAL_QUEUE_RUN_HOST=127.0.0.1:{port}" in banner
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
