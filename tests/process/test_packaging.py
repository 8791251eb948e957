"""The package's shape: each folder is its import path, layered stages without cycles (the
check can fail), short functions, and a wheel that installs `falhook` and `falhook_sinks`
only. mypy and import-linter themselves run as steps of .ci/run, on the checkout as it is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.unit.test_layout import SOURCE_ROOTS


def tool(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_a_layer_violation_is_caught(tmp_path: Path) -> None:
    """The contracts in pyproject.toml can fail: a sink importing the config breaks them."""
    for package, root in SOURCE_ROOTS.items():
        shutil.copytree(
            root / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    base = tmp_path / "falhook_sinks" / "base.py"
    base.write_text(base.read_text() + "\nfrom falhook.config import Settings  # noqa\n")
    done = run(
        tool("lint-imports"),
        "--config",
        str(ROOT / "pyproject.toml"),
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode != 0
    assert "falhook_sinks.base -> falhook.config" in done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT),
        cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [built] = out.glob("falhook-*.whl")
    return built


def test_the_wheel_installs_falhook_and_its_sinks_and_nothing_else_at_the_top(
    wheel: Path,
) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(
            zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"falhook", "falhook_sinks"}
    assert {"falhook/py.typed", "falhook_sinks/py.typed"} <= set(names)
    assert "falhook_sinks/base.py" in names and "falhook/intake/endpoint.py" in names
    assert {"falhook/console/templates/base.html", "falhook/console/static/console.js"} <= set(
        names
    )  # the console's assets ship in the package
    assert "falhook/fal/samples/clip.mp4" in names  # the emulator's video, for the quick start
    assert not any(n.startswith(("receiver/", "handlers/", "tests/")) for n in names)
    # The built-in sinks are registered exactly as a user's package registers its own.
    assert "disk = falhook_sinks.disk:DiskSink" in entry_points


def test_falhook_imports_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = run(
        sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
        str(wheel), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # bin/ holds the `falhook` script (it goes to the environment's bin/, not site-packages).
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert installed == {"falhook", "falhook_sinks", "bin"}
    probe = (
        "import falhook, falhook.sinks, falhook.serverless, falhook.testing, falhook.fal.ray;"
        "from falhook.sinks import Sink, DeliveryContext, LocalFile, Retryable, Permanent;"
        "import falhook_sinks.disk;"
        "print(falhook.__file__, falhook.sinks.__file__, falhook_sinks.disk.__file__)"
    )
    # The wheel's copy comes first on the path; dependencies come from this environment.
    done = run(sys.executable, "-c", probe, cwd=tmp_path, env={"PYTHONPATH": str(target)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == [
        str(target / "falhook" / "__init__.py"),
        str(target / "falhook" / "sinks" / "__init__.py"),
        str(target / "falhook_sinks" / "disk.py"),
    ]
