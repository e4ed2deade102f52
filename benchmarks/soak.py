"""Soak: minutes of mixed traffic at 80% of measured capacity, with snapshot swaps and cache purges.

    python benchmarks/soak.py [--minutes 10] [--load 0.8]

Starts the Node example origin (pages cacheable for 5 s with stale-while-revalidate) and `edgeproxy serve` on
two swappable compiled snapshots. Measures capacity with wrk on the mix (pages with rotating visitors, Edge API
manifests, static and cacheable JSON), then runs the same mix paced (wrk's delay()) to `--load` x capacity in
one-minute wrk runs; every 10 s it swaps the snapshot (webhook) and purges a cache tag. Reports errors
(must be 0), p50/p99
per minute and overall, and the proxy's RSS over time (growth must be flat), with a chart
benchmarks/results/soak.svg and the figures in soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decide import machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROJECT = "6565d3b1a3f0c7b2e1d4a9f0"
TOKEN = "soak"
UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Version/17.5 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36",
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(url: str, timeout: float = 20) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


LUA = """
local uas = {%(uas)s}
local paths = {"/", "/products/storm-shell-jacket", "/checkout", "/cart", "/?utm_campaign=bf", "/", "/",
               "/_personalize/manifest", "/_personalize/manifest", "/static/site.css",
               "/cacheable?cc=public,%%20s-maxage=2&tag=soak"}
