#!/usr/bin/env bash
# Builds the Lambda package into infra/sam/build/ (the template's CodeUri): falhook with the
# lambda, postgres and s3 extras as Linux arm64 wheels, plus the bundled falhook.toml.
# Run from anywhere; then: sam deploy --guided -t infra/sam/template.yaml
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/build"
rm -rf "$out"
mkdir -p "$out"
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
# falhook itself is pure Python: build its wheel here, then take every dependency as a
# binary wheel for Lambda's platform (never compiled for this machine's).
python3 -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$root"
wheel="$(ls "$wheels"/falhook-*.whl)"
python3 -m pip install --quiet --target "$out" \
  --platform manylinux2014_aarch64 --implementation cp --python-version 3.11 \
  --only-binary=:all: "falhook[lambda,postgres,s3] @ file://$wheel"
cp "$here/falhook.toml" "$out/falhook.toml"
echo "built $out"
