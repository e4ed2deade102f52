"""Open the forwarding outbox where the state store is: the same SQLite file, or the same Redis."""

from __future__ import annotations

from edgeproxy.forward.outbox import Outbox, SqliteOutbox
from edgeproxy.forward.redis_outbox import RedisOutbox


def open_outbox(state_url: str) -> Outbox:
    """The outbox where the state store is (`state`): the same SQLite file, or the same Redis."""
    if state_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisOutbox(state_url)
    return SqliteOutbox(state_url[len("sqlite:///") :] if state_url.startswith("sqlite:///") else state_url)