local n = 0
request = function()
  n = n + 1
  local path = paths[(n %% #paths) + 1]
  local uid = "soak-" .. (n %% 500)
  local headers = {["User-Agent"] = uas[(n %% #uas) + 1], ["Cookie"] = "cs-personalize-user-uid=" .. uid,
                   ["X-Project-Uid"] = "%(project)s", ["X-CS-Personalize-User-Uid"] = uid}
  return wrk.format("GET", path, headers)
end
%(delay)s
"""


def write_lua(tmp: Path, delay_ms: float | None) -> Path:
    delay = f"delay = function() return {delay_ms:.3f} end" if delay_ms else ""
    uas = ", ".join(json.dumps(ua) for ua in UAS)
    file = tmp / f"mix-{delay_ms or 0:.0f}.lua"
    file.write_text(LUA % {"uas": uas, "project": PROJECT, "delay": delay})
    return file


def run_wrk(base: str, lua: Path, seconds: float, connections: int) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "-s", str(lua), base]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    figures: dict[str, Any] = {"requests": 0, "errors": 0, "rps": 0.0}
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for line in out.splitlines():
        words = line.split()
        if line.strip().startswith(("50%", "99%")) and len(words) == 2:
            number = words[1].rstrip("usm")
            unit = words[1][len(number) :]
            figures["p50_ms" if words[0] == "50%" else "p99_ms"] = round(float(number) * units[unit], 2)
        elif "requests in" in line:
            figures["requests"] = int(words[0])
        elif line.startswith("Requests/sec:"):
            figures["rps"] = float(words[1])
        elif "Socket errors" in line:
            figures["errors"] += sum(int(w.rstrip(",")) for w in words if w.rstrip(",").isdigit())
        elif "Non-2xx or 3xx responses" in line:
            figures["errors"] += int(words[-1])
    return figures


def soak(base: str, tmp: Path, rate: float, minutes: float, proxy_pid: int, swap: Any) -> dict[str, Any]:
    import threading
    import urllib.request

    connections = 32
    lua = write_lua(tmp, connections * 1000.0 / rate)  # each connection waits so the total is ~rate
    rss: list[tuple[float, float]] = []
    chores = {"swaps": 0, "purges": 0, "chore_errors": 0}
    stop = threading.Event()
    start = time.monotonic()

    def post(path: str, body: bytes) -> dict[str, Any]:
        req = urllib.request.Request(base + path, data=body, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as reply:
            return dict(json.load(reply))

    def background() -> None:
        next_chore = 10.0
        while not stop.wait(1.0):
            elapsed = time.monotonic() - start
            if int(elapsed) % 5 == 0:
                rss.append((elapsed, rss_mib(proxy_pid)))
            if elapsed >= next_chore:
                next_chore += 10
                try:
                    swap()
                    if post("/_edgeproxy/sync", b"{}").get("result") == "swapped":
                        chores["swaps"] += 1
                    post("/_edgeproxy/purge", json.dumps({"tags": ["soak"]}).encode())
                    chores["purges"] += 1
                except OSError:
                    chores["chore_errors"] += 1

    thread = threading.Thread(target=background, daemon=True)
    rss.append((0.0, rss_mib(proxy_pid)))
    thread.start()
    per_minute = []
    for minute in range(max(1, round(minutes))):
        figures = run_wrk(base, lua, 60 if minutes >= 1 else minutes * 60, connections)
        figures["minute"] = minute + 1
        per_minute.append(figures)
        log(f"  minute {minute + 1}: {figures['rps']:.0f} req/s, {figures['errors']} errors, "
            f"p99 {figures.get('p99_ms')} ms, RSS {rss_mib(proxy_pid):.1f} MiB")  # fmt: skip
    stop.set()
    thread.join()
    rss.append((time.monotonic() - start, rss_mib(proxy_pid)))
    settled = [v for t, v in rss if t >= 60] or [v for _, v in rss]
    return {
        "requests": sum(m["requests"] for m in per_minute),
        "errors": sum(m["errors"] for m in per_minute) + chores["chore_errors"],
        "p99_ms_worst_minute": max(m.get("p99_ms", 0.0) for m in per_minute),
        "p50_ms_median_minute": sorted(m.get("p50_ms", 0.0) for m in per_minute)[len(per_minute) // 2],
        "swaps": chores["swaps"], "purges": chores["purges"], "per_minute": per_minute,
        "rss_mib": [(round(t, 1), round(v, 1)) for t, v in rss],
        "rss_growth_after_first_minute_mib": round(settled[-1] - settled[0], 1),
    }  # fmt: skip


def svg(report: dict[str, Any]) -> str:
    width, height, pad = 720, 300, 50
    rss = report["soak"]["rss_mib"]
    minutes = report["soak"]["per_minute"]
    t_max = max(t for t, _ in rss) or 1
    r_max = max(v for _, v in rss) * 1.2 or 1
    p_max = max((m.get("p99_ms", 0.0) for m in minutes), default=1) * 1.2 or 1

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * t / t_max

    rss_line = " ".join(f"{x(t):.1f},{height - pad - (height - 2 * pad) * v / r_max:.1f}" for t, v in rss)
    scale = (height - 2 * pad) / p_max
    p99_line = " ".join(f"{x((m['minute'] - 0.5) * 60):.1f},{height - pad - scale * m.get('p99_ms', 0.0):.1f}"
                        for m in minutes)  # fmt: skip
    s = report["soak"]
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" \
font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20" font-size="14">edgeproxy soak: {s["requests"]:,} requests, {s["errors"]} errors, \
worst-minute p99 {s["p99_ms_worst_minute"]} ms, RSS growth {s["rss_growth_after_first_minute_mib"]} MiB</text>
<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>
<polyline points="{rss_line}" fill="none" stroke="#2b6cb0" stroke-width="2"/>
<polyline points="{p99_line}" fill="none" stroke="#c05621" stroke-width="2"/>
<text x="{pad}" y="{height - 15}">time ({t_max:.0f} s)</text>
<text x="{width - 260}" y="40" fill="#2b6cb0">RSS (max {r_max / 1.2:.0f} MiB)</text>
<text x="{width - 260}" y="56" fill="#c05621">p99 per minute (max {p_max / 1.2:.1f} ms)</text>
</svg>
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity (default 0.8)")
    args = parser.parse_args()
    from edgeproxy.files.snapshot_file import load_snapshot, write_snapshot_file

    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-soak-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        b_rules = tmp / "b"
        shutil.copytree(ROOT / "rules", b_rules)
        priority = b_rules / "personalize" / "experiences-priority.json"
        order = json.loads(priority.read_text())
        order["priorityOrder"].reverse()
        priority.write_text(json.dumps(order))
        write_snapshot_file(load_snapshot(ROOT / "rules"), tmp / "a.msgpack")
        write_snapshot_file(load_snapshot(b_rules), tmp / "b.msgpack")
        link = tmp / "current.msgpack"
        os.symlink(tmp / "a.msgpack", link)
        flip = {"n": 0}

        def swap() -> None:
            flip["n"] += 1
            temp = tmp / "next.msgpack"
            temp.unlink(missing_ok=True)
            os.symlink(tmp / ("b.msgpack" if flip["n"] % 2 else "a.msgpack"), temp)
            os.replace(temp, link)

        origin_port, proxy_port = free_port(), free_port()
        procs.append(subprocess.Popen(["node", str(ROOT / "examples/origin/server.js"), "--port", str(origin_port),
                                       "--page-cache-control", "public, s-maxage=5, stale-while-revalidate=5"],
                                      stdout=subprocess.DEVNULL))  # fmt: skip
        proxy = subprocess.Popen(
            [sys.executable, "-m", "edgeproxy.cli", "serve", "--origin", f"http://127.0.0.1:{origin_port}",
             "--rules", str(link), "--listen", f"127.0.0.1:{proxy_port}", "--webhook-token", TOKEN,
             "--ops-token", TOKEN, "--state", f"sqlite:///{tmp}/state.db", "--log-level", "warning"],
            cwd=tmp, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proxy)
        base = f"http://127.0.0.1:{proxy_port}"
        wait(f"http://127.0.0.1:{origin_port}/healthz")
        wait(base + "/_edgeproxy/ready")
        log("measuring capacity (wrk, 15 s, 32 connections, the same mix) ...")
        capacity = run_wrk(base, write_lua(tmp, None), 15, 32)["rps"]
        rate = capacity * args.load
        log(f"capacity {capacity:.0f} req/s; soaking at {rate:.0f} req/s for {args.minutes:g} min ...")
        result = soak(base, tmp, rate, args.minutes, proxy.pid, swap)
        report = {"benchmark": "soak", "machine": machine(), "capacity_rps": round(capacity),
                  "load": args.load, "rate_rps": round(rate), "minutes": args.minutes, "soak": result}  # fmt: skip
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "soak.svg").write_text(svg(report))
        print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores")
        print(f"capacity {capacity:.0f} req/s, soak at {rate:.0f} req/s for {args.minutes:g} min: "
              f"{result['requests']:,} requests, {result['errors']} errors, median-minute p50 "
              f"{result['p50_ms_median_minute']} ms, worst-minute p99 {result['p99_ms_worst_minute']} ms, "
              f"{result['swaps']} swaps, {result['purges']} purges, "
              f"RSS growth after the first minute {result['rss_growth_after_first_minute_mib']} MiB")  # fmt: skip
        print(f"written: {RESULTS / 'soak.json'}, {RESULTS / 'soak.svg'}")
        return 0 if result["errors"] == 0 else 1
    finally:
        for process in procs:
            process.send_signal(signal.SIGTERM)
        for process in procs:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
