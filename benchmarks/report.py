"""`edgeproxy report` over a large event store, SQLite and PostgreSQL: how long the A/B report takes for N events
(default 10M).

    python benchmarks/report.py [--events 10000000] [--backends sqlite,postgres] [--db /tmp/edgeproxy-10m.sqlite3]
                                [--postgres-url postgresql://...] [--keep] [--json FILE]

PostgreSQL: without `--postgres-url` a throwaway server is started from Debian's package (tests/support/postgres.py,
settings in POSTGRES_SETTINGS), in a temporary directory on a free port, and removed at the end (kept with
`--keep`). The same N events are generated in SQL there (the generator below, in PostgreSQL's dialect: identical
rows) straight into the store's day partitions (created first through PostgresEventStore), the first-seen table is
built in one pass (`rebuild_first_seen`, what insert_events maintains row by row), then VACUUM ANALYZE, as
autovacuum would. Timed: the same report commands with `--events URL`, and the dashboard's computation; the
reports of both stores are compared (they must be identical but for the `source` field). The insert path is
measured apart: `insert_events` in batches of 1,000 (what the fleet's drain calls), events per second.

Generates N events for the example project (rules/) straight into a SQLite file with the store's own schema and
indexes (one INSERT ... SELECT over a recursive CTE, indexes built afterwards: ~1 minute for 10M), then times, each
as a separate process:

- `edgeproxy report --json` (what a user runs: snapshot load, SQL aggregation, statistics, JSON),
- `edgeproxy report --json --since ... --until ...` (a window: every row's time is read),
- the dashboard's computation (report plus daily series), in-process.

The traffic: N / 10 users with 10 events each: impressions of the three A/B tests and two segmented experiences
(the checkout test's from the SDK and again from the proxy), metric events (purchase, add_to_cart,
begin_checkout, promo_bar_click) at per-variant rates, some before the impression or past 30 days, and non-metric
events; 60 days of timestamps. Timing lives here, never in tests; the machine is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from decide import machine  # the house helper: same machine description in every result file

from edgeproxy.store.sqlite_store import SCHEMA

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "6565d3b1a3f0c7b2e1d4a9f0"
START = 1_767_225_600  # 2026-01-01T00:00:00Z

# Event n belongs to user n / 10; its slot n % 10 says what it is. Hashes are integer arithmetic on n, so the
# same N always gives the same file.
GENERATE = """
WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < :events - 1),
r AS (SELECT n, n / 10 AS i, n % 10 AS slot,
      ((n / 10) * 2654435761 + 12345) % 4294967296 AS h,
      ((n / 10) * 40503 + 977) % 65536 AS h2,
      (n * 2246822519 + 3266489917) % 4294967296 AS hn FROM seq),
s AS (SELECT n, i, slot, h, hn,
      printf('%08x-%04x-4%03x-%04x-%012x', h, h2, (h >> 4) % 4096, 32768 + i % 16384, i * 7919) AS uid,
      :start + (h % 5184000) AS start,
      (h / 7) % 10000 AS b2, (h / 13) % 10000 AS b3, (h / 17) % 10000 AS b7, (h / 19) % 1000 AS c FROM r)
INSERT INTO events (ts, project_uid, user_uid, type, experience_short_uid, variant_short_uid, event_key, source)
SELECT
  start + CASE WHEN slot < 6 THEN slot * 60 + hn % 600 ELSE (hn % 3456000) - 86400 END,
  :project, uid,
  CASE WHEN slot < 6 THEN 'IMPRESSION' ELSE 'EVENT' END,
  CASE slot WHEN 0 THEN '2' WHEN 1 THEN '2' WHEN 2 THEN '3' WHEN 3 THEN '7' WHEN 4 THEN '0' WHEN 5 THEN '6' END,
  CASE slot WHEN 0 THEN (CASE WHEN b2 < 5000 THEN '0' WHEN b2 < 8000 THEN '1' ELSE '2' END)
            WHEN 1 THEN (CASE WHEN b2 < 5000 THEN '0' WHEN b2 < 8000 THEN '1' ELSE '2' END)
            WHEN 2 THEN (CASE WHEN b3 < 3334 THEN '0' WHEN b3 < 6667 THEN '1' ELSE '2' END)
            WHEN 3 THEN (CASE WHEN b7 < 6000 THEN '0' ELSE '1' END)
            WHEN 4 THEN CAST(h % 3 AS TEXT) WHEN 5 THEN CAST(h % 2 AS TEXT) END,
  CASE slot
    WHEN 6 THEN (CASE WHEN c < 30 + (CASE WHEN b2 < 5000 THEN 0 WHEN b2 < 8000 THEN 6 ELSE 3 END)
                 THEN 'purchase' ELSE 'page_view' END)
    WHEN 7 THEN (CASE WHEN c < 120 THEN 'add_to_cart' ELSE 'page_view' END)
    WHEN 8 THEN (CASE WHEN c < 80 THEN 'begin_checkout' WHEN c < 140 THEN 'promo_bar_click' ELSE 'page_view' END)
    WHEN 9 THEN 'newsletter_signup' END,
  CASE slot WHEN 1 THEN 'proxy' WHEN 4 THEN 'origin' ELSE 'sdk' END
