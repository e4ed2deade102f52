"""Tallies from the PostgreSQL event store (store/postgres_events.py), aggregated in SQL, read-only.

The semantics are analytics/tallies.py's, in PostgreSQL's dialect of the SQL that sqlite_source.py runs on
SQLite; tests run both on the same events and compare the reports. Everything is read in one REPEATABLE READ
snapshot, so events the drain inserts meanwhile are either wholly in the report or wholly not.

- impressions: the first-seen time of each (user, experience, variant) in scope, counted per (experience,
  variant) and per UTC day of the first-seen time (the dashboard's charts: they cost nothing more here); the
  earliest first-seen per experience comes with it. The first-seen times are the store's `edgeproxy_first_seen`
  rows (one per unique impression, read by a parallel scan); within a window, those before it are replaced by
  the first impression inside it, grouped from the window's impressions of those (user, variant) only;
- conversions: the metric events joined (by hash) to the first-seen times of their experiences, then DISTINCT ON
  picks, per (user, experience, key), the earliest conversion that follows a first-seen impression by at most
  30 days, credited to the latest such impression (ties: the variant that sorts last).

A report window [since, until) filters on `ts` and, redundantly, on the partition key `day`, so only the day
partitions it covers are read.
"""

from __future__ import annotations

from typing import Any

import psycopg

from edgeproxy.analytics.sqlite_source import AnalyticsError
from edgeproxy.analytics.tallies import CONVERSION_WINDOW_SECONDS, DAY, Scope, Tallies
from edgeproxy.store.events_url import shown_url
from edgeproxy.store.postgres_events import CHANGES, FIRST_SEEN, TABLE, connect_sync, day_of_event

# Per-statement settings of the report's transaction. Sorts and hashes of a few million first-seen rows stay in
# memory. The planner underestimates the conversions joined to first-seen times (a range condition): left
# alone it picks index lookups per converting user in every day partition (nested loops) and sorts to group
# their result; hashes are the better plan at every size we measured, and JIT compilation costs more than it saves.
REPORT_SETTINGS = {
    "work_mem": "256MB",
    "hash_mem_multiplier": "2",
    "jit": "off",
    "enable_nestloop": "off",
    "enable_sort": "off",  # only where a hash can do (DISTINCT ON still sorts)
}


def _window(scope: Scope, alias: str = "") -> tuple[str, dict[str, Any]]:
    """The window [since, until) on `ts`, and redundantly on the partition key `day` (partition pruning)."""
    sql, params = "", dict[str, Any]()
    if scope.since is not None:
        sql += f" AND {alias}ts >= %(since)s AND {alias}day >= %(since_day)s"
        params.update(since=scope.since, since_day=day_of_event(scope.since))
    if scope.until is not None:
        sql += f" AND {alias}ts < %(until)s AND {alias}day <= %(until_day)s"
        params.update(until=scope.until, until_day=day_of_event(scope.until))
    return sql, params


def _first_seen(experiences_param: str, scope: Scope) -> str:
    """(user, experience, variant) -> first-seen time `t` and its day `d`, of the impressions in scope.

    The store keeps every first-seen time (`edgeproxy_first_seen`, maintained by every insert). Within a window
    [since, until), a first-seen time inside it is also the first impression inside it; one after it has no
    impression inside it; only those before it need the window's impressions grouped, and only theirs."""
    stored = (
        f"SELECT user_uid AS u, experience_short_uid AS e, variant_short_uid AS v, ts AS t, day AS d FROM {FIRST_SEEN}"
        f" WHERE project_uid = %(p)s AND experience_short_uid = ANY(%({experiences_param})s)"
    )
    if scope.since is not None:
        stored += " AND ts >= %(since)s"
    if scope.until is not None:
        stored += " AND ts < %(until)s"
    if scope.since is None:
        return stored
    window_sql, _ = _window(scope, "i.")
    earlier = (
        f"SELECT i.user_uid, i.experience_short_uid, i.variant_short_uid, min(i.ts), trunc(min(i.ts) / {DAY})::integer"
        f" FROM {TABLE} AS i JOIN {FIRST_SEEN} AS f ON f.user_uid = i.user_uid AND f.project_uid = i.project_uid"
        f" AND f.experience_short_uid = i.experience_short_uid AND f.variant_short_uid = i.variant_short_uid"
        f" WHERE i.project_uid = %(p)s AND i.type = 'IMPRESSION' AND i.variant_short_uid IS NOT NULL"
        f" AND i.experience_short_uid = ANY(%({experiences_param})s){window_sql} AND f.ts < %(since)s"
        f" GROUP BY i.experience_short_uid, i.variant_short_uid, i.user_uid"
    )
    return f"{stored} UNION ALL {earlier}"


