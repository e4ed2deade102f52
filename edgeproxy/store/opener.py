"""Open the state store a URL names: SQLite (embedded default) or Redis."""

from __future__ import annotations

from edgeproxy.clock import Clock, system_clock
from edgeproxy.store.base import AttributeLimits, StateStore, state_url_problem
from edgeproxy.store.redis_store import RedisStore
from edgeproxy.store.sqlite_store import SqliteStore


def open_store(
    url: str, limits: AttributeLimits | None = None, clock: Clock = system_clock, events_buffer_max: int = 0
) -> StateStore:
    """`sqlite:///path/to/file.db` (or a bare path) or `redis://host:port/db`; ValueError for anything else.
    `events_buffer_max` > 0 (Redis, draining into an event store): the cap of each project's event stream."""
    limits = limits or AttributeLimits()
    problem = state_url_problem(url)
    if problem:
        raise ValueError(f"state URL {problem}")
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, limits, events_buffer_max)
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    return SqliteStore(path, limits, clock=clock)
