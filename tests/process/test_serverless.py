"""The Lambda entry point, driven with real Lambda event shapes: Function URL and API Gateway
HTTP API (payload format 2.0) events, as AWS documents them, bodies plain or base64-encoded.

Secrets come from moto's standalone server over the real SSM protocol (botocore, SigV4, an
endpoint override); the enqueue-mode store is the machine's PostgreSQL, in a database of this
module's own that is dropped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from falhook import serverless
from falhook.testing import JWKSServer
from tests.support.falhook_server import base_config, to_toml
from tests.support.paths import ROOT

# --- events ------------------------------------------------------------------------------------


def test_the_cold_start_imports_nothing_a_webhook_does_not_need(
    tmp_path: Path, jwks: JWKSServer
) -> None:
    """Without FALHOOK_SSM_PARAMETERS nothing of AWS's SDK is imported, and asyncpg only for a
    PostgreSQL store (this one is SQLite)."""
    config = tmp_path / "lambda.toml"
    config.write_text(to_toml(base_config(tmp_path, jwks.url)))
    env = {k: v for k, v in os.environ.items() if k != serverless.SSM_PARAMETERS_ENV}
    code = (
        "import sys\n"
        "from falhook import serverless\n"
        "serverless._handler = serverless.build_handler(serverless._load())\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "wanted = ('botocore', 'boto3', 'aiobotocore', 'asyncpg', 'mangum')\n"
        "print(sorted(roots.intersection(wanted)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env | {"FALHOOK_CONFIG": str(config)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "['mangum']"
