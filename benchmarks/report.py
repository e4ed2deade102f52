"""`edgeproxy report` over a large SQLite event store: how long the A/B report takes for N events (default 10M).

    python benchmarks/report.py [--events 10000000] [--db /tmp/edgeproxy-10m.sqlite3] [--keep] [--json FILE]

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


def dashboard_seconds(path: Path) -> tuple[float, float]:
    code = (
        "import time; from edgeproxy.files.snapshot_file import load_snapshot; "
        "from edgeproxy.endpoints.dashboard import compute_analytics; s = load_snapshot('rules'); "
        f"t = time.perf_counter(); compute_analytics(s.project, s.version, 'sqlite:///{path}', 'rules'); "
        "print(time.perf_counter() - t)"
    )
    _, cpu, out = timed([sys.executable, "-c", code])
    return float(out.strip().splitlines()[-1]), cpu


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ")[0]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--db", type=Path, help="SQLite file to (re)create (default: a temporary file)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file (and reuse it if N matches)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    path = args.db or Path(tempfile.gettempdir()) / f"edgeproxy-report-{args.events}.sqlite3"
    reuse = args.keep and path.exists()
    if reuse:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            reuse = db.execute("SELECT count(*) FROM events").fetchone()[0] == args.events
    generation = None
    if not reuse:
        print(f"generating {args.events:,} events into {path} ...", flush=True)
        generation = generate(path, args.events)
        print(f"  {generation:.1f} s ({path.stat().st_size / 2**30:.2f} GiB)", flush=True)
    state = f"sqlite:///{path}"
    cli = [sys.executable, "-m", "edgeproxy.cli", "report", "--rules", "rules", "--state", state, "--json"]
    results: dict[str, Any] = {"events": args.events, "generationSeconds": generation, "runs": []}
    timed(cli)  # warm the page cache: the figures are for a file the OS has cached, as a live state file is
    for name, argv in [
        ("edgeproxy report --json", cli),
        ("edgeproxy report --json --since 2026-01-15 --until 2026-02-15", [*cli, "--since", "2026-01-15",
                                                                           "--until", "2026-02-15"]),
    ]:
        load = load_average()
        seconds, cpu, out = timed(argv)
        report = json.loads(out)
        impressions = sum(e["impressions"] for e in report["experiences"])
        results["runs"].append({"command": name, "seconds": round(seconds, 2), "cpuSeconds": round(cpu, 2),
                                "loadBefore": load})  # fmt: skip
        print(f"{name}: {seconds:.2f} s wall, {cpu:.2f} s CPU (load before {load}; {impressions:,} unique "
              "impressions reported)", flush=True)  # fmt: skip
    load = load_average()
    seconds, cpu = dashboard_seconds(path)
    results["runs"].append({"command": "dashboard data (report + daily series)", "seconds": round(seconds, 2),
                            "cpuSecondsWithStartup": round(cpu, 2), "loadBefore": load})  # fmt: skip
    print(f"dashboard data (report + daily series): {seconds:.2f} s wall ({cpu:.2f} s CPU with interpreter start; "
          f"load before {load})")  # fmt: skip
    results["machine"] = machine()
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, SQLite {sqlite3.sqlite_version}")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "report", **results}, indent=2) + "\n")
    if not args.keep:
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    os.sync()


if __name__ == "__main__":
    main()