FROM s
"""


# The same rows in PostgreSQL's dialect (printf -> lpad(to_hex)), for event numbers :first..:last; `day` is the
# partition key, `event_id` what a drain would carry.
PG_GENERATE = """
WITH r AS (SELECT n, n / 10 AS i, n % 10 AS slot,
      ((n / 10) * 2654435761 + 12345) % 4294967296 AS h,
      ((n / 10) * 40503 + 977) % 65536 AS h2,
      (n * 2246822519 + 3266489917) % 4294967296 AS hn FROM generate_series(:first::bigint, :last::bigint) AS n),
s AS (SELECT n, i, slot, h, hn,
      lpad(to_hex(h), 8, '0') || '-' || lpad(to_hex(h2), 4, '0') || '-4' || lpad(to_hex((h >> 4) % 4096), 3, '0')
        || '-' || lpad(to_hex(32768 + i % 16384), 4, '0') || '-' || lpad(to_hex(i * 7919), 12, '0') AS uid,
      :start + (h % 5184000) AS start,
      (h / 7) % 10000 AS b2, (h / 13) % 10000 AS b3, (h / 17) % 10000 AS b7, (h / 19) % 1000 AS c FROM r),
t AS (SELECT *, (start + CASE WHEN slot < 6 THEN slot * 60 + hn % 600 ELSE (hn % 3456000) - 86400 END)::float8 AS ts
      FROM s)
INSERT INTO edgeproxy_events (event_id, day, ts, project_uid, user_uid, type, experience_short_uid, variant_short_uid,
                              event_key, source)
SELECT 'g' || n, date '1970-01-01' + floor(ts / 86400)::int, ts, :project, uid,
  CASE WHEN slot < 6 THEN 'IMPRESSION' ELSE 'EVENT' END,
  CASE slot WHEN 0 THEN '2' WHEN 1 THEN '2' WHEN 2 THEN '3' WHEN 3 THEN '7' WHEN 4 THEN '0' WHEN 5 THEN '6' END,
  CASE slot WHEN 0 THEN (CASE WHEN b2 < 5000 THEN '0' WHEN b2 < 8000 THEN '1' ELSE '2' END)
            WHEN 1 THEN (CASE WHEN b2 < 5000 THEN '0' WHEN b2 < 8000 THEN '1' ELSE '2' END)
            WHEN 2 THEN (CASE WHEN b3 < 3334 THEN '0' WHEN b3 < 6667 THEN '1' ELSE '2' END)
            WHEN 3 THEN (CASE WHEN b7 < 6000 THEN '0' ELSE '1' END)
            WHEN 4 THEN (h % 3)::text WHEN 5 THEN (h % 2)::text END,
  CASE slot
    WHEN 6 THEN (CASE WHEN c < 30 + (CASE WHEN b2 < 5000 THEN 0 WHEN b2 < 8000 THEN 6 ELSE 3 END)
                 THEN 'purchase' ELSE 'page_view' END)
    WHEN 7 THEN (CASE WHEN c < 120 THEN 'add_to_cart' ELSE 'page_view' END)
    WHEN 8 THEN (CASE WHEN c < 80 THEN 'begin_checkout' WHEN c < 140 THEN 'promo_bar_click' ELSE 'page_view' END)
    WHEN 9 THEN 'newsletter_signup' END,
  CASE slot WHEN 1 THEN 'proxy' WHEN 4 THEN 'origin' ELSE 'sdk' END
