"""Store backends the semantic suite (tests/test_store.py) runs against."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from receiver.store.base import Store
from receiver.store.sqlite import SQLiteStore

STORE_BACKENDS: list[str] = ["sqlite"]


def make_backend(name: str, tmp_path: Path) -> Store:
    """A store of this backend; the same arguments give a store on the same data."""
    if name == "sqlite":
        return SQLiteStore(tmp_path / "store.db")
    raise ValueError(name)


@asynccontextmanager
async def open_backend(name: str, tmp_path: Path) -> AsyncIterator[Store]:
    store = make_backend(name, tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
