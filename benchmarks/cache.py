"""Cache-hit throughput: edgeproxy serving personalized cache hits against the plain aiohttp pass-through.

    python benchmarks/cache.py [--duration 10] [--connections 32]

One run starts the Node example origin, benchmarks/passthrough.py and `edgeproxy serve` (defaults: memory cache,
personalization on), each on a free loopback port, and measures with wrk the same cacheable URL
(`/cacheable?cc=public, s-maxage=3600`) for 50 rotating visitors: through the pass-through (every request goes
to the origin) and through edgeproxy (each visitor's variant set is fetched once, then served from the cache).
Prints req/s, p50/p99 and the ratio (target: edgeproxy cache hits >= 2.5x the pass-through), with the machine;
writes benchmarks/results/cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decide import machine
from soak import free_port, log, run_wrk, wait

ROOT = Path(__file__).resolve().parent.parent
LUA = """
local n = 0
request = function()
  n = n + 1
  local headers = {["User-Agent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0",
                   ["Cookie"] = "cs-personalize-user-uid=bench-" .. (n % 50)}
  return wrk.format("GET", "/cacheable?cc=public,%20s-maxage=3600", headers)
end
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgeproxy-cache-bench-"))
    lua = tmp / "cache.lua"
    lua.write_text(LUA)
    procs: list[subprocess.Popen[bytes]] = []
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = ["taskset", "-c", str(cores[-1])] if len(cores) > 1 else []
    load_pin = ["taskset", "-c", str(cores[0])] if len(cores) > 1 else []
    try:
        origin, passthrough, edge = free_port(), free_port(), free_port()
        procs.append(subprocess.Popen([*load_pin, "node", str(ROOT / "examples/origin/server.js"), "--port",
                                       str(origin)], stdout=subprocess.DEVNULL))  # fmt: skip
        procs.append(subprocess.Popen([*pin, sys.executable, str(ROOT / "benchmarks/passthrough.py"), "--origin",
                                       f"http://127.0.0.1:{origin}", "--listen", f"127.0.0.1:{passthrough}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        procs.append(subprocess.Popen([*pin, sys.executable, "-m", "edgeproxy.cli", "serve", "--origin",
                                       f"http://127.0.0.1:{origin}", "--rules", str(ROOT / "rules"), "--listen",
                                       f"127.0.0.1:{edge}", "--state", f"sqlite:///{tmp}/state.db",
                                       "--log-level", "warning"], cwd=tmp, stdout=subprocess.DEVNULL))  # fmt: skip
        wait(f"http://127.0.0.1:{origin}/healthz")
        wait(f"http://127.0.0.1:{edge}/_edgeproxy/ready")
        time.sleep(1.0)
        results = {}
        for name, port in (("aiohttp pass-through", passthrough), ("edgeproxy cache hits", edge)):
            base = f"http://127.0.0.1:{port}"
            log(f"{name}: warm-up, then {args.duration:g} s ...")
            run_wrk(base, lua, 2, args.connections)  # fills the cache for every variant set
            if load_pin:
                os.sched_setaffinity(0, {cores[0]})
            results[name] = run_wrk(base, lua, args.duration, args.connections)
        ratio = results["edgeproxy cache hits"]["rps"] / max(1.0, results["aiohttp pass-through"]["rps"])
        report = {"benchmark": "cache", "machine": machine(), "duration_s": args.duration,
                  "connections": args.connections, "results": results, "ratio": round(ratio, 2),
                  "target": 2.5, "met": ratio >= 2.5}  # fmt: skip
        (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
        (ROOT / "benchmarks" / "results" / "cache.json").write_text(json.dumps(report, indent=2) + "\n")
        m = report["machine"]
        print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; proxies pinned to one core")
        for name, figures in results.items():
            latency = f"p50 {figures.get('p50_ms')} ms  p99 {figures.get('p99_ms')} ms"
            print(f"{name:<24} {figures['rps']:>9.0f} req/s  {latency}  errors {figures['errors']}")
        print(f"ratio {ratio:.2f}x (target 2.5x): {'met' if report['met'] else 'NOT met'}")
        return 0
    finally:
        for process in procs:
            process.send_signal(signal.SIGTERM)
        for process in procs:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
