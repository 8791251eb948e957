"""Stores: where events and their deliveries live. Pick one by ``[store].url``; the roles
callers depend on are in ``falhook.store.roles``."""

from __future__ import annotations

from falhook.config import ConfigError, Settings
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
