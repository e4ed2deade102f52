"""User attributes and events: SQLite (embedded default) or Redis (several instances)."""

from edgeproxy.store.base import (
    AttributeLimits,
    EventRecord,
    StateStore,
    StoreError,
    StoreLimitError,
)
from edgeproxy.store.opener import open_store

__all__ = ["AttributeLimits", "EventRecord", "StateStore", "StoreError", "StoreLimitError", "open_store"]
