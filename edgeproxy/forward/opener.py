"""Open the forwarding outbox where the state store is: the same SQLite file, or the same Redis."""

from __future__ import annotations

from edgeproxy.forward.outbox import Outbox, SqliteOutbox
from edgeproxy.forward.redis_outbox import RedisOutbox


def open_outbox(state_url: str, max_items: int = 0) -> Outbox:
    """The outbox where the state store is (`state`): the same SQLite file, or the same Redis. `max_items` > 0: the
    Redis outbox checks that bound with each append, atomically across a fleet (the forwarder checks its own
    estimate first, in every case)."""
    if state_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisOutbox(state_url, max_items=max_items)
    return SqliteOutbox(state_url[len("sqlite:///") :] if state_url.startswith("sqlite:///") else state_url)
