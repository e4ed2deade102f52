"""Run the same events through every analytics backend: the Python fold, SQLite and a real Redis stream."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from edgeproxy.analytics.sources import collect_tallies
from edgeproxy.analytics.tallies import Event, Scope, Tallies, fold_events
from edgeproxy.store import EventRecord, open_store

BACKENDS = ("fold", "sqlite", "redis")


def store_events(url: str, events: Sequence[EventRecord]) -> None:
    """Append through the real store (its schema, indexes and stream format)."""

    async def fill() -> None:
        store = open_store(url)
        await store.start()
        try:
            for i in range(0, len(events), 2000):
                await store.append_events(list(events[i : i + 2000]))
        finally:
            await store.close()

    asyncio.run(fill())


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def tallies_via(
    backend: str, events: Sequence[EventRecord], scope: Scope, project: str, *, tmp: Path, redis_url: str | None
) -> Tallies:
    if backend == "fold":
        return fold_events(
            (
                Event(e.ts, e.user_uid, e.type, e.experience_short_uid, e.variant_short_uid, e.event_key)
                for e in events
                if e.project_uid == project
            ),
            scope,
        )
    if backend == "sqlite":
        path = tmp / f"state-{len(list(tmp.iterdir()))}.db"
        url = f"sqlite:///{path}"
    else:
        assert redis_url is not None
        flush_redis(redis_url)
        url = redis_url
    store_events(url, events)
    return collect_tallies(url, project, scope, daily=True)
