"""Events at fleet scale: two `edgeproxy serve` instances on one Redis (state) and one PostgreSQL (`--events`), a
steady load of SDK event writes (POST /events, 100 events per request) through both, PostgreSQL stopped for a
while in the middle.

    python benchmarks/events_fleet.py [--events 1000000] [--rate 10000] [--outage 60] [--outage-at 0.3]

Samples every second: the stream's length (XLEN), Redis's memory (INFO memory used_memory) and what the instances
drained (their /status). Reports the drain rate in steady state (the posting rate, when the drain keeps up), while
catching up after the outage and once the load ended (the drain's own pace), the time to drain the backlog back to
its steady level and to empty, and checks that every event that got a 2xx is in PostgreSQL exactly once. Writes
benchmarks/results/events_fleet.json and a chart, benchmarks/results/events_fleet.svg (stream length and Redis
memory over time; flat = bounded).

Needs redis-server and PostgreSQL's binaries (scripts/install-test-tools.sh installs both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from decide import machine  # noqa: E402  (the house helper: same machine description in every result file)
from support.postgres import start_postgres  # noqa: E402
from support.processes import free_port, http_status, wait_for_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PROJECT = json.loads((ROOT / "rules" / "personalize" / "projects" / "projects.json").read_text())[0]["uid"]
STREAM = f"edgeproxy:{PROJECT}:events"
PER_REQUEST = 100  # events per SDK request (max_events_per_request's default)
WRITERS = 16  # concurrent client connections


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is required (scripts/install-test-tools.sh installs it)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FAKETIME")}
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    wait_for_port(port)
    return process, f"redis://127.0.0.1:{port}/0"


def start_proxy(tmp: Path, n: int, redis_url: str, events_url: str, cap: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    workdir = tmp / f"proxy-{n}"
    workdir.mkdir()
    argv = [sys.executable, "-m", "edgeproxy.cli", "serve", "--origin", f"http://127.0.0.1:{free_port()}",
            "--rules", str(ROOT / "rules"), "--listen", f"127.0.0.1:{port}", "--state", redis_url,
            "--events", events_url, "--events-buffer-max", str(cap), "--log-level", "warning"]  # fmt: skip
    with (tmp / f"proxy-{n}.log").open("ab") as out:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while http_status(url + "/_edgeproxy/ready") != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"edgeproxy did not start: {(tmp / f'proxy-{n}.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return process, url


class Load:
    """WRITERS tasks posting PER_REQUEST events per request, alternating instances, paced to `rate` events/s in
    total, until `total` events were sent. Counts what got a 2xx; keys are unique (b0000000...)."""

    def __init__(self, proxies: list[str], total: int, rate: float) -> None:
        self.proxies = proxies
        self.total = total
        self.rate = rate
        self.sent = 0
        self.accepted = 0
        self.refused = 0
        self.failed = 0
        self.started = 0.0

    async def run(self, session: aiohttp.ClientSession) -> None:
        self.started = time.monotonic()
        await asyncio.gather(*(self._writer(session, w) for w in range(WRITERS)))

    async def _writer(self, session: aiohttp.ClientSession, w: int) -> None:
        requests = 0
        while self.sent < self.total:
            first = self.sent
            self.sent += PER_REQUEST
            # The schedule: the n-th request of the whole load leaves at n * PER_REQUEST / rate seconds.
            due = self.started + first / self.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            body = json.dumps([{"type": "EVENT", "eventKey": f"b{first + i:07d}"} for i in range(PER_REQUEST)])
            headers = {"X-Project-Uid": PROJECT, "X-CS-Personalize-User-Uid": f"bench-u{first // PER_REQUEST % 5000}",
                       "Content-Type": "text/plain"}  # fmt: skip
            target = self.proxies[requests % len(self.proxies)]
            requests += 1
            try:
                async with session.post(target + "/_personalize/events", data=body, headers=headers) as reply:
                    await reply.read()
                    if 200 <= reply.status < 300:
                        self.accepted += PER_REQUEST
                    elif reply.status == 503:
                        self.refused += PER_REQUEST
                    else:
                        self.failed += PER_REQUEST
            except (aiohttp.ClientError, TimeoutError):
                self.failed += PER_REQUEST


async def drained(session: aiohttp.ClientSession, proxies: list[str]) -> int:
    total = 0
    for proxy in proxies:
        async with session.get(proxy + "/_edgeproxy/status") as reply:
            total += int((await reply.json())["events"]["thisProcess"]["drained"])
    return total


def chart(samples: list[dict[str, float]], outage: tuple[float, float], cap: int, path: Path) -> None:
    """Stream length (left axis) and Redis used memory (right axis) over time; the outage shaded."""
    width, height, left, right, top, bottom = 820, 360, 70, 70, 30, 40
    t_max = max(s["t"] for s in samples) or 1.0
    length_max = max(max(s["stream"] for s in samples), 1.0) * 1.1
    memory_max = max(s["redis_mb"] for s in samples) * 1.1

    def x(t: float) -> float:
        return left + (width - left - right) * t / t_max

    def y(value: float, top_value: float) -> float:
        return height - bottom - (height - top - bottom) * value / top_value

    def line(key: str, top_value: float) -> str:
        return " ".join(f"{x(s['t']):.1f},{y(s[key], top_value):.1f}" for s in samples)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect x="{x(outage[0]):.1f}" y="{top}" width="{x(outage[1]) - x(outage[0]):.1f}" '
        f'height="{height - top - bottom}" fill="#f3d6d6"/>',
        f'<text x="{x(outage[0]) + 4:.1f}" y="{top + 14}" fill="#a33">PostgreSQL stopped</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#333"/>',
        f'<line x1="{width - right}" y1="{top}" x2="{width - right}" y2="{height - bottom}" stroke="#333"/>',
        f'<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="{line("stream", length_max)}"/>',
        f'<polyline fill="none" stroke="#d08000" stroke-width="2" points="{line("redis_mb", memory_max)}"/>',
        f'<text x="{left}" y="{top - 10}" fill="#1f5fbf">stream length (max {int(length_max / 1.1):,}; cap '
        f"{cap:,})</text>",
        f'<text x="{width - right}" y="{top - 10}" fill="#d08000" text-anchor="end">Redis used_memory, MB</text>',
        f'<text x="{(width) / 2:.0f}" y="{height - 8}" text-anchor="middle">seconds</text>',
    ]
    for i in range(5):
        value = length_max / 1.1 * i / 4
        parts.append(f'<text x="{left - 6}" y="{y(value, length_max) + 4:.1f}" text-anchor="end" '
                     f'fill="#1f5fbf">{int(value):,}</text>')  # fmt: skip
        megabytes = memory_max / 1.1 * i / 4
        parts.append(f'<text x="{width - right + 6}" y="{y(megabytes, memory_max) + 4:.1f}" '
                     f'fill="#d08000">{megabytes:.0f}</text>')  # fmt: skip
        seconds = t_max * i / 4
        parts.append(f'<text x="{x(seconds):.1f}" y="{height - bottom + 16}" text-anchor="middle">{seconds:.0f}'
                     "</text>")  # fmt: skip
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


async def measure(args: argparse.Namespace, proxies: list[str], redis_url: str, postgres: Any) -> dict[str, Any]:
    load = Load(proxies, args.events, args.rate)
    samples: list[dict[str, float]] = []
    outage_at = args.events * args.outage_at / args.rate  # seconds into the load
    outage: list[float] = []
    connector = aiohttp.TCPConnector(limit=WRITERS * 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session, \
            Redis.from_url(redis_url) as redis:  # fmt: skip
        baseline_mb = int((await redis.info("memory"))["used_memory"]) / 1e6
        writing = asyncio.ensure_future(load.run(session))
        started = time.monotonic()
        drain_done_at: float | None = None
        load_done_at: float | None = None
        steady_backlog = 1_000.0  # the backlog counts as drained when back to this (or twice the steady maximum)
        while True:
            t = time.monotonic() - started
            memory = int((await redis.info("memory"))["used_memory"]) / 1e6
            sample = {"t": round(t, 2), "stream": float(await redis.xlen(STREAM)), "redis_mb": round(memory, 2),
                      "accepted": float(load.accepted), "drained": float(await drained(session, proxies))}  # fmt: skip
            samples.append(sample)
            if load_done_at is None and writing.done():
                load_done_at = t
            if not outage:
                steady_backlog = max(steady_backlog, 2 * sample["stream"])
            if not outage and t >= outage_at:
                log(f"[{t:6.1f} s] stopping PostgreSQL for {args.outage:g} s")
                await asyncio.to_thread(postgres.stop)
                outage.append(t)
            elif len(outage) == 1 and t >= outage[0] + args.outage:
                await asyncio.to_thread(postgres.start)
                outage.append(time.monotonic() - started)
                log(f"[{outage[1]:6.1f} s] PostgreSQL started again; backlog {int(sample['stream']):,}")
            elif len(outage) == 2 and drain_done_at is None and sample["stream"] <= steady_backlog:
                drain_done_at = t
                log(f"[{t:6.1f} s] backlog drained ({int(sample['stream'])} left)")
            if int(t) % 5 == 0 and (not samples[:-1] or int(samples[-2]["t"]) % 5 != 0):
                log(f"[{t:6.1f} s] sent {load.sent:,} accepted {load.accepted:,} drained {int(sample['drained']):,} "
                    f"stream {int(sample['stream']):,} redis {memory:.1f} MB")  # fmt: skip
            if writing.done() and len(outage) == 2 and sample["stream"] == 0 and sample["drained"] >= load.accepted:
                break
            await asyncio.sleep(1.0)
        await writing
    return {"load": load, "samples": samples, "outage": outage, "drain_done_at": drain_done_at,
            "load_done_at": load_done_at, "baseline_mb": baseline_mb}  # fmt: skip


def rate_between(samples: list[dict[str, float]], start: float, end: float) -> float:
    inside = [s for s in samples if start <= s["t"] <= end]
    if len(inside) < 2 or inside[-1]["t"] == inside[0]["t"]:
        return 0.0
    return (inside[-1]["drained"] - inside[0]["drained"]) / (inside[-1]["t"] - inside[0]["t"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=10_000, help="events per second posted (default 10000)")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds PostgreSQL is stopped (default 60)")
    parser.add_argument("--outage-at", type=float, default=0.3, help="when, as a share of the load (default 0.3)")
    parser.add_argument("--cap", type=int, default=1_000_000, help="events_buffer_max (default 1000000)")
    args = parser.parse_args()
    load_before = os.getloadavg()  # the VM is shared: what else ran says how to read the rates
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-events-fleet-"))
    processes: list[subprocess.Popen[bytes]] = []
    postgres = None
    try:
        redis_process, redis_url = start_redis(tmp)
        processes.append(redis_process)
        postgres = start_postgres(tmp / "postgres")
        events_url = postgres.create_database("bench")
        proxies = []
        for n in range(2):
            process, url = start_proxy(tmp, n, redis_url, events_url, args.cap)
            processes.append(process)
            proxies.append(url)
        log(f"fleet: {proxies}, Redis {redis_url}, PostgreSQL {events_url}")
        result = asyncio.run(measure(args, proxies, redis_url, postgres))
        load: Load = result["load"]
        samples, outage = result["samples"], result["outage"]
        with psycopg.connect(events_url) as db:
            rows, distinct = db.execute("SELECT count(*), count(DISTINCT event_key) FROM edgeproxy_events").fetchone()
        steady = rate_between(samples, 2.0, outage[0])
        catch_up_end = result["drain_done_at"] or samples[-1]["t"]
        catch_up = rate_between(samples, outage[1], catch_up_end)
        emptied_at = next(s["t"] for s in samples if s["t"] > outage[1] and s["stream"] == 0)
        after_load = rate_between(samples, max(result["load_done_at"] or 0.0, outage[1]), emptied_at)
        before = [s for s in samples if s["t"] < outage[0]]
        after = [s for s in samples if result["drain_done_at"] and s["t"] > result["drain_done_at"]]
        figures = {
            "events_posted": load.sent, "events_accepted": load.accepted, "events_refused": load.refused,
            "events_failed": load.failed, "rows_in_postgres": rows, "distinct_events_in_postgres": distinct,
            "exactly_once": rows == distinct == load.accepted,
            "rate_posted_events_per_s": args.rate, "outage_seconds": round(outage[1] - outage[0], 1),
            "backlog_at_restart": int(max(s["stream"] for s in samples if outage[0] <= s["t"] <= outage[1] + 1)),
            "time_to_drain_backlog_s": round(catch_up_end - outage[1], 1),
            "time_to_empty_stream_s": round(emptied_at - outage[1], 1),
            "load_ended_at_s": round(result["load_done_at"] or 0.0, 1), "postgres_back_at_s": round(outage[1], 1),
            "drain_rate_steady_events_per_s": round(steady), "drain_rate_catching_up_events_per_s": round(catch_up),
            "drain_rate_after_the_load_events_per_s": round(after_load),
            "stream_length_max_before_outage": int(max((s["stream"] for s in before), default=0)),
            "stream_length_max_after_drain": int(max((s["stream"] for s in after), default=0)),
            "redis_mb_baseline": round(result["baseline_mb"], 1),
            "redis_mb_max_before_outage": round(max((s["redis_mb"] for s in before), default=0), 1),
            "redis_mb_max_during_outage": round(max(s["redis_mb"] for s in samples), 1),
            "redis_mb_end": round(samples[-1]["redis_mb"], 1),
            "cap": args.cap,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }  # fmt: skip
        for key, value in figures.items():
            print(f"{key:40s} {value}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "events_fleet.json").write_text(json.dumps(
            {"machine": machine(), "command": " ".join(sys.argv), "figures": figures, "samples": samples}, indent=1
        ) + "\n")  # fmt: skip
        chart(samples, (outage[0], outage[1]), args.cap, RESULTS / "events_fleet.svg")
        log(f"wrote {RESULTS / 'events_fleet.json'} and {RESULTS / 'events_fleet.svg'}")
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if postgres is not None:
            postgres.remove()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
