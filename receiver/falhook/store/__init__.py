"""Stores: where events and their deliveries live. Pick one by ``[store].url``; the roles
callers depend on are in ``falhook.store.roles``."""

from __future__ import annotations

from pathlib import Path

from falhook.config import CONFIG_ENV, ConfigError, Settings
from falhook.store.models import (
    DeliveryView,
    EventView,
    Finish,
    Job,
    LeasedDelivery,
    NewEvent,
    NewSubmission,
    StoreUnavailable,
    SubmissionView,
)
from falhook.store.roles import (
    DeliveryQueue,
    EventReader,
    IntakeStore,
    Store,
    StoreLifecycle,
    SubmissionStore,
)
from falhook.store.states import summarise_state

__all__ = [
    "DeliveryQueue",
    "DeliveryView",
    "EventReader",
    "EventView",
    "Finish",
    "IntakeStore",
    "Job",
    "LeasedDelivery",
    "NewEvent",
    "NewSubmission",
    "Store",
    "StoreLifecycle",
    "StoreUnavailable",
    "SubmissionStore",
    "SubmissionView",
    "make_store",
    "missing_store",
    "summarise_state",
]


def make_store(settings: Settings) -> Store:
    """The store named by the settings, not yet opened."""
    url = settings.store.url
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from falhook.store.postgres import PostgresStore
        except ImportError:
            raise ConfigError(
                "[store].url",
                "the PostgreSQL store needs the postgres extra: pip install 'falhook[postgres]'",
            ) from None
        return PostgresStore(url, schema=settings.store.schema)
    from falhook.store.sqlite import SQLiteStore

    path = settings.sqlite_path()
    assert path is not None  # config validation admits only these two schemes
    return SQLiteStore(path)


def missing_store(settings: Settings) -> str | None:
    """Why a command that only reads has nothing to read: the SQLite file `[store].url` names
    is not there (opening it would create an empty store where none was meant, e.g. in the
    wrong folder). None when it is there, or for PostgreSQL (whose schema any falhook process
    sharing the database makes)."""
    path = settings.sqlite_path()
    if path is None or path.exists():
        return None
    shown = _shown(path)
    if settings.source == "embedded defaults":
        return (
            f"no store found: {shown} does not exist (no --config given and {CONFIG_ENV} not "
            "set, so the embedded defaults were used); run this in the folder `falhook serve` "
            f"runs in, or name its config with --config PATH or {CONFIG_ENV}=PATH"
        )
    return (
        f"no store found: {shown} ([store].url of {settings.source}) does not exist; "
        "`falhook serve` with this config makes it. If another config was meant, name it "
        f"with --config PATH or {CONFIG_ENV}=PATH"
    )


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
