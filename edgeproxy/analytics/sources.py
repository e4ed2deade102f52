"""Where the events are: the `state` URL the proxy writes to (SQLite file or Redis), or the `events` URL of a
fleet's durable event store (PostgreSQL), read without the store."""

from __future__ import annotations

from edgeproxy.analytics.sqlite_source import AnalyticsError, sqlite_path, sqlite_tallies
from edgeproxy.analytics.tallies import Scope, Tallies
from edgeproxy.store.events_url import is_postgres

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis(url: str) -> bool:
    return url.startswith(REDIS_SCHEMES)


def collect_tallies(
    state_url: str, project_uid: str, scope: Scope, *, daily: bool = False, in_server: bool = False
) -> Tallies:
    """Tallies of `project_uid` from the events at `state_url` (a state store, or a PostgreSQL event store);
    `daily` adds per-day impression buckets; `in_server`: inside the long-running proxy, keep memory bounded
    (see connect_read_only)."""
    if is_postgres(state_url):
        from edgeproxy.analytics.postgres_source import postgres_tallies

        return postgres_tallies(state_url, project_uid, scope, daily=daily)
    if is_redis(state_url):
        from edgeproxy.analytics.redis_source import redis_tallies

        return redis_tallies(state_url, project_uid, scope)  # always has the daily buckets
    return sqlite_tallies(sqlite_path(state_url), project_uid, scope, daily=daily, fast=not in_server)


def redact(url: str) -> str:
    """The state URL without a password, for reports and pages (redis://:secret@host -> redis://***@host)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def change_marker(state_url: str, project_uid: str) -> str | None:
    """A cheap value that changes when events are appended (newest row id / stream entry id / PostgreSQL's
    insert and delete counters)."""
    if is_postgres(state_url):
        from edgeproxy.analytics.postgres_source import postgres_last_change

        return postgres_last_change(state_url, project_uid)
    if is_redis(state_url):
        from edgeproxy.analytics.redis_source import redis_last_id

        return redis_last_id(state_url, project_uid)
    from edgeproxy.analytics.sqlite_source import connect_read_only

    db = connect_read_only(sqlite_path(state_url))
    try:
        row = db.execute("SELECT max(id) FROM events").fetchone()
    finally:
        db.close()
    return None if row[0] is None else str(row[0])


__all__ = ["AnalyticsError", "change_marker", "collect_tallies", "is_redis", "redact"]