def postgres_tallies(url: str, project_uid: str, scope: Scope, *, daily: bool = False) -> Tallies:
    """Aggregate the events of `project_uid` in `scope`; `daily` adds per-day impression buckets."""
    tallies = Tallies(daily_impressions={} if daily else None)
    experiences = sorted(scope.experiences)
    if not experiences:
        return tallies
    try:
        connection = connect_sync(url)
    except psycopg.Error as exc:
        raise AnalyticsError(
            f"cannot connect to the PostgreSQL event store {shown_url(url)}: {_first_line(exc)}"
        ) from exc
    try:
        with connection:
            connection.autocommit = False
            connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            connection.read_only = True
            with connection.transaction():
                exists = connection.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
                if not exists or not exists[0]:
                    raise AnalyticsError(
                        f"{shown_url(url)} has no {TABLE} table: no edgeproxy events were stored in this database "
                        "(give the URL of the proxy's `events` setting)"
                    )
                for name, value in REPORT_SETTINGS.items():
                    connection.execute("SELECT set_config(%s, %s, true)", (name, value))
                window_sql, window_params = _window(scope)
                params = {"p": project_uid, "experiences": experiences, **window_params}
                _impressions(connection, params, scope, tallies)
                _conversions(connection, params, window_sql, scope, tallies)
    except psycopg.Error as exc:
        raise AnalyticsError(f"cannot aggregate events in {shown_url(url)}: {_first_line(exc)}") from exc
    return tallies


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _impressions(connection: psycopg.Connection[Any], params: dict[str, Any], scope: Scope, out: Tallies) -> None:
    rows = connection.execute(
        f"SELECT e, v, d, count(*), min(t) FROM ({_first_seen('experiences', scope)}) AS fs GROUP BY 1, 2, 3",
        params,
    ).fetchall()
    daily = out.daily_impressions
    for e, v, d, n, t in rows:
        if daily is not None:
            daily[(e, v, int(d))] = int(n)
        out.impressions[(e, v)] = out.impressions.get((e, v), 0) + int(n)
        if e not in out.first_impression or t < out.first_impression[e]:
            out.first_impression[e] = float(t)


_CONVERSION_WHERE = "project_uid = %(p)s AND type = 'EVENT' AND event_key = ANY(%(keys)s)"


def _conversions(
    connection: psycopg.Connection[Any], params: dict[str, Any], window_sql: str, scope: Scope, out: Tallies
) -> None:
    pairs = sorted({(e, k) for e, keys in scope.metrics.items() for k in keys})
    if not pairs:
        return
    # Within a window the first-seen times are a union the planner cannot size: it would join them to the metric
    # list first (rows multiplied by the keys per experience). The conversions, computed first (a fence), are the
    # smaller side to join them to. Without a window the plain plan joins them in parallel workers.
    fence = "" if scope.since is None and scope.until is None else "MATERIALIZED "
    rows = connection.execute(
        f"WITH metric AS (SELECT * FROM unnest(%(metric_e)s::text[], %(metric_k)s::text[]) AS m(e, k)),"
        f" cv AS {fence}(SELECT c.user_uid AS u, m.e AS e, c.event_key AS k, c.ts AS t"
        f"  FROM {TABLE} AS c JOIN metric AS m ON m.k = c.event_key WHERE {_CONVERSION_WHERE}{window_sql}),"
        f" fs AS ({_first_seen('metric_experiences', scope)}),"
        # Per (user, experience, key): the earliest conversion within 30 days after a first-seen impression,
        # credited to the latest such impression (ties: the variant that sorts last).
        f" credited AS (SELECT DISTINCT ON (c.u, c.e, c.k) c.e AS e, f.v AS v, c.k AS k, c.t AS ct"
        f"  FROM cv AS c JOIN fs AS f ON f.u = c.u AND f.e = c.e"
        f"  WHERE f.t <= c.t AND c.t - f.t <= %(window)s ORDER BY c.u, c.e, c.k, c.t, f.t DESC, f.v DESC)"
        f" SELECT e, v, k, trunc(ct / {DAY})::bigint, count(*) FROM credited GROUP BY 1, 2, 3, 4",
        {
            **params,
            "metric_e": [e for e, _ in pairs],
            "metric_k": [k for _, k in pairs],
            "keys": sorted({k for _, k in pairs}),
            "metric_experiences": sorted({e for e, _ in pairs}),
            "window": CONVERSION_WINDOW_SECONDS,
        },
    ).fetchall()
    out.daily_conversions.update({(e, v, k, int(d)): int(n) for e, v, k, d, n in rows})


def postgres_last_change(url: str, project_uid: str) -> str | None:
    """A cheap value that changes when events are inserted or removed (any project: the store's change counter,
    advanced after each committed insert, deletion or purge); None when nothing was ever stored."""
    try:
        with connect_sync(url) as connection:
            row = connection.execute(f"SELECT last_value, is_called FROM {CHANGES}").fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    except psycopg.Error as exc:
        raise AnalyticsError(f"cannot read the PostgreSQL event store {shown_url(url)}: {_first_line(exc)}") from exc
    if row is None or not row[1]:
        return None
    return str(row[0])
