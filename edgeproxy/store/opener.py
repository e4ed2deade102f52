"""Open the state store a URL names: SQLite (embedded default) or Redis."""

from __future__ import annotations

from edgeproxy.clock import Clock, system_clock
from edgeproxy.store.base import AttributeLimits, StateStore, state_url_problem
from edgeproxy.store.redis_store import RedisStore
from edgeproxy.store.sqlite_store import SqliteStore


def open_store(url: str, limits: AttributeLimits | None = None, clock: Clock = system_clock) -> StateStore:
    """`sqlite:///path/to/file.db` (or a bare path) or `redis://host:port/db`; ValueError for anything else."""
    limits = limits or AttributeLimits()
    problem = state_url_problem(url)
    if problem:
        raise ValueError(f"state URL {problem}")
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, limits)
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    return SqliteStore(path, limits, clock=clock)
