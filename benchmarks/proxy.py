"""Proxy throughput, cache hits and latency: edgeproxy against an origin hit directly, nginx and a plain aiohttp proxy.

    python benchmarks/proxy.py [--duration 10] [--connections 32] [--path /] [--cache-path PATH]
                               [--rate 1000] [--rate-connections 10] [--rate-duration 10] [--rounds 1] [--no-pin]

One run starts, each on a free loopback port: the Node example origin (examples/origin), an nginx pass-through
(temporary config: one worker, upstream keep-alive), benchmarks/passthrough.py (a plain aiohttp reverse proxy,
the baseline) and `edgeproxy serve --rules rules` with default settings (personalization on, memory cache on).
Six targets, each with a warm-up, then `wrk -t1 -c{connections} -d{duration}s --latency` with a Lua script that
sends realistic browser User-Agents and rotates 50 `cs-personalize-user-uid` cookies, so edgeproxy makes real
decisions: origin direct, nginx, the aiohttp pass-through and edgeproxy on `--path` (a personalized page), then
the aiohttp pass-through and edgeproxy on `--cache-path` (a page the origin marks cacheable; before measuring,
every visitor x User-Agent of the rotation must get `X-Cache: HIT` from edgeproxy, so it measures cache hits).

Latency is judged at a fixed request rate: after its load run each target gets `--rate-duration` seconds at about
`--rate` req/s over `--rate-connections` connections (wrk's delay() hook gives each connection a think time), a
rate below every target's capacity. Under saturation p99 measures queueing, not the proxy's own cost: any proxy
slower than the origin queues, and even the bare aiohttp pass-through "adds" several ms; so the saturated p99
difference is reported as information only.

With two or more cores the proxy under test is pinned to the last core and wrk + the origin to the first, so every
proxy gets one whole core (nginx runs one worker; the Python proxies are one process each) and the load
generator never competes with it. `--no-pin` leaves placement to the scheduler.

Besides req/s and latency it reports each process's CPU time per request (steadier than req/s) and the CPU that
processes outside the benchmark used meanwhile: a run where they were busy is flagged as disturbed, and with
`--rounds N` the median of the undisturbed rounds stands for each target.

Targets: edgeproxy >= 85% of the aiohttp pass-through's req/s on `--path`; edgeproxy cache hits >= 2.5x the
aiohttp pass-through's req/s on `--cache-path`; edgeproxy's p99 at the fixed rate < origin direct's p99 at the
fixed rate + 2 ms. Writes benchmarks/results/proxy.json and a bar chart proxy.svg.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decide import machine  # the house helper: same machine description in every result file

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
USER_UIDS = 50
# Real browser User-Agents (the first three are the ones in rules/requests.jsonl).
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.122 Mobile "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:127.0) Gecko/20100101 Firefox/127.0",
)
BROWSER_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.9",
}
DEFAULT_CACHE_PATH = "/cacheable?cc=public,%20s-maxage=3600"  # examples/origin/server.js: a page a shared cache keeps
ORIGIN = "origin direct"
BASELINE = "aiohttp pass-through"
EDGEPROXY = "edgeproxy"
CACHE_BASELINE = "aiohttp pass-through, cacheable URL"
CACHE_HITS = "edgeproxy cache hits"
THROUGHPUT_TARGET = 0.85  # edgeproxy req/s over the plain aiohttp pass-through's
CACHE_HIT_TARGET = 2.5  # edgeproxy cache hits req/s over the pass-through's on the same cacheable URL
ADDED_P99_TARGET_MS = 2.0  # edgeproxy p99 minus origin direct p99, both at the fixed rate
OTHER_CPU_WARNING = 15.0  # % of one core used by processes outside the benchmark before a run is flagged
RATE_SHORTFALL_WARNING = 0.8  # achieved over requested fixed rate below which a target did not keep up


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Processes:
    """Everything this run started; stopped (by process group id) in reverse order, whatever happens."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self, argv: Sequence[str], log_path: Path, cpus: set[int] | None, cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        def place() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        with log_path.open("wb") as out:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: Ctrl-C reaches us only, and we stop it in order
                preexec_fn=place if cpus else None,
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 8.0
        for process in reversed(self.started):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=5)
            # children of a stopped leader (nginx workers) share its group: make sure none outlive it
            _signal_group(process, signal.SIGKILL, quiet=True)
        self.started.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: int, quiet: bool = False) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        if not quiet and process.poll() is None:
            process.send_signal(sig)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(service: Service, path: str = "/healthz", timeout: float = 20.0) -> None:
    url = f"http://127.0.0.1:{service.port}{path}"
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last = response.status
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{service.name} not ready at {url} after {timeout:.0f}s ({last!r}):\n{service.log_tail()}")


def start_origin(procs: Processes, tmp: Path, cpus: set[int] | None) -> Service:
    log_path = tmp / "origin.log"
    process = procs.start(["node", str(ROOT / "examples" / "origin" / "server.js"), "--port", "0"], log_path, cpus)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
        if found:
            service = Service("origin", process, int(found.group(1)), log_path)
            wait_ready(service)
            return service
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"the Node origin did not start:\n{log_path.read_text(errors='replace')}")


NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-client-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_requests 1000000;   # like aiohttp and Node: do not recycle busy keep-alive connections
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"""


def start_nginx(procs: Processes, tmp: Path, origin_port: int, cpus: set[int] | None) -> Service:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, origin_port=origin_port, port=port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    argv = [nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
    return Service("nginx", procs.start(argv, tmp / "nginx.log", cpus), port, tmp / "nginx-error.log")


def start_passthrough(procs: Processes, tmp: Path, origin_port: int, cpus: set[int] | None) -> Service:
    port = free_port()
    argv = [
        sys.executable,
        str(ROOT / "benchmarks" / "passthrough.py"),
        "--origin",
        f"http://127.0.0.1:{origin_port}",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    return Service(BASELINE, procs.start(argv, tmp / "passthrough.log", cpus), port, tmp / "passthrough.log")


def start_edgeproxy(procs: Processes, tmp: Path, origin_port: int, cpus: set[int] | None) -> Service:
    port = free_port()
    script = Path(sys.executable).parent / "edgeproxy"
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "import sys; from edgeproxy.cli import main; sys.exit(main())"]
    )
    argv = [
        *command,
        "serve",
        "--origin",
        f"http://127.0.0.1:{origin_port}",
        "--rules",
        str(ROOT / "rules"),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    # cwd = the temporary directory: default settings put the SQLite state store (edgeproxy-state.sqlite3) there
    return Service(EDGEPROXY, procs.start(argv, tmp / "edgeproxy.log", cpus, cwd=tmp), port, tmp / "edgeproxy.log")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (nginx's worker is a child of the master)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


# ---------------------------------------------------------------- wrk

LUA_SCRIPT = """\
-- Browser-like GETs of {path}: {uids} visitors (cs-personalize-user-uid cookie) x {agents} User-Agents, every pair
-- in turn (the rotation of visitor_headers() in benchmarks/proxy.py). Requests are built once in init() (wrk sets
-- the Host header there) so wrk spends its time on I/O.
local agents = {{ {agent_list} }}
local requests = {{}}
local n = 0

