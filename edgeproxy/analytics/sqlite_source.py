"""Tallies from the SQLite state file, aggregated in SQL (GROUP BY, window functions), read-only.

The store's `events` table and its indexes (edgeproxy/store/sqlite_store.py) are read through a separate
read-only connection (`mode=ro`), so a report never blocks the proxy's writer. Two connections run in parallel
threads (sqlite3 releases the GIL while a statement runs), both bounded by the same `max(id)` so they read the
same events even while the proxy appends:

- impressions: unique users per (experience, variant) with `count(DISTINCT user_uid)` straight off the
  `events_impressions` index (no table reads) when there is no time window; the first impression per
  experience from the start of the `events_ts` index (a full scan only for experiences that start late);
- conversions: the metric events into a temp table, the first-seen impressions of only the users who converted
  (index seeks), then one window function picks, per (user, experience, key), the earliest conversion that
  follows a first-seen impression by at most 30 days, credited to the latest such impression.

Daily impression buckets (the dashboard's charts) need every impression's time, which the index does not hold:
they cost one grouped pass over all impressions and are computed only when asked for.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edgeproxy.analytics.tallies import CONVERSION_WINDOW_SECONDS, DAY, Scope, Tallies

T = TypeVar("T")


class AnalyticsError(Exception):
    """The events cannot be read (missing file, not an edgeproxy state, backend down); the message says why."""


def sqlite_path(url: str) -> str:
    """`sqlite:///path` (relative) / `sqlite:////abs/path` / a bare path -> the file path (as open_store)."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    if url.startswith("sqlite://"):
        raise AnalyticsError(f"state URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return url


def connect_read_only(path: str, *, fast: bool = False) -> sqlite3.Connection:
    """A read-only connection with the file memory-mapped (its pages count in the process's RSS until the
    connection closes). `fast` also sorts in memory (~350 MB for 10M events, which the allocator may keep):
    right for the CLI; without it (inside the proxy) sorts spill to temporary files and the process returns to
    its size when the connection closes."""
    file = Path(path)
    if not file.is_file():
        raise AnalyticsError(f"no SQLite state file at {path} (give the proxy's --state URL)")
    uri = f"file:{urllib.parse.quote(str(file.resolve()))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0)
        db.execute(f"PRAGMA temp_store={'MEMORY' if fast else 'FILE'}")
        db.execute("PRAGMA cache_size=-16384")  # 16 MiB of page cache, released with the connection
        db.execute(f"PRAGMA mmap_size={1 << 40}")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise AnalyticsError(f"cannot read SQLite state {path}: {exc}") from exc
    if "events" not in tables:
        db.close()
        raise AnalyticsError(f"{path} has no events table: not an edgeproxy state file")
    return db


def _window(scope: Scope, column: str = "ts") -> tuple[str, dict[str, Any]]:
    sql, params = "", {}
    if scope.since is not None:
        sql += f" AND {column} >= :since"
        params["since"] = scope.since
    if scope.until is not None:
        sql += f" AND {column} < :until"
        params["until"] = scope.until
    return sql, params


def _in_list(name: str, values: list[str]) -> tuple[str, dict[str, Any]]:
    names = [f":{name}{i}" for i in range(len(values))]
    return "(" + ",".join(names) + ")", {f"{name}{i}": v for i, v in enumerate(values)}


class _Parallel:
    """Run a few read-only queries at once, each on its own connection, re-raising the first failure."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def start(self, fn: Callable[[], None]) -> None:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # re-raised in join()
                self._errors.append(exc)

        thread = threading.Thread(target=run, name="edgeproxy-report", daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()
        if self._errors:
            raise self._errors[0]


def sqlite_tallies(path: str, project_uid: str, scope: Scope, *, daily: bool = False, fast: bool = False) -> Tallies:
    """Aggregate the events of `project_uid` in `scope`; `daily` adds per-day impression buckets (costlier);
    `fast` as in `connect_read_only`."""
    experiences = sorted(scope.experiences)
    if not experiences:
        return Tallies(daily_impressions={} if daily else None)
    first = connect_read_only(path, fast=fast)
    try:
        max_id = first.execute("SELECT max(id) FROM events").fetchone()[0]
    except sqlite3.Error as exc:
        first.close()
        raise AnalyticsError(f"cannot read SQLite state {path}: {exc}") from exc
    if max_id is None:
        first.close()
        return Tallies(daily_impressions={} if daily else None)
    exp_sql, exp_params = _in_list("e", experiences)
    window_sql, window_params = _window(scope)
    base = {"p": project_uid, "max_id": max_id, **exp_params, **window_params}
    tallies = Tallies(daily_impressions={} if daily else None)
    second = connect_read_only(path, fast=fast)
    work = _Parallel()
    try:
        if daily:
            work.start(lambda: _daily_impressions(first, base, exp_sql, window_sql, tallies))
        else:

            def impressions() -> None:
                _impressions(first, base, exp_sql, window_sql, tallies)
                _first_impressions(first, base, experiences, window_sql, tallies)

            work.start(impressions)
        work.start(lambda: _conversions(second, base, scope, tallies))
        work.join()
    except sqlite3.Error as exc:
        raise AnalyticsError(f"cannot aggregate events in {path}: {exc}") from exc
    finally:
        first.close()
        second.close()
    return tallies


_IMPRESSIONS_WHERE = (
    "project_uid = :p AND type = 'IMPRESSION' AND id <= :max_id AND variant_short_uid IS NOT NULL "
    "AND experience_short_uid IN "
)


def _impressions(db: sqlite3.Connection, params: dict[str, Any], exp_sql: str, window_sql: str, out: Tallies) -> None:
    # Without a window this reads the events_impressions index only (project, experience, variant, user).
    rows = db.execute(
        f"SELECT experience_short_uid, variant_short_uid, count(DISTINCT user_uid) FROM events "
        f"WHERE {_IMPRESSIONS_WHERE}{exp_sql}{window_sql} GROUP BY 1, 2",
        params,
    ).fetchall()
    out.impressions.update({(e, v): int(n) for e, v, n in rows})


EARLY_IMPRESSIONS = 100_000  # impressions read in time order before falling back to a full scan


def _first_impressions(
    db: sqlite3.Connection, params: dict[str, Any], experiences: list[str], window_sql: str, out: Tallies
) -> None:
    """min(ts) per experience that has impressions. Walking the `events_ts` index from the window's start, the
    first impression of an experience met is its earliest: most experiences are found within the first
    EARLY_IMPRESSIONS impressions. Those not met get one full pass with a filtered aggregate per experience (one
    row out, nothing sorted)."""
    where = f"project_uid = :p AND type = 'IMPRESSION' AND id <= :max_id AND variant_short_uid IS NOT NULL{window_sql}"
    wanted = [e for e in experiences if any(x == e for x, _ in out.impressions)]
    try:
        rows = db.execute(
            f"SELECT experience_short_uid, min(ts) FROM (SELECT experience_short_uid, ts FROM events INDEXED BY "
            f"events_ts WHERE {where} AND ts >= :from ORDER BY ts LIMIT :early) GROUP BY 1",
            {**params, "from": params.get("since", float("-inf")), "early": EARLY_IMPRESSIONS},
        ).fetchall()
    except sqlite3.OperationalError:  # a state file without the events_ts index
        rows = []
    found = {e: float(ts) for e, ts in rows if e in wanted}
    out.first_impression.update(found)
    missing = [e for e in wanted if e not in found]
    if not missing:
        return
    columns = ", ".join(f"min(ts) FILTER (WHERE experience_short_uid = :f{i})" for i in range(len(missing)))
    names = {f"f{i}": e for i, e in enumerate(missing)}
    row = db.execute(f"SELECT {columns} FROM events NOT INDEXED WHERE {where}", {**params, **names}).fetchone()
    out.first_impression.update({e: float(ts) for e, ts in zip(missing, row, strict=True) if ts is not None})


def _daily_impressions(
    db: sqlite3.Connection, params: dict[str, Any], exp_sql: str, window_sql: str, out: Tallies
) -> None:
    rows = db.execute(
        f"SELECT e, v, d, count(*), min(t) FROM ("
        f" SELECT experience_short_uid AS e, variant_short_uid AS v, min(ts) AS t,"
        f" CAST(min(ts) / {DAY} AS INTEGER) AS d FROM events"
        f" WHERE {_IMPRESSIONS_WHERE}{exp_sql}{window_sql} GROUP BY 1, 2, user_uid"
        f") GROUP BY 1, 2, 3",
        params,
    ).fetchall()
    daily = out.daily_impressions
    assert daily is not None
    for e, v, d, n, t in rows:
        daily[(e, v, int(d))] = int(n)
        out.impressions[(e, v)] = out.impressions.get((e, v), 0) + int(n)
        if e not in out.first_impression or t < out.first_impression[e]:
            out.first_impression[e] = float(t)


def _conversions(db: sqlite3.Connection, params: dict[str, Any], scope: Scope, out: Tallies) -> None:
    window_sql = _window(scope)[0]
    pairs = [(e, k) for e, keys in scope.metrics.items() for k in keys]
    if not pairs:
        return
    db.execute("CREATE TEMP TABLE metric (e TEXT NOT NULL, k TEXT NOT NULL, PRIMARY KEY (k, e)) WITHOUT ROWID")
    db.executemany("INSERT OR IGNORE INTO metric VALUES (?, ?)", pairs)
    # Every variant ever shown for the experiences with metrics: a loose index scan (one seek per variant).
    db.execute("CREATE TEMP TABLE arm (e TEXT NOT NULL, v TEXT NOT NULL, PRIMARY KEY (e, v)) WITHOUT ROWID")
    for experience in sorted({e for e, _ in pairs}):
        db.execute(
            "WITH RECURSIVE arms(v) AS ("
            " SELECT min(variant_short_uid) FROM events WHERE project_uid = :p AND type = 'IMPRESSION'"
            " AND experience_short_uid = :x"
            " UNION ALL"
            " SELECT (SELECT min(variant_short_uid) FROM events WHERE project_uid = :p AND type = 'IMPRESSION'"
            " AND experience_short_uid = :x AND variant_short_uid > arms.v) FROM arms WHERE arms.v IS NOT NULL"
            ") INSERT INTO arm SELECT :x, v FROM arms WHERE v IS NOT NULL",
            {"p": params["p"], "x": experience},
        )
    db.execute(
        "CREATE TEMP TABLE cv AS SELECT user_uid AS u, event_key AS k, ts AS t FROM events"
        " WHERE project_uid = :p AND type = 'EVENT' AND id <= :max_id"
        f" AND event_key IN (SELECT k FROM metric){window_sql}",
        params,
    )
    # First-seen impressions of the users who converted, for the experiences their keys are metrics of: one
    # index seek per (user, experience, variant).
    db.execute(
        "CREATE TEMP TABLE fs AS SELECT x.user_uid AS u, a.e AS e, a.v AS v, min(x.ts) AS t"
        " FROM (SELECT DISTINCT c.u AS u, m.e AS e FROM cv AS c JOIN metric AS m ON m.k = c.k) AS ue"
        " CROSS JOIN arm AS a CROSS JOIN events AS x"
        " WHERE a.e = ue.e AND x.project_uid = :p AND x.type = 'IMPRESSION' AND x.experience_short_uid = a.e"
        f" AND x.variant_short_uid = a.v AND x.user_uid = ue.u AND x.id <= :max_id{_window(scope, 'x.ts')[0]}"
        " GROUP BY x.user_uid, a.e, a.v",
        params,
    )
    db.execute("CREATE INDEX temp.fs_user ON fs (u, e)")
    rows = db.execute(
        "SELECT e, v, k, CAST(ct / :day AS INTEGER), count(*) FROM ("
        " SELECT m.e AS e, f.v AS v, c.k AS k, c.t AS ct, row_number() OVER ("
        "  PARTITION BY c.u, m.e, c.k ORDER BY c.t, f.t DESC, f.v DESC) AS rn"
        " FROM cv AS c JOIN metric AS m ON m.k = c.k JOIN fs AS f ON f.u = c.u AND f.e = m.e"
        " WHERE f.t <= c.t AND c.t - f.t <= :window"
        ") WHERE rn = 1 GROUP BY 1, 2, 3, 4",
        {"day": DAY, "window": CONVERSION_WINDOW_SECONDS},
    ).fetchall()
    out.daily_conversions.update({(e, v, k, int(d)): int(n) for e, v, k, d, n in rows})
    for table in ("fs", "cv", "arm", "metric"):
        db.execute(f"DROP TABLE temp.{table}")
