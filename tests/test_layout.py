"""The package's shape: one import name, layered stages without cycles, strict types, short
functions. Checked on the installed layout (tests/support/package_tree.py)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.package_tree import ROOT, build_tree, package_dirs

MAX_FUNCTION_LINES = 60
LONG_REASON = "# long:"  # on the def line or the line above: why this function stays long


def tool(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_mypy_strict_is_clean_on_the_product_code() -> None:
    tree = build_tree()
    done = run(
        tool("mypy"), "--config-file", str(ROOT / "pyproject.toml"), "-p", "falhook", cwd=tree
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_stages_are_layered_without_import_cycles() -> None:
    """import-linter's contracts in pyproject.toml: the layers of the stages, and no cycle
    between sibling packages or modules at any depth."""
    tree = build_tree()
    done = run(
        tool("lint-imports"),
        "--config",
        str(ROOT / "pyproject.toml"),
        cwd=tree,
        env={"PYTHONPATH": str(tree)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_layer_violation_is_caught(tmp_path: Path) -> None:
    """The contract check can fail: a sink importing the config breaks the layers."""
    tree = build_tree(tmp_path / "tree")
    sinks = tree / "falhook" / "sinks"
    (sinks / "base.py").unlink()
    (sinks / "base.py").write_text(
        (package_dirs()["falhook.sinks"] / "base.py").read_text()
        + "\nfrom falhook.config import Settings  # noqa\n"
    )
    done = run(
        tool("lint-imports"),
        "--config",
        str(ROOT / "pyproject.toml"),
        cwd=tree,
        env={"PYTHONPATH": str(tree)},
    )
    assert done.returncode != 0
    assert "falhook.sinks.base -> falhook.config" in done.stdout


def long_functions(source: str) -> list[tuple[str, int]]:
    """(name, lines) of functions over MAX_FUNCTION_LINES without a `# long:` reason."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - start + 1
            nearby = lines[max(0, start - 2) : node.lineno]
            if length > MAX_FUNCTION_LINES and not any(LONG_REASON in line for line in nearby):
                found.append((node.name, length))
    return found


def test_long_functions_are_found() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    assert long_functions(f"def f():\n{body}\n") == [("f", 62)]
    assert long_functions(f"# long: a table\ndef f():\n{body}\n") == []


def test_no_product_function_is_over_60_lines_without_a_reason() -> None:
    offenders = []
    for folder in package_dirs().values():
        for path in sorted(folder.rglob("*.py")):
            for name, length in long_functions(path.read_text()):
                offenders.append(f"{path.relative_to(ROOT)}: {name} ({length} lines)")
    assert offenders == []


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


def test_the_wheel_installs_falhook_and_nothing_else_at_the_top(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"falhook"}
    assert "falhook/py.typed" in names
    assert "falhook/sinks/base.py" in names and "falhook/intake/endpoint.py" in names
    assert {"falhook/console/templates/base.html", "falhook/console/static/console.js"} <= set(
        names
    )  # the console's assets ship in the package
    assert not any(n.startswith(("receiver/", "handlers/")) for n in names)


def test_falhook_imports_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = run(
        sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
        str(wheel), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # bin/ holds the `falhook` script (it goes to the environment's bin/, not site-packages).
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert installed == {"falhook", "bin"}
    probe = (
        "import falhook, falhook.sinks, falhook.serverless, falhook.testing, falhook.fal.ray;"
        "from falhook.sinks import Sink, DeliveryContext, LocalFile, Retryable, Permanent;"
        "print(falhook.__file__, falhook.sinks.__file__)"
    )
    # The wheel's copy comes first on the path; dependencies come from this environment.
    done = run(sys.executable, "-c", probe, cwd=tmp_path, env={"PYTHONPATH": str(target)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == [
        str(target / "falhook" / "__init__.py"),
        str(target / "falhook" / "sinks" / "__init__.py"),
    ]
