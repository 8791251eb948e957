"""The installed layout of the package, as links into the repository's folders.

pyproject.toml maps the import name `falhook` to receiver/ and `falhook.sinks` to handlers/
(setuptools' package-dir). Installed, that is one `falhook` folder; in the repository it is
two. Type checkers and import-linter read folders, not setuptools' editable-install hook, so
the suite builds the installed shape out of symlinks (.typecheck/falhook) and checks that.
`python -m tests.support.package_tree` prints where it is, e.g. for `mypy -p falhook` there.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / ".typecheck"


def package_dirs() -> dict[str, Path]:
    """Import name -> folder, from pyproject.toml's [tool.setuptools.package-dir]."""
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = doc["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


def build_tree(tree: Path = TREE) -> Path:
    """(Re)link `tree/<top>/...` so each mapped package sits where its import name says;
    returns `tree` (the folder to put on sys.path, or to run mypy in)."""
    dirs = package_dirs()
    for name in sorted(dirs, key=lambda n: n.count(".")):
        target = tree.joinpath(*name.split("."))
        if target.is_symlink():
            target.unlink()
        target.mkdir(parents=True, exist_ok=True)
        wanted = {entry.name: entry for entry in dirs[name].iterdir() if _kept(entry)}
        # Sub-packages mapped elsewhere get their own folder of links in a later round.
        wanted = {k: v for k, v in wanted.items() if f"{name}.{k}" not in dirs}
        for existing in target.iterdir():
            if existing.is_symlink() and existing.name not in wanted:
                existing.unlink()
        for entry_name, source in wanted.items():
            link = target / entry_name
            if link.is_symlink() and Path(os.readlink(link)) == source:
                continue
            if link.is_symlink():
                link.unlink()
            link.symlink_to(source)
    return tree


def _kept(entry: Path) -> bool:
    return entry.name != "__pycache__" and not entry.name.startswith(".")


if __name__ == "__main__":  # pragma: no cover - a developer's convenience
    print(build_tree())