FROM t
"""


def generate(path: Path, events: int) -> float:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    tables = [s for s in SCHEMA.split(";") if s.strip().startswith("CREATE TABLE")]
    for statement in tables:
        db.execute(statement)
    db.execute("BEGIN")
    db.execute(GENERATE, {"events": events, "start": START, "project": PROJECT})
    db.execute("COMMIT")
    db.executescript(SCHEMA)  # the store's indexes, built once over the whole table
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - started


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system: steadier than wall time on a shared machine), stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, result.stdout


def dashboard_seconds(url: str) -> tuple[float, float]:
    code = (
        "import time; from edgeproxy.files.snapshot_file import load_snapshot; "
        "from edgeproxy.endpoints.dashboard import compute_analytics; s = load_snapshot('rules'); "
        f"t = time.perf_counter(); compute_analytics(s.project, s.version, {url!r}, 'rules'); "
        "print(time.perf_counter() - t)"
    )
    _, cpu, out = timed([sys.executable, "-c", code])
    return float(out.strip().splitlines()[-1]), cpu


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ")[0]
    except OSError:
        return "?"


# A server for a 2-core, 23 GB machine running nothing else of note: the table and its indexes fit in shared
# buffers, reports may use two parallel workers. Durability settings are PostgreSQL's defaults except during the
# bulk load below (synchronous_commit off for that session only).
POSTGRES_SETTINGS = {
    "shared_buffers": "4GB",
    "effective_cache_size": "12GB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "max_parallel_workers_per_gather": "2",
    "max_parallel_maintenance_workers": "2",
    "random_page_cost": "1.1",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}
BULK = 1_000_000  # events per generating statement


def _pg_statement(template: str) -> str:
    """GENERATE's `:name` parameters as psycopg's `%(name)s` (and `%` as `%%`)."""
    import re

    return re.sub(r":(first|last|start|project)\b", r"%(\1)s", template.replace("%", "%%"))


def postgres_generate(url: str, events: int) -> float:
    """N events into the store's partitions (created first), the first-seen table built, VACUUM ANALYZE."""
    import asyncio
    import datetime as dt

    import psycopg

    from edgeproxy.store.postgres_events import EPOCH, FIRST_SEEN, TABLE, PostgresEventStore

    started = time.perf_counter()
    first_day, last_day = (START - 86_400) // 86_400, (START + 5_184_000 + 3_456_000) // 86_400

    async def prepare() -> None:
        store = PostgresEventStore(url)
        await store.start()
        try:
            await store.create_partitions(EPOCH + dt.timedelta(days=d) for d in range(first_day, last_day + 1))
        finally:
            await store.close()

    asyncio.run(prepare())
    statement = _pg_statement(PG_GENERATE)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SET synchronous_commit = off")
        for first in range(0, events, BULK):
            last = min(events, first + BULK) - 1
            db.execute(statement, {"first": first, "last": last, "start": START, "project": PROJECT})
            print(f"  {last + 1:,} events ({time.perf_counter() - started:.0f} s)", flush=True)

    async def first_seen() -> int:
        store = PostgresEventStore(url)
        await store.start()
        try:
            return await store.rebuild_first_seen()
        finally:
            await store.close()

    print(f"  first-seen: {asyncio.run(first_seen()):,} (user, experience, variant)", flush=True)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"VACUUM (ANALYZE) {TABLE}")
        db.execute(f"VACUUM (ANALYZE) {FIRST_SEEN}")
    return time.perf_counter() - started


def postgres_count(url: str) -> int:
    import psycopg

    from edgeproxy.store.postgres_events import TABLE

    try:
        with psycopg.connect(url) as db:
            row = db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    except psycopg.Error:
        return -1
    return int(row[0]) if row else 0


def insert_rate(url: str, events: int = 200_000, batch: int = 1_000) -> float:
    """Events per second through PostgresEventStore.insert_events, `batch` at a time (the drain's path), into a
    store that already holds the generated events (their indexes and first-seen table)."""
    import asyncio

    from edgeproxy.store.base import EventRecord
    from edgeproxy.store.postgres_events import PostgresEventStore

    def event(n: int) -> EventRecord:
        user = f"rate-user-{n // 10}"
        if n % 10 < 6:
            return EventRecord(START + n * 0.5, PROJECT, user, "IMPRESSION", "2", str(n % 3))
        return EventRecord(START + n * 0.5, PROJECT, user, "EVENT", None, None, "purchase")

    rows = [(f"rate-{n}", event(n)) for n in range(events)]

    async def run() -> float:
        store = PostgresEventStore(url)
        await store.start()
        try:
            started = time.perf_counter()
            for i in range(0, len(rows), batch):
                await store.insert_events(rows[i : i + batch])
            return len(rows) / (time.perf_counter() - started)
        finally:
            await store.close()

    return asyncio.run(run())


