"""Store backends the semantic suite (tests/test_store.py) runs against.

Adding a backend: give it a name in STORE_BACKENDS and a branch in make_backend. The same
(name, tmp_path) must give a store on the same data, so that reopen_backend sees what an
earlier open_backend wrote (the durability test) and two stores can share it (the
multi-process leasing test); a different tmp_path must give an empty store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from receiver.store.base import Store
from receiver.store.sqlite import SQLiteStore

STORE_BACKENDS: list[str] = ["sqlite"]


def make_backend(name: str, tmp_path: Path) -> Store:
    """A store of this backend, not yet opened; same arguments, same data."""
    if name == "sqlite":
        return SQLiteStore(tmp_path / "store.db")
    raise ValueError(f"unknown store backend {name!r}")


@asynccontextmanager
async def open_backend(name: str, tmp_path: Path) -> AsyncIterator[Store]:
    """Open a store for this test, yield it, close it."""
    store = make_backend(name, tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def reopen_backend(name: str, tmp_path: Path) -> AsyncIterator[Store]:
    """Another store on the data open_backend(name, tmp_path) used: a restart, or a second
    process (`falhook serve` beside `falhook worker`)."""
    async with open_backend(name, tmp_path) as store:
        yield store
