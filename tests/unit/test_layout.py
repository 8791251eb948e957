"""The package's shape: each folder is its import path, layered stages without cycles (the
check can fail), short functions, and a wheel that installs `falhook` and `falhook_sinks`
only. mypy and import-linter themselves run as steps of .ci/run, on the checkout as it is."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from tests.support.paths import ROOT

SOURCE_ROOTS = {"falhook": ROOT / "receiver", "falhook_sinks": ROOT / "handlers"}
MAX_FUNCTION_LINES = 60
LONG_REASON = "# long:"  # on the def line or the line above: why this function stays long


def product_modules() -> dict[str, Path]:
    """Import name -> file, read off the folders: receiver/falhook/intake/keys.py is
    falhook.intake.keys."""
    found = {}
    for package, root in SOURCE_ROOTS.items():
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def test_every_module_is_imported_from_the_file_its_name_says() -> None:
    """The editable install adds the two source roots to sys.path and nothing else: what an
    editor or a type checker reads is what Python imports."""
    modules = product_modules()
    assert {"falhook", "falhook.sinks", "falhook.intake.keys", "falhook_sinks.disk"} <= set(modules)
    wrong = {}
    for name, path in modules.items():
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or Path(spec.origin).resolve() != path:
            wrong[name] = spec.origin if spec else None
    assert wrong == {}


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
    for path in product_modules().values():
        for name, length in long_functions(path.read_text()):
            offenders.append(f"{path.relative_to(ROOT)}: {name} ({length} lines)")
    assert offenders == []


def test_the_old_submodule_imports_still_work_with_a_warning() -> None:
    """0.2's documented `falhook.sinks.base` / `.python` / `.options` imports keep working
    until 0.4, each with a DeprecationWarning naming the new import."""
    from falhook.sinks import base, options, python

    with pytest.warns(DeprecationWarning, match="import it from falhook.sinks"):
        assert base.on_disk is importlib.import_module("falhook_sinks.base").on_disk
    with pytest.warns(DeprecationWarning):
        assert python.as_sink_factory is not None
    with pytest.warns(DeprecationWarning):
        assert options.SinkOptions is not None
