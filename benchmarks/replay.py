"""Replay throughput and memory: `edgeproxy replay` on generated traffic for the example rules.

    python benchmarks/replay.py [--requests 500000] [--har-pages 50000] [--json benchmarks/results/replay.json]

Generates realistic traffic for rules/ (a JSONL of request descriptions: returning and new visitors, a handful of
countries, devices, campaigns, Lytics cookies, stored attributes, times around Black Friday; and a HAR of page views,
each with its stylesheet, script and image and an embedded HTML body, as a browser records it), then runs
`edgeproxy replay` as a subprocess pinned to one core and reports requests/s (wall and CPU) and the peak RSS of the
process. Baselines in the same run: reading + JSON parsing alone, with json and with msgspec (which replay reads
JSON lines with: the ceiling of any replay in Python), the engine's context built for each request (which every
replayed request pays: replay decides on the proxy's own path), and the replay without the memo (`--no-memo`: every
request decided by `CompiledSnapshot.decide`) and without coverage. A second HAR four times larger shows memory
stays flat.
Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.122 Mobile "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.122 "
    "Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
]
GEOS = [
    {"country": "GB", "region": "ENG", "city": "London"},
    {"country": "GB", "region": "SCT", "city": "Edinburgh"},
    {"country": "US", "region": "WA", "city": "Milton"},
    {"country": "US", "region": "NY", "city": "New York"},
    {"country": "CA", "region": "ON", "city": "Toronto"},
    {"country": "DE", "region": "BE", "city": "Berlin"},
]
PAGES = ["/", "/", "/products/storm-shell-jacket", "/products/alpine-down-jacket", "/cart", "/checkout"]
QUERIES = ["", "", "", "", "?utm_campaign=bf", "?ref=newsletter&utm_source=email", "?utm_source=google"]
REFERRERS = ["", "", "", "https://www.google.com/search?q=jackets", "https://duckduckgo.com/"]


def _now(rng: random.Random) -> str:
    day = rng.randrange(20, 40)  # 20 Nov .. 9 Dec 2026
    month, dom = (11, day) if day <= 30 else (12, day - 30)
    return f"2026-{month:02d}-{dom:02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"


def _visitor(rng: random.Random, n: int) -> dict[str, Any]:
    returning = rng.random() < 0.8
    uid = f"user-{rng.randrange(max(1, n // 5)):08d}" if returning else f"new-{rng.getrandbits(64):016x}"
    cookies = [f"cs-personalize-user-uid={uid}"]
    if rng.random() < 0.15:
        cookies.append(rng.choice(["cs-lytics-audiences=|vip_shoppers|", "cs-lytics-audiences=|high_value_shoppers|"]))
    if rng.random() < 0.05:
        cookies.append("cs-lytics-flows=|post-purchase-nurture:engaged|")
    headers = {"User-Agent": rng.choice(UAS), "Cookie": "; ".join(cookies)}
    referrer = rng.choice(REFERRERS)
    if referrer:
        headers["Referer"] = referrer
    return {"headers": headers, "geo": rng.choice(GEOS), "returning": returning}


def write_jsonl(path: Path, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(n):
            visitor = _visitor(rng, n)
            description: dict[str, Any] = {
                "url": "https://shop.example" + rng.choice(PAGES) + rng.choice(QUERIES),
                "method": "GET",
                "headers": visitor["headers"],
                "geo": visitor["geo"],
                "now": _now(rng),
            }
            if visitor["returning"] and rng.random() < 0.3:
                description["storedAttributes"] = {
                    "tier": rng.choice(["gold", "silver", "bronze"]),
                    "visits": rng.randrange(20),
                    "lifetime_value": rng.randrange(3000),
                    "newsletter_subscriber": rng.random() < 0.4,
                }
            out.write(json.dumps(description) + "\n")


def _har_entry(url: str, headers: dict[str, str], started: str, mime: str, body: str) -> dict[str, Any]:
    return {
        "startedDateTime": started,
        "time": 23.4,
        "serverIPAddress": "203.0.113.10",
        "request": {
            "method": "GET", "url": url, "httpVersion": "HTTP/2",
            "headers": [{"name": ":authority", "value": "shop.example"}]
            + [{"name": k, "value": v} for k, v in headers.items()],
            "cookies": [], "queryString": [], "headersSize": -1, "bodySize": 0,
        },
        "response": {
            "status": 200, "statusText": "", "httpVersion": "HTTP/2",
            "headers": [{"name": "content-type", "value": mime}, {"name": "cache-control", "value": "no-store"}],
            "cookies": [], "content": {"size": len(body), "mimeType": mime, "text": body},
            "redirectURL": "", "headersSize": -1, "bodySize": len(body),
        },
        "cache": {}, "timings": {"blocked": 0.2, "dns": -1, "connect": -1, "send": 0.1, "wait": 20.1, "receive": 3},
    }  # fmt: skip


def write_har(path: Path, pages: int, seed: int = 2) -> None:
    """A HAR as a browser exports it: page loads with their assets and embedded bodies, written as a stream."""
    rng = random.Random(seed)
    html_body = "<!doctype html><html><body>" + ("<p>Northwind Outfitters</p>" * 60) + "</body></html>"
    with path.open("w", encoding="utf-8") as out:
        out.write(
            '{"log": {"version": "1.2", "creator": {"name": "bench", "version": "1"}, "pages": [], "entries": [\n'
        )
        first = True
        for _ in range(pages):
            visitor = _visitor(rng, pages)
            headers = dict(visitor["headers"])
            headers["X-Forwarded-For"] = rng.choice(["81.2.69.160", "216.160.83.56", "89.160.20.112"])
            started = _now(rng).replace("Z", ".123Z")
            url = "https://shop.example" + rng.choice(PAGES) + rng.choice(QUERIES)
            items = [
                _har_entry(url, {**headers, "Sec-Fetch-Dest": "document"}, started, "text/html", html_body),
                _har_entry("https://shop.example/static/site.css", headers, started, "text/css", "body{}" * 50),
                _har_entry("https://shop.example/static/app.js?v=3", headers, started, "text/javascript", "x=1;" * 80),
                _har_entry("https://shop.example/static/logo.svg", headers, started, "image/svg+xml", "<svg/>" * 20),
            ]
            for item in items:
                out.write(("" if first else ",\n") + json.dumps(item))
                first = False
        out.write("\n]}}\n")


def machine() -> dict[str, Any]:
    """The house machine description (benchmarks/decide.py) plus the load when the run started."""
    from decide import machine as house_machine

    try:
        load: float | None = os.getloadavg()[0]
    except OSError:
        load = None
    return {**house_machine(), "loadavg_1m_at_start": load}


def _pin() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})


def run_case(name: str, argv: list[str], requests_hint: int | None = None) -> dict[str, Any]:
    """Run argv as a child pinned to one core; requests/s from its report, peak RSS and CPU from rusage."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    # Each case is a fresh child so ru_maxrss is its own peak (RUSAGE_CHILDREN keeps the max over children, so
    # cases run smallest-memory first would hide later ones; we read the child's own VmHWM instead).
    # Output goes to files, not pipes: a pipe nobody reads while we poll could fill up and stall the child.
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out_file, stderr=err_file, text=True, preexec_fn=_pin)
        peak_kb = 0
        status_path = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status_path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        out_file.seek(0)
        err_file.seek(0)
        stdout, stderr = out_file.read(), err_file.read()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(stdout) if stdout.strip().startswith("{") else {}
    requests = int(report.get("requests", requests_hint or 0))
    loop_seconds = float(report.get("seconds", wall)) or wall
    result = {
        "name": name,
        "requests": requests,
        "requests_per_s": round(requests / loop_seconds),
        "requests_per_cpu_s": round(requests / cpu) if cpu else None,
        "process_wall_s": round(wall, 2),
        "peak_rss_mb": round(max(peak_kb, after.ru_maxrss if peak_kb == 0 else 0) / 1024, 1),
        "command": ("edgeproxy " + " ".join(argv[argv.index("replay") :])) if "replay" in argv else "python -c ...",
    }
    if report.get("traffic"):
        entries = sum(t["records"] + sum(t["skipped"].values()) + t["invalid"] for t in report["traffic"])
        result["entries_read_per_s"] = round(entries / loop_seconds)
    if "memo" in report:
        result["memo_hit_rate"] = round(
            report["memo"]["hits"] / max(1, report["memo"]["hits"] + report["memo"]["misses"]), 3
        )
    print(f"  {name}: {result['requests_per_s']:,} req/s, peak RSS {result['peak_rss_mb']} MB", file=sys.stderr)
    return result


