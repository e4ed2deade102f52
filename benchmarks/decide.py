"""Per-manifest decision latency and throughput, for the example rules and a project at the default limits.

    python benchmarks/decide.py [--seconds 5] [--json benchmarks/results/decide.json]

Measures, on one pinned core, `context_from_description` + `CompiledSnapshot.decide` for pre-parsed request
descriptions, and `decide` alone; then the same with the proxy's decider, `MemoDecider` (what the proxy does per
request, minus HTTP), on 20,000 distinct visitors: context + decide, and decide alone on contexts already built (the
feature key and the memos). Prints p50/p99/p99.9 in µs and decisions/s, with the machine named. Timing lives here,
never in tests.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from limits_project import random_visitors, write_limits_project

from edgeproxy.engine import context_from_description
from edgeproxy.engine.decide import CompiledSnapshot
from edgeproxy.engine.memo import MemoDecider
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.geo import MaxMindGeo

ROOT = Path(__file__).resolve().parent.parent
DISTINCT_VISITORS = 20_000


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def percentile(sorted_values: list[int], q: float) -> float:
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index] / 1000.0


def measure(name: str, seconds: float, step: Callable[[int], object], pool: int) -> dict[str, Any]:
    for i in range(min(pool, 2000)):  # warm caches (UA classification, memo dicts)
        step(i)
    samples: list[int] = []
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + seconds
    next_report = time.perf_counter() + 1.0
    i = 0
    started = time.perf_counter()
    while True:
        t0 = clock()
        step(i % pool)
        samples.append(clock() - t0)
        i += 1
        if i % 1024 == 0:
            now = time.perf_counter()
            if now >= deadline:
                break
            if now >= next_report:
                print(f"  {name}: {i:,} decisions ...", file=sys.stderr, flush=True)
                next_report = now + 1.0
    elapsed = time.perf_counter() - started
    samples.sort()
    return {
        "name": name,
        "decisions": len(samples),
        "p50_us": round(percentile(samples, 0.50), 2),
        "p99_us": round(percentile(samples, 0.99), 2),
        "p999_us": round(percentile(samples, 0.999), 2),
        "mean_us": round(sum(samples) / len(samples) / 1000.0, 2),
        # throughput of back-to-back decisions including the timing overhead
        "decisions_per_s": round(len(samples) / elapsed),
    }


def bench_snapshot(
    label: str, snapshot: CompiledSnapshot, visitors: list[dict[str, Any]], seconds: float, geo_lookup: Any = None
) -> list[dict[str, Any]]:
    def new_uid() -> str:
        return "new"

    def clock() -> float:
        return 1_795_000_000.0

    def full(i: int) -> object:
        described = context_from_description(
            visitors[i], clock=clock, new_uid=new_uid, classifier=snapshot.classifier, geo_lookup=geo_lookup
        )
        return snapshot.decide(described.context, described.tags)

    contexts = [
        context_from_description(v, clock=clock, new_uid=new_uid, classifier=snapshot.classifier, geo_lookup=geo_lookup)
        for v in visitors
    ]

    def decide_only(i: int) -> object:
        described = contexts[i]
        described.context.memberships.clear()  # a fresh request: no audience results carried over
        return snapshot.decide(described.context, described.tags)

    results = [
        measure(f"{label}: context + decide", seconds, full, len(visitors)),
        measure(f"{label}: decide only", seconds, decide_only, len(visitors)),
    ]
    # The proxy's decider, on distinct visitors: each description again under other uids (the header wins).
    many = [
        {**v, "headers": {**(v.get("headers") or {}), "X-CS-Personalize-User-Uid": f"visitor-{n}"}}
        for n, v in zip(range(DISTINCT_VISITORS), itertools.cycle(visitors))
    ]
    decider = MemoDecider(snapshot)

    def memo_full(i: int) -> object:
        described = context_from_description(
            many[i], clock=clock, new_uid=new_uid, classifier=snapshot.classifier, geo_lookup=geo_lookup
        )
        return decider.decide(described.context, described.tags)

    many_contexts = [
        context_from_description(v, clock=clock, new_uid=new_uid, classifier=snapshot.classifier, geo_lookup=geo_lookup)
        for v in many
    ]

    def memo_only(i: int) -> object:
        described = many_contexts[i]
        described.context.memberships.clear()
        return decider.decide(described.context, described.tags)

    results += [
        measure(f"{label}: context + MemoDecider", seconds, memo_full, len(many)),
        measure(f"{label}: MemoDecider only", seconds, memo_only, len(many)),
    ]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per case")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "decide.json"))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the targets say

    results: list[dict[str, Any]] = []
    example = load_snapshot(ROOT / "rules")
    example_visitors = [json.loads(line) for line in (ROOT / "rules" / "requests.jsonl").read_text().splitlines()]
    lookup = MaxMindGeo(ROOT / "tests" / "data" / "GeoIP2-City-Test.mmdb").lookup
    print("example rules (7 live experiences, 18 audiences) ...", file=sys.stderr)
    gc.collect()
    gc.freeze()
    results += bench_snapshot("example rules", example, example_visitors, args.seconds, lookup)

    with tempfile.TemporaryDirectory() as tmp:
        limits = load_snapshot(write_limits_project(Path(tmp)))
    visitors = random_visitors(2000)
    print("limits project (100 experiences, 100 audiences of <= 10 rules) ...", file=sys.stderr)
    gc.collect()
    gc.freeze()
    results += bench_snapshot("limits project", limits, visitors, args.seconds)

    report = {"benchmark": "decide", "machine": machine(), "pinned_to_one_core": True, "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']} (pinned to one core)")
    print(f"{'case':<44} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} {'decisions/s':>12}")
    for r in results:
        print(f"{r['name']:<44} {r['p50_us']:>8} {r['p99_us']:>8} {r['p999_us']:>9} {r['decisions_per_s']:>12,}")
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
