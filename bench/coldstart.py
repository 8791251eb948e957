"""Cold start of the serverless entry points (AWS Lambda, Google Cloud Functions) and of the
app a container builds (Cloud Run, Modal), against Starlette alone and a bare interpreter.

Each case runs in a fresh interpreter (`python -c CODE`), the cases interleaved round by
round so that noise on this shared machine hits them alike. Reported: the median CPU time
(user + system) of the child, which load from other processes disturbs least, and the median
wall time. Cases:

- bare:       `pass` (the interpreter, site and the editable-install hook)
- starlette:  `import starlette.applications`
- import:     `import falhook.serverless` (what Lambda's init phase runs)
- ready:      the import, plus the config loaded and the handler built (app, sinks, store
              object, Mangum): all a cold start pays before its first request, short of the
              network (store connection, JWKS fetch). Two configs: `ready-disk` (SQLite and a
              disk sink, inline mode) and `ready-lambda` (infra/sam/falhook.toml: PostgreSQL,
              an S3 sink, enqueue mode; the drain function builds the sinks, not the receiver).
- functions-framework: `import functions_framework.aio` (what Cloud Functions loads first)
- ready-gcf:  `falhook.cloudfunctions` imported and its app built on the disk config, inline
              (functions-framework's own import included)
- ready-serve: the app `falhook serve` builds before it listens (store object, sinks, worker
              and all), on infra/cloudrun/falhook.toml (PostgreSQL, an S3 sink on Cloud
              Storage): a Cloud Run container's start, short of the network. Modal's
              container builds the same app (infra/modal/app.py's factory).

Ratios are given on the raw times and on the times minus the bare interpreter (what the
imports themselves cost). `--importtime CASE` prints the heaviest modules of one case
(`python -X importtime`, cumulative microseconds).

    .venv/bin/python bench/coldstart.py [--runs 15] [--importtime ready-lambda]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD = "import falhook.serverless as s; s._handler = s.build_handler(s._load())"
SERVE = (
    "import os; from falhook.app import create_app; from falhook.config import load_settings;"
    " create_app(load_settings(os.environ['FALHOOK_CONFIG']))"
)
CASES = {
    "bare": "pass",
    "starlette": "import starlette.applications",
    "import": "import falhook.serverless",
    "ready-disk": BUILD,
    "ready-lambda": BUILD,
    "functions-framework": "import functions_framework.aio",
    "ready-gcf": "import falhook.cloudfunctions as f; f._falhook()",
    "ready-serve": SERVE,
}

DISK_CONFIG = """
[store]
url = "sqlite:///data/events.db"
[serverless]
mode = "inline"
[sinks.local]
type = "disk"
root = "files"
[routes.default]
sinks = ["local"]
"""


def environments(tmp: Path) -> dict[str, dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FALHOOK_", "AWS_"))}
    disk = tmp / "disk.toml"
    disk.write_text(DISK_CONFIG)
    lambda_env = base | {
        "FALHOOK_CONFIG": str(ROOT / "infra" / "sam" / "falhook.toml"),
        "FALHOOK_MODE": "enqueue",
        "FALHOOK_DATABASE_URL": "postgresql://falhook@db.invalid:5432/falhook",
        "S3_BUCKET": "results",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    cloudrun_env = base | {
        "FALHOOK_CONFIG": str(ROOT / "infra" / "cloudrun" / "falhook.toml"),
        "FALHOOK_PUBLIC_URL": "https://falhook-x.a.run.app",
        "FALHOOK_DATABASE_URL": "postgresql://falhook@db.invalid:5432/falhook",
        "GCS_BUCKET": "results",
    }
    return {
        "bare": base,
        "starlette": base,
        "import": base,
        "ready-disk": base | {"FALHOOK_CONFIG": str(disk)},
        "ready-lambda": lambda_env,
        "functions-framework": base,
        "ready-gcf": base | {"FALHOOK_CONFIG": str(disk)},
        "ready-serve": cloudrun_env,
    }


def run_once(code: str, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def importtime(case: str, env: dict[str, str], cwd: Path, top: int = 25) -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", CASES[case]],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    rows = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.split("|")
            rows.append((int(cumulative), name.rstrip()))
    print(f"\nheaviest imports of {case!r} (cumulative ms):")
    for us, name in sorted(rows, reverse=True)[:top]:
        print(f"  {us / 1000:7.1f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--importtime", choices=sorted(CASES), action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        envs = environments(tmp)
        for case, code in CASES.items():  # warm the page cache and the .pyc files
            run_once(code, envs[case], tmp)
        walls: dict[str, list[float]] = {case: [] for case in CASES}
        cpus: dict[str, list[float]] = {case: [] for case in CASES}
        for _ in range(args.runs):
            for case, code in CASES.items():
                wall, cpu = run_once(code, envs[case], tmp)
                walls[case].append(wall)
                cpus[case].append(cpu)
        print(f"python {sys.version.split()[0]}, median of {args.runs} fresh interpreters")
        for title, samples in (("CPU time (user + system)", cpus), ("wall time", walls)):
            med = {case: statistics.median(ts) * 1000 for case, ts in samples.items()}
            bare, star = med["bare"], med["starlette"]
            print(f"\n{title}")
            print(f"{'case':<20}{'ms':>8}{'minus bare':>12}{'/ starlette':>13}{'net / net':>11}")
            for case, ms in med.items():
                net = ms - bare
                ratio_net = f"{net / (star - bare):11.2f}" if case != "bare" else f"{'-':>11}"
                print(f"{case:<20}{ms:8.1f}{net:12.1f}{ms / star:13.2f}{ratio_net}")
        for case in args.importtime:
            importtime(case, envs[case], tmp)


if __name__ == "__main__":
    main()