CONTEXT_ONLY = """
import json, sys, time
from edgeproxy.engine import context_from_description
from edgeproxy.files.snapshot_file import load_snapshot
snapshot = load_snapshot('rules')
t = time.perf_counter(); n = 0
with open(sys.argv[1], 'rb') as f:
    for line in f:
        context_from_description(json.loads(line.decode()), clock=time.time, new_uid=lambda: 'new',
                                 classifier=snapshot.classifier)
        n += 1
print(json.dumps({"requests": n, "seconds": time.perf_counter() - t}))
"""
PARSE_MSGSPEC = """
import json, sys, time
import msgspec
decode = msgspec.json.Decoder().decode
t = time.perf_counter(); n = 0
with open(sys.argv[1], 'rb') as f:
    for line in f:
        decode(line); n += 1
print(json.dumps({"requests": n, "seconds": time.perf_counter() - t}))
"""
PARSE_ONLY = """
import json, sys, time
t = time.perf_counter(); n = 0
with open(sys.argv[1], 'rb') as f:
    for line in f:
        json.loads(line.decode()); n += 1
print(json.dumps({"requests": n, "seconds": time.perf_counter() - t}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500_000, help="JSONL requests to generate (default 500000)")
    parser.add_argument("--har-pages", type=int, default=50_000, help="page views in the HAR (4 entries each)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "replay.json"))
    parser.add_argument("--keep", metavar="DIR", help="write the generated traffic here and keep it")
    args = parser.parse_args()

    replay = [sys.executable, "-m", "edgeproxy.cli", "replay", "--rules", "rules", "--json"]
    geoip = ["--geoip", "tests/data/GeoIP2-City-Test.mmdb"]
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep) if args.keep else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        jsonl = where / "traffic.jsonl"
        har = where / "traffic.har"
        har_big = where / "traffic-4x.har"
        print(f"generating {args.requests:,} requests and HARs of {args.har_pages:,} and {4 * args.har_pages:,} "
              "page views ...", file=sys.stderr)  # fmt: skip
        write_jsonl(jsonl, args.requests)
        write_har(har, args.har_pages)
        write_har(har_big, 4 * args.har_pages, seed=3)
        sizes = {p.name: round(p.stat().st_size / 1e6, 1) for p in (jsonl, har, har_big)}
        info = machine()
        results = [
            run_case("baseline: read + json.loads only (JSONL)", [sys.executable, "-c", PARSE_ONLY, str(jsonl)]),
            run_case("baseline: read + msgspec decode only (JSONL)", [sys.executable, "-c", PARSE_MSGSPEC, str(jsonl)]),
            run_case("baseline: + context_from_description", [sys.executable, "-c", CONTEXT_ONLY, str(jsonl)]),
            run_case("replay JSONL (memo + coverage, default)", [*replay, str(jsonl)]),
            run_case("replay JSONL --no-coverage", [*replay, str(jsonl), "--no-coverage"]),
            run_case("replay JSONL --no-memo --no-coverage", [*replay, str(jsonl), "--no-memo", "--no-coverage"]),
            run_case(f"replay HAR ({sizes['traffic.har']} MB)", [*replay, str(har), *geoip]),
            run_case(f"replay HAR 4x ({sizes['traffic-4x.har']} MB)", [*replay, str(har_big), *geoip]),
        ]
    base = next(r["requests_per_s"] for r in results if r["name"].startswith("replay JSONL (memo"))
    for r in results:
        r["ratio_to_default_jsonl"] = round(r["requests_per_s"] / base, 2) if base else None
    report = {"benchmark": "replay", "machine": info, "pinned_to_one_core": True, "traffic_mb": sizes,
              "results": results}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    load = info["loadavg_1m_at_start"]
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, load {load} (each case pinned "
          "to one core)")  # fmt: skip
    print(f"{'case':<46} {'req/s':>9} {'req/CPU-s':>10} {'entries/s':>10} {'peak RSS MB':>12} {'ratio':>6}")
    for r in results:
        print(f"{r['name']:<46} {r['requests_per_s']:>9,} {r['requests_per_cpu_s'] or 0:>10,} "
              f"{r.get('entries_read_per_s', r['requests_per_s']):>10,} {r['peak_rss_mb']:>12} "
              f"{r['ratio_to_default_jsonl']:>6}")  # fmt: skip
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
