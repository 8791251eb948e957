"""infra/ is checked offline by linters, and each check is shown to fail on a broken copy.

- SAM: cfn-lint on the template (it knows the Serverless transform's resource types), then the
  template expanded by aws-sam-translator and linted as plain CloudFormation, where every
  Lambda, IAM and Function URL property is checked against AWS's schemas.
- Kubernetes: kubernetes-validate --strict (the API's JSON schemas, unknown fields rejected).
- Compose: check-jsonschema with its vendored compose-spec schema.
- Dockerfile: parsed here (no hadolint on PyPI): non-root USER, HEALTHCHECK on /healthz,
  `falhook serve` as entry point, a falhook-data volume, every COPY source present.
- The example falhook.toml files load with falhook's own config loader.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.unit.test_infra import COMPOSE


def compose_problems(path: Path) -> str | None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return None if result.returncode == 0 else result.stdout + result.stderr


def test_the_compose_file_matches_the_compose_spec() -> None:
    assert compose_problems(COMPOSE) is None


def test_a_broken_compose_file_fails_the_schema(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE.read_text()
    assert '    command: ["worker"]' in text
    broken.write_text(text.replace('    command: ["worker"]', '    comand: ["worker"]', 1))
    assert compose_problems(broken) is not None