function init(args)
   local host = wrk.headers["Host"]
   for i = 0, {combinations} - 1 do
      requests[i + 1] = wrk.format("GET", {path}, {{
         ["Host"] = host,
         ["User-Agent"] = agents[(math.floor(i / {uids}) % #agents) + 1],
         ["Accept"] = {accept},
         ["Accept-Language"] = {accept_language},
         ["Cookie"] = string.format("cs-personalize-user-uid=bench-visitor-%02d", (i % {uids}) + 1),
      }})
   end
end

request = function()
   n = n + 1
   return requests[(n % #requests) + 1]
end
"""

# Fixed rate: after each response a connection waits this think time before its next request (wrk's delay() hook,
# which wrk counts outside the latency). wrk takes whole ms, so the fraction is one more ms with that probability.
LUA_PACING = """
local whole = math.floor({think_ms})
local part = {think_ms} - whole

function delay()
   if math.random() < part then
      return whole + 1
   end
   return whole
end
"""


def visitor_headers(i: int) -> dict[str, str]:
    """The headers of request i of the rotation, as LUA_SCRIPT builds them (for checks made outside wrk)."""
    return {
        "User-Agent": USER_AGENTS[(i // USER_UIDS) % len(USER_AGENTS)],
        **BROWSER_HEADERS,
        "Cookie": f"cs-personalize-user-uid=bench-visitor-{i % USER_UIDS + 1:02d}",
    }


def write_lua(tmp: Path, name: str, path: str, think_ms: float | None = None) -> Path:
    """The request rotation for `path`; with `think_ms`, each connection pauses that long between requests."""
    script = tmp / f"{name}.lua"
    text = LUA_SCRIPT.format(
        path=json.dumps(path),  # a JSON string of printable ASCII is a Lua string literal too
        uids=USER_UIDS,
        agents=len(USER_AGENTS),
        agent_list=", ".join(json.dumps(agent) for agent in USER_AGENTS),
        combinations=USER_UIDS * len(USER_AGENTS),
        accept=json.dumps(BROWSER_HEADERS["Accept"]),
        accept_language=json.dumps(BROWSER_HEADERS["Accept-Language"]),
    )
    if think_ms is not None:
        text += LUA_PACING.format(think_ms=f"{think_ms:.6f}")
    script.write_text(text)
    return script


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(value: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not found:
        raise ValueError(f"unreadable wrk duration {value!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not rps:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    latency = {p: _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.MULTILINE)}
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests_per_s": round(float(rps.group(1)), 1),
        "requests": int(total.group(1)) if total else None,
        "p50_ms": round(latency["50"], 3),
        "p75_ms": round(latency["75"], 3),
        "p90_ms": round(latency["90"], 3),
        "p99_ms": round(latency["99"], 3),
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def run_wrk(
    procs: Processes,
    label: str,
    url: str,
    script: Path,
    connections: int,
    seconds: float,
    tmp: Path,
    cpus: set[int] | None,
    watch: dict[str, int] | None = None,
) -> dict[str, Any]:
    wrk = shutil.which("wrk") or "/usr/bin/wrk"
    out = tmp / "wrk.out"
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s", "-s", str(script), url]
    watch = watch or {}
    cpu_before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped meanwhile
    system_before = system_cpu()
    started = time.monotonic()
    process = procs.start(argv, out, cpus)
    next_report = started + 2.0
    while process.poll() is None:
        time.sleep(0.2)
        now = time.monotonic()
        if now >= next_report and now - started < seconds:
            log(f"    {label}: {now - started:4.1f}/{seconds:g} s")
            next_report = now + 2.0
    elapsed = time.monotonic() - started
    procs.started.remove(process)
    text = out.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}) on {url}:\n{text}")
    result = parse_wrk(text)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watch.items()}
    used["wrk"] = children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
    busy, steal = (after - before for after, before in zip(system_cpu(), system_before, strict=True))
    # Anything else busy on the machine meanwhile (another job, the rest of a test suite) disturbs the figures.
    used["other"] = max(0.0, busy - sum(used.values()))
    result["cpu_percent"] = {name: round(100 * value / elapsed, 1) for name, value in used.items()}
    result["steal_percent"] = round(100 * steal / elapsed, 1)
    if result["requests"]:
        # CPU time per request: the efficiency figure, steadier than req/s when the machine is shared
        result["cpu_us_per_request"] = {
            name: round(1e6 * used[name] / result["requests"], 1) for name in ("proxy", "origin") if name in used
        }
    return result


def disturbed(run: dict[str, Any]) -> bool:
    return bool(run["cpu_percent"]["other"] > OTHER_CPU_WARNING or run["steal_percent"] > OTHER_CPU_WARNING)


def system_cpu() -> tuple[float, float]:
    """Busy and stolen CPU seconds of the whole machine so far, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    # user, nice, system: what per-process utime + stime add up to (irq/softirq time is nobody's, so left out)
    user, nice, system = values[:3]
    steal = values[7] if len(values) > 7 else 0
    return (user + nice + system) / tick, steal / tick


# ---------------------------------------------------------------- report


def cpu_per_request(run: dict[str, Any]) -> float:
    """The proxy's CPU µs per request, or the origin's for origin direct."""
    per_request: dict[str, float] = run.get("cpu_us_per_request", {})
    return per_request.get("proxy", per_request.get("origin", float("nan")))


def any_disturbed(result: dict[str, Any]) -> bool:
    return bool(result["disturbed"] or result["fixed_rate_disturbed"])


def table(results: list[dict[str, Any]]) -> str:
    def number(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    head = (
        f"{'target':<37} {'req/s':>7} {'load p50':>8} {'load p99':>8} {'vs pass':>7} {'CPU µs/req':>10} "
        f"{'rate r/s':>8} {'rate p50':>8} {'rate p99':>8} {'rate +p99':>9}  cpu % proxy/origin/wrk/other"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        loaded, paced = r["loaded"], r["fixed_rate"]
        cpu = loaded["cpu_percent"]
        usage = "/".join(f"{cpu[who]:.0f}" if who in cpu else "-" for who in ("proxy", "origin", "wrk", "other"))
        label = r["target"] + (" *" if any_disturbed(r) else "")
        lines.append(
            f"{label:<37} {loaded['requests_per_s']:>7,.0f} {loaded['p50_ms']:>8.2f} {loaded['p99_ms']:>8.2f} "
            f"{r['ratio_vs_baseline']:>6.2f}x {cpu_per_request(loaded):>10.0f} "
            f"{paced['requests_per_s']:>8,.0f} {paced['p50_ms']:>8.3f} {paced['p99_ms']:>8.3f} "
            f"{number(r['added_p99_fixed_rate_ms'], '+.3f'):>9}  {usage}"
        )
    return "\n".join(lines)


def svg_chart(report: dict[str, Any]) -> str:
    """Three horizontal bar panels (req/s, p99 at the fixed rate, CPU per request), targets dashed.

    Rows come in two groups, the personalized page and the cacheable URL, each with its own baseline and target
    lines. Hand-written SVG.
    """
    results = report["results"]
    m, s, verdict = report["machine"], report["settings"], report["targets"]
    by_name = {r["target"]: r for r in results}
    colors = {
        ORIGIN: "#8a9ba8",
        "nginx": "#4f8a5b",
        BASELINE: "#4a6fa5",
        EDGEPROXY: "#d9822b",
        CACHE_BASELINE: "#7f9cc9",
        CACHE_HITS: "#b35c12",
    }
    groups = [[r for r in results if r["baseline"] == BASELINE], [r for r in results if r["baseline"] != BASELINE]]
    width, label_w, bar_w, row_h, group_gap, panel_gap = 920, 250, 520, 30, 20, 30
    top = 116
    panel_h = 28 + row_h * len(results) + group_gap + 16
    footer = 5 * 18 + 10
    height = top + 3 * panel_h + 2 * panel_gap + footer
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        '<text x="20" y="28" font-size="18" font-weight="600">'
        "edgeproxy vs pass-through proxies: throughput, cache hits, latency at a fixed rate</text>",
        f'<text x="20" y="50" fill="#555">{html.escape(m["cpu"])}, {m["cores"]} cores, Python {m["python"]}; '
        f"edgeproxy {html.escape(s['edgeproxy_commit'])}"
        + ("; each proxy pinned to its own core, wrk + origin to another" if s["pinned"] else "")
        + "</text>",
        f'<text x="20" y="70" fill="#555">GET {html.escape(s["path"])} (personalized page) and '
        f"GET {html.escape(s['cache_path'])} (cacheable URL), {s['user_uids']} visitors x "
        f"{s['user_agents']} User-Agents</text>",
        f'<text x="20" y="90" fill="#555">load: wrk -t1 -c{s["connections"]} -d{s["duration_s"]:g}s; fixed rate: '
        f"~{s['rate_per_s']:,} req/s over {s['rate_connections']} connections for {s['rate_duration_s']:g} s"
        + (f"; median of {s['rounds']} rounds" if s["rounds"] > 1 else "")
        + "</text>",
    ]

    def panel(
        y0: float,
        title: str,
        value_of: Callable[[dict[str, Any]], float],
        unit: str,
        fmt: Callable[[float], str],
        targets: Sequence[tuple[float, str] | None],
    ) -> None:
        """`targets`: one (value, label) or None per group of rows."""
        values = [value_of(r) for r in results]
        scale_max = max([*values, *(t[0] for t in targets if t)]) * 1.12
        out.append(f'<text x="20" y="{y0 + 16}" font-size="14" font-weight="600">{html.escape(title)}</text>')
        x0 = 20 + label_w
        y = y0 + 28
        for group, target in zip(groups, targets, strict=True):
            y_start, y_end = y, y + len(group) * row_h - 6
            if target:
                # the target line goes under the bars and labels, which get a white halo to stay readable over it
                tx = x0 + bar_w * target[0] / scale_max
                out.append(
                    f'<line x1="{tx:.1f}" y1="{y_start - 2}" x2="{tx:.1f}" y2="{y_end}" stroke="#c0392b" '
                    'stroke-width="1.5" stroke-dasharray="5,4"/>'
                )
                # centred under the line, unless that would run off the right edge
                anchor = "end" if tx + 3.2 * len(target[1]) > width - 10 else "middle"
                out.append(
                    f'<text x="{tx:.1f}" y="{y_end + 13}" fill="#c0392b" font-size="11" text-anchor="{anchor}">'
                    f"{html.escape(target[1])}</text>"
                )
            for r in group:
                value = value_of(r)
                w = max(1.0, bar_w * value / scale_max)
                name = r["target"] + (" *" if any_disturbed(r) else "")
                out.append(f'<text x="{x0 - 8}" y="{y + 17}" text-anchor="end">{html.escape(name)}</text>')
                out.append(
                    f'<rect x="{x0}" y="{y + 2}" width="{w:.1f}" height="{row_h - 8}" rx="2" '
                    f'fill="{colors.get(r["target"], "#777")}"/>'
                )
                out.append(
                    f'<text x="{x0 + w + 6:.1f}" y="{y + 17}" stroke="#fff" stroke-width="4" '
                    f'paint-order="stroke">{fmt(value)} {unit}</text>'
                )
                y += row_h
            y += group_gap

    page_base, cache_base = by_name[BASELINE], by_name[CACHE_BASELINE]
    y = float(top)
    panel(
        y,
        "Throughput under load (higher is better)",
        lambda r: float(r["loaded"]["requests_per_s"]),
        "req/s",
        lambda v: f"{v:,.0f}",
        [
            (
                THROUGHPUT_TARGET * page_base["loaded"]["requests_per_s"],
                f"target: {THROUGHPUT_TARGET:.0%} of the aiohttp pass-through",
            ),
            (
                CACHE_HIT_TARGET * cache_base["loaded"]["requests_per_s"],
                f"target: {CACHE_HIT_TARGET:g}x the aiohttp pass-through on the cacheable URL",
            ),
        ],
    )
    y += panel_h + panel_gap
    panel(
        y,
        f"p99 latency at a fixed ~{s['rate_per_s']:,} req/s, no queueing (lower is better)",
        lambda r: float(r["fixed_rate"]["p99_ms"]),
        "ms",
        lambda v: f"{v:.2f}",
        [
            (
                by_name[ORIGIN]["fixed_rate"]["p99_ms"] + ADDED_P99_TARGET_MS,
                f"target: origin direct p99 + {ADDED_P99_TARGET_MS:g} ms",
            ),
            None,
        ],
    )
    y += panel_h + panel_gap
    panel(
        y,
        "CPU time per request under load: the proxy's, the origin's for origin direct (lower is better)",
        lambda r: cpu_per_request(r["loaded"]),
        "µs",
        lambda v: f"{v:,.0f}",
        [
            (
                cpu_per_request(page_base["loaded"]) / THROUGHPUT_TARGET,
                f"target: aiohttp pass-through ÷ {THROUGHPUT_TARGET:g}",
            ),
            (
                cpu_per_request(cache_base["loaded"]) / CACHE_HIT_TARGET,
                f"target: its pass-through ÷ {CACHE_HIT_TARGET:g}",
            ),
        ],
    )
    lines = [
        f"throughput target {'met' if verdict['throughput_met'] else 'MISSED'}: edgeproxy at "
        f"{verdict['throughput_ratio']:.0%} of the aiohttp pass-through (by CPU per request "
        f"{verdict['cpu_per_request_ratio']:.0%})",
        f"cache-hit target {'met' if verdict['cache_hit_met'] else 'MISSED'}: edgeproxy cache hits at "
        f"{verdict['cache_hit_ratio']:.2f}x the aiohttp pass-through on the same URL (by CPU per request "
        f"{verdict['cache_hit_cpu_per_request_ratio']:.2f}x)",
        f"latency target {'met' if verdict['added_p99_met'] else 'MISSED'}: edgeproxy adds "
        f"{verdict['added_p99_fixed_rate_ms']:+.2f} ms p99 over origin direct at the fixed rate",
        f"for information, under saturation ({s['connections']} connections, includes queueing): "
        f"{verdict['added_p99_saturated_ms']:+.2f} ms p99",
    ]
    y = height - footer + 14
    for line in lines:
        out.append(f'<text x="20" y="{y}" fill="#333">{html.escape(line)}</text>')
        y += 18
    if verdict["disturbed"]:
        out.append(
            f'<text x="20" y="{y}" fill="#c0392b">* other processes were busy on the machine in every round of '
            "this target: its figures are disturbed</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def outcome(met: bool, disturbed: bool) -> str:
    verdict = "PASS" if met else "FAIL"
    return f"{verdict}, not valid: disturbed *" if disturbed else verdict


def git_commit() -> str:
    """HEAD of the checkout, `+dirty` when edgeproxy/ has uncommitted changes: which code these figures are for."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "edgeproxy"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return (head.stdout.strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")


def check_personalizes(port: int, path: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        headers=visitor_headers(0),
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        cookies = response.headers.get_all("Set-Cookie") or []
        applied = response.headers.get("x-cs-applied-variants")
    if not any(c.startswith("cs-personalize-manifest=") for c in cookies):
        raise RuntimeError(f"edgeproxy did not personalize {path} (no manifest cookie): is the path skipped?")
    return applied or "(none)"


def check_cache_hits(port: int, path: str) -> int:
    """Every visitor x User-Agent of the rotation asks for `path` twice; the second answer must be a cache hit."""
    url = f"http://127.0.0.1:{port}{path}"
    pairs = USER_UIDS * len(USER_AGENTS)
    answers: list[str] = []
    for _ in range(2):  # the first pass fills the cache, the second is checked
        answers = []
        for i in range(pairs):
            with urllib.request.urlopen(urllib.request.Request(url, headers=visitor_headers(i)), timeout=5) as reply:
                reply.read()
                answers.append(reply.headers.get("X-Cache") or "(no X-Cache)")
    missed = [(i, answer) for i, answer in enumerate(answers) if answer != "HIT"]
    if missed:
        examples = "; ".join(
            f"{visitor_headers(i)['Cookie']}, User-Agent {i // USER_UIDS + 1}: {a}" for i, a in missed[:3]
        )
        raise RuntimeError(
            f"edgeproxy did not serve {path} from its cache: {len(missed)} of {pairs} visitor requests were not "
            f"X-Cache: HIT after a first request each (e.g. {examples}). Is the cache on in the default settings, "
            "and does the origin mark that URL cacheable (Cache-Control: public, s-maxage)? See --cache-path."
        )
    return pairs


def cache_counters(port: int) -> tuple[int, int] | None:
    """edgeproxy's own counts of cache hits and of requests (its ops status endpoint), or None if it does not say."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_edgeproxy/status", timeout=5) as reply:
            status = json.load(reply)
        return int(status["cache"]["results"].get("hit", 0)), int(status["requests"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class Target:
    """One row: a service, the path asked of it, and the row its req/s is compared with."""

    name: str
    service: Service
    path: str
    baseline: str
    load_script: Path  # as many requests as the connections allow
    rate_script: Path  # the same requests, paced to the fixed rate

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}{self.path}"


def report_run(label: str, run: dict[str, Any]) -> None:
    cpu = run["cpu_percent"]
    log(
        f"    {label}: {run['requests_per_s']:,.0f} req/s, p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms; "
        "cpu % " + ", ".join(f"{who} {value:.0f}" for who, value in cpu.items())
    )
    if disturbed(run):
        log(
            f"    WARNING {label}: other processes used {cpu['other']:.0f}% CPU (steal {run['steal_percent']:.0f}%) "
            "during the run: figures are disturbed"
        )
    if run["socket_errors"] or run["non_2xx_3xx"]:
        log(f"    WARNING {label}: {run['socket_errors']} socket errors, {run['non_2xx_3xx']} non-2xx/3xx responses")


def measure(
    procs: Processes, target: Target, origin: Service, args: argparse.Namespace, tmp: Path, cpus: set[int] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Warm-up, the load run, then the fixed-rate run of one target."""
    watch = {"origin": origin.process.pid}
    if target.service is not origin:
        watch = {"proxy": target.service.process.pid, **watch}
    if args.warmup > 0:
        run_wrk(
            procs, f"{target.name} warm-up", target.url, target.load_script, args.connections, args.warmup, tmp, cpus
        )
    counters_before = cache_counters(target.service.port) if target.name == CACHE_HITS else None
    loaded = run_wrk(
        procs, target.name, target.url, target.load_script, args.connections, args.duration, tmp, cpus, watch
    )
    counters_after = cache_counters(target.service.port) if counters_before else None
    if counters_before and counters_after and counters_after[1] > counters_before[1]:
        # of the requests edgeproxy served during the run (warm-up excluded), the share served from the cache
        hits, requests = (after - before for after, before in zip(counters_after, counters_before, strict=True))
        loaded["cache_hit_share"] = round(hits / requests, 4)
    report_run(target.name, loaded)
    if loaded.get("cache_hit_share", 1.0) < 0.99:
        log(f"    WARNING {target.name}: only {loaded['cache_hit_share']:.1%} of the requests were cache hits")
    label = f"{target.name} at ~{args.rate:,} req/s"
    paced = run_wrk(
        procs, label, target.url, target.rate_script, args.rate_connections, args.rate_duration, tmp, cpus, watch
    )
    report_run(label, paced)
    if paced["requests_per_s"] < RATE_SHORTFALL_WARNING * args.rate:
        log(
            f"    WARNING {label}: achieved {paced['requests_per_s']:,.0f} req/s, under "
            f"{RATE_SHORTFALL_WARNING:.0%} of the rate: its latency was high enough to slow the pacing"
        )
    return loaded, paced


def median_run(runs: list[dict[str, Any]], key: str) -> tuple[dict[str, Any], bool]:
    """The median run by `key`, among the undisturbed runs when there are any; and whether all were disturbed."""
    clean = [run for run in runs if not disturbed(run)]
    ordered = sorted(clean or runs, key=lambda run: float(run[key]))
    return ordered[(len(ordered) - 1) // 2], not clean


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per target")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (one wrk thread)")
    parser.add_argument("--path", default="/", help="the personalized page asked of every target (default /)")
    parser.add_argument(
        "--cache-path",
        default=DEFAULT_CACHE_PATH,
        help=f"a URL the origin marks cacheable, for the cache-hit comparison (default {DEFAULT_CACHE_PATH})",
    )
    parser.add_argument("--rate", type=int, default=1000, help="requests/s of the fixed-rate latency runs")
    parser.add_argument("--rate-connections", type=int, default=10, help="connections of the fixed-rate runs")
    parser.add_argument("--rate-duration", type=int, default=10, help="seconds of fixed rate per target")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all targets; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each run")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the proxy under test to its own core (default on with 2+ cores)",
    )
    parser.add_argument("--json", default=str(RESULTS / "proxy.json"))
    parser.add_argument("--svg", default=str(RESULTS / "proxy.svg"))
    args = parser.parse_args()
    if min(args.duration, args.connections, args.rounds, args.rate, args.rate_connections, args.rate_duration) < 1:
        parser.error("--duration, --connections, --rounds, --rate, --rate-connections, --rate-duration must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0 (whole seconds)")
    for option, path in (("--path", args.path), ("--cache-path", args.cache_path)):
        if not re.fullmatch(r"/[!-~]*", path):
            parser.error(f"{option} must start with / and be printable ASCII without spaces (%-encode the rest)")
    for tool in ("wrk", "nginx", "node"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            parser.error(f"{tool} is required and was not found on PATH")
    return args


def collect(
    targets: list[Target], runs: dict[str, list[dict[str, Any]]], paced: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One entry per target: its median runs, every round, and how it compares with its baseline and the origin."""
    results: list[dict[str, Any]] = []
    for target in targets:
        loaded, loaded_disturbed = median_run(runs[target.name], "requests_per_s")
        fixed, fixed_disturbed = median_run(paced[target.name], "p99_ms")
        results.append(
            {
                "target": target.name,
                "url": target.url,
                "path": target.path,
                "baseline": target.baseline,
                "loaded": loaded,
                "disturbed": loaded_disturbed,
                "fixed_rate": fixed,
                "fixed_rate_disturbed": fixed_disturbed,
                "rounds": runs[target.name],
                "fixed_rate_rounds": paced[target.name],
            }
        )
    by_name = {r["target"]: r for r in results}
    origin = by_name[ORIGIN]
    for r in results:
        r["ratio_vs_baseline"] = round(
            r["loaded"]["requests_per_s"] / by_name[r["baseline"]]["loaded"]["requests_per_s"], 4
        )
        # Only rows that ask for the same path as origin direct compare their latency with it.
        same_path = r["path"] == origin["path"]
        r["added_p99_fixed_rate_ms"] = (
            round(r["fixed_rate"]["p99_ms"] - origin["fixed_rate"]["p99_ms"], 3) if same_path else None
        )
        r["added_p99_saturated_ms"] = (
            round(r["loaded"]["p99_ms"] - origin["loaded"]["p99_ms"], 3) if same_path else None
        )
    return results


def verdicts(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    by_name = {r["target"]: r for r in results}
    base, edge = by_name[BASELINE], by_name[EDGEPROXY]
    cache_base, hits = by_name[CACHE_BASELINE], by_name[CACHE_HITS]
    origin = by_name[ORIGIN]

    def cpu_ratio(baseline: dict[str, Any], target: dict[str, Any]) -> float:
        # the same comparison by CPU time per request, which other load on the machine disturbs less
        return round(cpu_per_request(baseline["loaded"]) / cpu_per_request(target["loaded"]), 4)

    return {
        "throughput_ratio": edge["ratio_vs_baseline"],
        "throughput_target": THROUGHPUT_TARGET,
        "throughput_met": edge["ratio_vs_baseline"] >= THROUGHPUT_TARGET,
        "cpu_per_request_ratio": cpu_ratio(base, edge),
        "throughput_disturbed": base["disturbed"] or edge["disturbed"],
        "cache_hit_ratio": hits["ratio_vs_baseline"],
        "cache_hit_target": CACHE_HIT_TARGET,
        "cache_hit_met": hits["ratio_vs_baseline"] >= CACHE_HIT_TARGET,
        "cache_hit_cpu_per_request_ratio": cpu_ratio(cache_base, hits),
        "cache_hit_share": hits["loaded"].get("cache_hit_share"),
        "cache_hit_disturbed": cache_base["disturbed"] or hits["disturbed"],
        "rate": {
            "requested_per_s": args.rate,
            "connections": args.rate_connections,
            "duration_s": args.rate_duration,
            "achieved_per_s": {r["target"]: r["fixed_rate"]["requests_per_s"] for r in results},
        },
        "added_p99_fixed_rate_ms": edge["added_p99_fixed_rate_ms"],
        "added_p99_target_ms": ADDED_P99_TARGET_MS,
        "added_p99_met": edge["added_p99_fixed_rate_ms"] < ADDED_P99_TARGET_MS,
        "added_p99_disturbed": origin["fixed_rate_disturbed"] or edge["fixed_rate_disturbed"],
        # information only: under saturation p99 is queueing
        "added_p99_saturated_ms": edge["added_p99_saturated_ms"],
        "disturbed": any(any_disturbed(r) for r in results),
    }


def main() -> int:
    args = parse_args()
    cores = sorted(os.sched_getaffinity(0))
    pinned = args.pin and len(cores) >= 2
    load_core, proxy_core = cores[0], cores[-1]
    load_cpus = {load_core} if pinned else None  # wrk and the origin
    proxy_cpus = {proxy_core} if pinned else None  # the proxy under test
    think_ms = 1000.0 * args.rate_connections / args.rate  # per connection, so that all of them make ~--rate

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeproxy-bench-") as tmp_name:
            tmp = Path(tmp_name)
            log("starting the Node origin, nginx, the aiohttp pass-through and edgeproxy ...")
            origin = start_origin(procs, tmp, load_cpus)
            nginx = start_nginx(procs, tmp, origin.port, proxy_cpus)
            passthrough = start_passthrough(procs, tmp, origin.port, proxy_cpus)
            edgeproxy = start_edgeproxy(procs, tmp, origin.port, proxy_cpus)
            for service in (nginx, passthrough, edgeproxy):
                wait_ready(service)
            log(
                f"  origin :{origin.port}, " + ", ".join(f"{s.name} :{s.port}" for s in (nginx, passthrough, edgeproxy))
            )
            applied = check_personalizes(edgeproxy.port, args.path)
            log(f"  edgeproxy personalizes {args.path} (origin applied: {applied})")
            pairs = check_cache_hits(edgeproxy.port, args.cache_path)
            log(f"  edgeproxy answers X-Cache: HIT on {args.cache_path} for all {pairs} visitor x User-Agent pairs")
            scripts = {
                path: (write_lua(tmp, f"load{i}", path), write_lua(tmp, f"rate{i}", path, think_ms))
                for i, path in enumerate((args.path, args.cache_path))
            }
            rows = [
                (ORIGIN, origin, args.path, BASELINE),
                ("nginx", nginx, args.path, BASELINE),
                (BASELINE, passthrough, args.path, BASELINE),
                (EDGEPROXY, edgeproxy, args.path, BASELINE),
                (CACHE_BASELINE, passthrough, args.cache_path, CACHE_BASELINE),
                (CACHE_HITS, edgeproxy, args.cache_path, CACHE_BASELINE),
            ]
            targets = [Target(name, svc, path, base, *scripts[path]) for name, svc, path, base in rows]
            runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            paced: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            for round_no in range(1, args.rounds + 1):
                for index, target in enumerate(targets, 1):
                    where = f"round {round_no}/{args.rounds}, " if args.rounds > 1 else ""
                    log(
                        f"[{where}{index}/{len(targets)}] {target.name} (GET {target.path}): warm-up {args.warmup} s, "
                        f"{args.duration} s with {args.connections} connections, then {args.rate_duration} s at "
                        f"~{args.rate:,} req/s over {args.rate_connections}"
                    )
                    loaded, fixed = measure(procs, target, origin, args, tmp, load_cpus)
                    runs[target.name].append(loaded)
                    paced[target.name].append(fixed)
            for service in (origin, nginx, passthrough, edgeproxy):
                if service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} died during the run:\n{service.log_tail()}")
    except KeyboardInterrupt:
        log("\ninterrupted: stopping everything this run started")
        return 130
    finally:
        procs.stop_all()

    results = collect(targets, runs, paced)
    verdict = verdicts(results, args)
    import aiohttp

    try:
        import uvloop

        loop = f"uvloop {getattr(uvloop, '__version__', '?')}"
    except ImportError:
        loop = "asyncio"
    settings = {
        "duration_s": args.duration,
        "connections": args.connections,
        "wrk_threads": 1,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "path": args.path,
        "cache_path": args.cache_path,
        "rate_per_s": args.rate,
        "rate_connections": args.rate_connections,
        "rate_duration_s": args.rate_duration,
        "rate_think_ms": round(think_ms, 3),
        "user_uids": USER_UIDS,
        "user_agents": len(USER_AGENTS),
        "pinned": pinned,
        "placement": {"wrk_and_origin": [load_core], "proxy": [proxy_core]} if pinned else None,
        "edgeproxy": "edgeproxy serve --rules rules (default settings: personalization on, memory cache on)",
        "edgeproxy_commit": git_commit(),
        "versions": {
            "wrk": tool_version(["wrk", "-v"]),
            "nginx": tool_version([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
            "node": tool_version(["node", "--version"]),
            "aiohttp": aiohttp.__version__,
            "event_loop": loop,
        },
    }
    m = machine()
    report = {"benchmark": "proxy", "machine": m, "settings": settings, "targets": verdict, "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    Path(args.svg).write_text(svg_chart(report))

    print(
        f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {loop}; "
        f"edgeproxy {settings['edgeproxy_commit']}"
        + (f"; proxy pinned to cpu {proxy_core}, wrk + origin to cpu {load_core}" if pinned else "")
        + f"\nload: wrk -t1 -c{args.connections} -d{args.duration}s; fixed rate: ~{args.rate:,} req/s over "
        f"{args.rate_connections} connections for {args.rate_duration} s ({think_ms:g} ms think time each); "
        f"GET {args.path}, cacheable URL GET {args.cache_path}"
    )
    print(table(results))
    hit_share = verdict["cache_hit_share"]
    hits_note = (
        "" if hit_share is None else f"\n edgeproxy cache hits: {hit_share:.1%} of its requests under load were hits"
    )
    print(
        "(req/s, load p50/p99 = under load; vs pass = req/s over the aiohttp pass-through's on the same URL;\n"
        " CPU µs/req = the proxy's CPU time per request under load (the origin's for origin direct);\n"
        " rate r/s, rate p50/p99 = achieved rate and latency at the fixed rate; rate +p99 = p99 minus origin direct's"
        " at the fixed rate)" + hits_note
    )
    print(
        f"\nthroughput: edgeproxy at {verdict['throughput_ratio']:.1%} of the aiohttp pass-through on GET {args.path} "
        f"(target >= {THROUGHPUT_TARGET:.0%}): {outcome(verdict['throughput_met'], verdict['throughput_disturbed'])}; "
        f"by CPU time per request {verdict['cpu_per_request_ratio']:.1%}"
    )
    print(
        f"cache hits: edgeproxy cache hits at {verdict['cache_hit_ratio']:.2f}x the aiohttp pass-through on the same "
        f"cacheable URL (target >= {CACHE_HIT_TARGET:g}x): "
        f"{outcome(verdict['cache_hit_met'], verdict['cache_hit_disturbed'])}; "
        f"by CPU time per request {verdict['cache_hit_cpu_per_request_ratio']:.2f}x"
    )
    print(
        f"latency:    at a fixed ~{args.rate:,} req/s edgeproxy adds {verdict['added_p99_fixed_rate_ms']:+.2f} ms p99 "
        f"over origin direct (target < {ADDED_P99_TARGET_MS:g} ms): "
        f"{outcome(verdict['added_p99_met'], verdict['added_p99_disturbed'])}\n"
        f"            (information: under saturation, {args.connections} connections, includes queueing: "
        f"{verdict['added_p99_saturated_ms']:+.2f} ms p99)"
    )
    if verdict["disturbed"]:
        print(
            "\n* every round of this target (under load or at the fixed rate) had other processes busy on the\n"
            "  machine (see the WARNINGs), so the verdicts that involve it are not valid: rerun on a quiet machine\n"
            "  or with more --rounds (CPU µs/req holds up best under such noise)"
        )
    print(f"\nwritten: {args.json}\n         {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