def report_runs(source_flags: list[str], dashboard_url: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The timed report commands on one store; returns the runs and the whole report's JSON."""
    cli = [sys.executable, "-m", "edgeproxy.cli", "report", "--rules", "rules", *source_flags, "--json", "--now", NOW]
    runs: list[dict[str, Any]] = []
    timed(cli)  # warm the caches: the figures are for a store the OS (and PostgreSQL) has cached, as a live one is
    whole: dict[str, Any] = {}
    for name, argv in [
        ("edgeproxy report --json", cli),
        ("edgeproxy report --json --since 2026-01-15 --until 2026-02-15", [*cli, "--since", "2026-01-15",
                                                                           "--until", "2026-02-15"]),
    ]:  # fmt: skip
        load = load_average()
        seconds, cpu, out = timed(argv)
        report = json.loads(out)
        whole = whole or report
        impressions = sum(e["impressions"] for e in report["experiences"])
        runs.append({"command": name, "seconds": round(seconds, 2), "cpuSeconds": round(cpu, 2), "loadBefore": load})
        print(f"{name}: {seconds:.2f} s wall, {cpu:.2f} s CPU of the client (load before {load}; {impressions:,} "
              "unique impressions reported)", flush=True)  # fmt: skip
    load = load_average()
    seconds, cpu = dashboard_seconds(dashboard_url)
    runs.append({"command": "dashboard data (report + daily series)", "seconds": round(seconds, 2),
                 "cpuSecondsWithStartup": round(cpu, 2), "loadBefore": load})  # fmt: skip
    print(f"dashboard data (report + daily series): {seconds:.2f} s wall ({cpu:.2f} s CPU of the client with "
          f"interpreter start; load before {load})", flush=True)  # fmt: skip
    return runs, whole


NOW = "2026-03-15T00:00:00Z"  # reports dated on a fixed clock, so the two stores' reports compare equal


def sqlite_part(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    path = args.db or Path(tempfile.gettempdir()) / f"edgeproxy-report-{args.events}.sqlite3"
    reuse = args.keep and path.exists()
    if reuse:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            reuse = db.execute("SELECT count(*) FROM events").fetchone()[0] == args.events
    generation = None
    if not reuse:
        print(f"SQLite: generating {args.events:,} events into {path} ...", flush=True)
        generation = generate(path, args.events)
        print(f"  {generation:.1f} s ({path.stat().st_size / 2**30:.2f} GiB)", flush=True)
    runs, whole = report_runs(["--state", f"sqlite:///{path}"], f"sqlite:///{path}")
    if not args.keep:
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    return {"generationSeconds": generation, "sqlite": sqlite3.sqlite_version, "runs": runs}, whole


def postgres_part(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    from support.postgres import start_postgres

    server = None
    url = args.postgres_url
    if not url:
        server = start_postgres(Path(tempfile.mkdtemp(prefix="edgeproxy-report-bench-")))
        server.configure(POSTGRES_SETTINGS)
        server.stop()
        server.start()
        url = server.create_database("events")
        print(f"PostgreSQL: a throwaway server in {server.root} ({url})", flush=True)
    try:
        generation = None
        if postgres_count(url) != args.events:
            print(f"PostgreSQL: generating {args.events:,} events ...", flush=True)
            generation = postgres_generate(url, args.events)
            print(f"  {generation:.1f} s", flush=True)
        runs, whole = report_runs(["--events", url], url)
        rate = insert_rate(url)
        print(f"insert_events, batches of 1,000: {rate:,.0f} events/s", flush=True)
        import psycopg

        with psycopg.connect(url) as db:
            version = str(db.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            size = db.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        part = {"generationSeconds": generation, "postgres": version, "databaseGiB": round(size / 2**30, 2),
                "settings": POSTGRES_SETTINGS if server else "given by --postgres-url", "runs": runs,
                "insertEventsPerSecond": round(rate)}  # fmt: skip
    finally:
        if server is not None:
            if args.keep:
                print(f"kept: {url} (stop it with: {server.bin_dir}/pg_ctl -D {server.data_dir} stop)")
            else:
                server.remove()
    return part, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--db", type=Path, help="SQLite file to (re)create (default: a temporary file)")
    parser.add_argument("--postgres-url", help="an existing PostgreSQL database to fill and time (default: start one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated stores (and reuse them if N matches)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown:
        raise SystemExit(f"--backends: unknown {sorted(unknown)}; use sqlite, postgres")
    results: dict[str, Any] = {"events": args.events}
    reports: dict[str, dict[str, Any]] = {}
    if "sqlite" in backends:
        results["sqlite"], reports["sqlite"] = sqlite_part(args)
    if "postgres" in backends:
        results["postgresql"], reports["postgres"] = postgres_part(args)
    if len(reports) == 2:
        for report in reports.values():
            report.pop("generatedAt")
            report.pop("source")
        same = reports["sqlite"] == reports["postgres"]
        results["reportsIdentical"] = same
        print(f"\nthe whole report from SQLite and from PostgreSQL: {'identical' if same else 'DIFFERENT'}")
    results["machine"] = machine()
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "report", **results}, indent=2) + "\n")
    os.sync()


if __name__ == "__main__":
    main()
