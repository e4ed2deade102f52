"""Proxy throughput and latency: edgeproxy against an origin hit directly, nginx and a plain aiohttp proxy.

    python benchmarks/proxy.py [--duration 10] [--connections 32] [--path /] [--rounds 1] [--no-pin]

One run starts, each on a free loopback port: the Node example origin (examples/origin), an nginx pass-through
(temporary config: one worker, upstream keep-alive), benchmarks/passthrough.py (a plain aiohttp reverse proxy,
the baseline) and `edgeproxy serve --rules rules` with default settings (personalization on). For each target it
runs a warm-up, then `wrk -t1 -c{connections} -d{duration}s --latency` with a Lua script that sends realistic
browser User-Agents and rotates ~50 `cs-personalize-user-uid` cookies, so edgeproxy makes real decisions. Then a
short one-connection run per target shows latency without queueing.

With two or more cores the proxy under test is pinned to the last core and wrk + the origin to the first, so every
proxy gets one whole core (nginx runs one worker; the Python proxies are one process each) and the load
generator never competes with it. `--no-pin` leaves placement to the scheduler.

Besides req/s and latency it reports each process's CPU time per request (steadier than req/s) and the CPU that
processes outside the benchmark used meanwhile: a run where they were busy is flagged as disturbed, and with
`--rounds N` the median of the undisturbed rounds stands for each target.

Targets: edgeproxy >= 85% of the plain aiohttp pass-through's req/s, and edgeproxy's p99 < origin direct's p99
+ 2 ms (both under the same wrk load). Writes benchmarks/results/proxy.json and a bar chart proxy.svg.
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
BASELINE = "aiohttp pass-through"
EDGEPROXY = "edgeproxy"
ORIGIN = "origin direct"
THROUGHPUT_TARGET = 0.85  # edgeproxy req/s over the plain aiohttp pass-through's
ADDED_P99_TARGET_MS = 2.0  # edgeproxy p99 minus origin direct p99
OTHER_CPU_WARNING = 15.0  # % of one core used by processes outside the benchmark before a run is flagged


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
-- Browser-like GETs of {path}, {uids} visitors (cs-personalize-user-uid cookie) and {agents} User-Agents in turn.
-- Requests are built once in init() (wrk sets the Host header there) so wrk spends its time on I/O.
local agents = {{ {agent_list} }}
local requests = {{}}
local n = 0

function init(args)
   local host = wrk.headers["Host"]
   for i = 1, {combinations} do
      requests[i] = wrk.format("GET", "{path}", {{
         ["Host"] = host,
         ["User-Agent"] = agents[(i % #agents) + 1],
         ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
         ["Accept-Language"] = "en-GB,en;q=0.9",
         ["Cookie"] = string.format("cs-personalize-user-uid=bench-visitor-%02d", (i % {uids}) + 1),
      }})
   end
end

request = function()
   n = n + 1
   return requests[(n % #requests) + 1]
end
"""


def write_lua(tmp: Path, path: str) -> Path:
    agents = ", ".join(json.dumps(agent) for agent in USER_AGENTS)
    combinations = USER_UIDS * len(USER_AGENTS)  # every (uid, agent) pair; 50 and 4 share a factor of 2
    script = tmp / "requests.lua"
    script.write_text(
        LUA_SCRIPT.format(
            path=path.replace('"', '\\"'),
            uids=USER_UIDS,
            agents=len(USER_AGENTS),
            agent_list=agents,
            combinations=combinations,
        )
    )
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


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'target':<22} {'req/s':>7} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'vs aiohttp':>10} {'+p99 ms':>8} "
        f"{'CPU µs/req':>10} {'1-conn p50':>10} {'1-conn p99':>10}  cpu % proxy/origin/wrk/other"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        loaded = r["loaded"]
        idle = r.get("one_connection")
        cpu = loaded["cpu_percent"]
        usage = "/".join(f"{cpu[who]:.0f}" if who in cpu else "-" for who in ("proxy", "origin", "wrk", "other"))
        per_request = loaded.get("cpu_us_per_request", {})
        cost = per_request.get("proxy", per_request.get("origin", float("nan")))
        label = r["target"] + (" *" if r["disturbed"] else "")
        lines.append(
            f"{label:<22} {loaded['requests_per_s']:>7,.0f} {loaded['p50_ms']:>7.2f} {loaded['p90_ms']:>7.2f} "
            f"{loaded['p99_ms']:>7.2f} {r['ratio_vs_baseline']:>10.0%} {r['added_p99_ms']:>+8.2f} {cost:>10.0f} "
            f"{(idle['p50_ms'] if idle else float('nan')):>10.3f} {(idle['p99_ms'] if idle else float('nan')):>10.3f}  "
            f"{usage}"
        )
    return "\n".join(lines)


def svg_chart(report: dict[str, Any]) -> str:
    """Three horizontal bar panels (req/s, p99 under load, CPU per request), targets dashed. Hand-written SVG."""
    results = report["results"]
    m, s, verdict = report["machine"], report["settings"], report["targets"]
    colors = {ORIGIN: "#8a9ba8", "nginx": "#4f8a5b", BASELINE: "#4a6fa5", EDGEPROXY: "#d9822b"}
    width, label_w, bar_w, row_h, panel_gap = 900, 190, 540, 34, 34
    top = 78
    panel_h = 44 + row_h * len(results)
    height = top + 3 * panel_h + 2 * panel_gap + 56
    baseline = next(r for r in results if r["target"] == BASELINE)["loaded"]
    origin = next(r for r in results if r["target"] == ORIGIN)["loaded"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        '<text x="20" y="28" font-size="18" font-weight="600">'
        f"edgeproxy vs pass-through proxies, GET {html.escape(s['path'])}</text>",
        f'<text x="20" y="50" fill="#555">{html.escape(m["cpu"])}, {m["cores"]} cores, Python {m["python"]}; '
        f"wrk -t1 -c{s['connections']} -d{s['duration_s']:g}s"
        + (f", median of {s['rounds']} rounds" if s["rounds"] > 1 else "")
        + ("; each proxy pinned to its own core" if s["pinned"] else "")
        + f"; edgeproxy {html.escape(s['edgeproxy_commit'])}</text>",
    ]

    def panel(
        y0: float,
        title: str,
        value_of: Callable[[dict[str, Any]], float],
        unit: str,
        fmt: Callable[[float], str],
        target: float,
        target_label: str,
    ) -> None:
        values = [value_of(r["loaded"]) for r in results]
        scale_max = max([*values, target]) * 1.12
        out.append(f'<text x="20" y="{y0 + 16}" font-size="14" font-weight="600">{html.escape(title)}</text>')
        x0 = 20 + label_w
        # the target line goes under the bars and labels, which get a white halo to stay readable over it
        tx = x0 + bar_w * target / scale_max
        y_end = y0 + 28 + len(results) * row_h - 6
        out.append(
            f'<line x1="{tx:.1f}" y1="{y0 + 26}" x2="{tx:.1f}" y2="{y_end}" stroke="#c0392b" '
            'stroke-width="1.5" stroke-dasharray="5,4"/>'
        )
        for i, (r, value) in enumerate(zip(results, values, strict=True)):
            y = y0 + 28 + i * row_h
            w = max(1.0, bar_w * value / scale_max)
            name = r["target"] + (" *" if r["disturbed"] else "")
            out.append(f'<text x="{x0 - 8}" y="{y + 17}" text-anchor="end">{html.escape(name)}</text>')
            out.append(
                f'<rect x="{x0}" y="{y + 2}" width="{w:.1f}" height="{row_h - 10}" rx="2" '
                f'fill="{colors.get(r["target"], "#777")}"/>'
            )
            out.append(
                f'<text x="{x0 + w + 6:.1f}" y="{y + 17}" stroke="#fff" stroke-width="4" '
                f'paint-order="stroke">{fmt(value)} {unit}</text>'
            )
        out.append(
            f'<text x="{tx:.1f}" y="{y_end + 14}" fill="#c0392b" font-size="11" text-anchor="middle">'
            f"{html.escape(target_label)}</text>"
        )

    def cpu_per_request(run: dict[str, Any]) -> float:
        per_request: dict[str, float] = run.get("cpu_us_per_request", {})
        return per_request.get("proxy", per_request.get("origin", 0.0))

    y = float(top)
    panel(
        y,
        "Throughput (higher is better)",
        lambda run: float(run["requests_per_s"]),
        "req/s",
        lambda v: f"{v:,.0f}",
        THROUGHPUT_TARGET * baseline["requests_per_s"],
        f"target: {THROUGHPUT_TARGET:.0%} of the aiohttp pass-through",
    )
    y += panel_h + panel_gap
    panel(
        y,
        f"p99 latency under that load, {s['connections']} connections (lower is better)",
        lambda run: float(run["p99_ms"]),
        "ms",
        lambda v: f"{v:.2f}",
        origin["p99_ms"] + ADDED_P99_TARGET_MS,
        f"target: origin direct p99 + {ADDED_P99_TARGET_MS:g} ms",
    )
    y += panel_h + panel_gap
    panel(
        y,
        "CPU time per request of the proxy, or of the origin for origin direct (lower is better)",
        cpu_per_request,
        "µs",
        lambda v: f"{v:,.0f}",
        cpu_per_request(baseline) / THROUGHPUT_TARGET,
        f"target: aiohttp pass-through ÷ {THROUGHPUT_TARGET:g}",
    )
    out.append(
        f'<text x="20" y="{height - 30}" fill="#333">'
        f"throughput target {'met' if verdict['throughput_met'] else 'MISSED'} "
        f"({verdict['throughput_ratio']:.0%} of the aiohttp pass-through; by CPU per request "
        f"{verdict['cpu_per_request_ratio']:.0%}); added p99 target {'met' if verdict['added_p99_met'] else 'MISSED'} "
        f"({verdict['added_p99_ms']:+.2f} ms)</text>"
    )
    if verdict["disturbed"]:
        out.append(
            f'<text x="20" y="{height - 12}" fill="#c0392b">* other processes were busy on the machine in every '
            "round of this target: its figures are disturbed</text>"
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
        headers={"User-Agent": USER_AGENTS[0], "Cookie": "cs-personalize-user-uid=bench-visitor-01"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        cookies = response.headers.get_all("Set-Cookie") or []
        applied = response.headers.get("x-cs-applied-variants")
    if not any(c.startswith("cs-personalize-manifest=") for c in cookies):
        raise RuntimeError(f"edgeproxy did not personalize {path} (no manifest cookie): is the path skipped?")
    return applied or "(none)"


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per target")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (one wrk thread)")
    parser.add_argument("--path", default="/", help="path requested from every target (default /)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all targets; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each run")
    parser.add_argument(
        "--one-connection", type=int, default=5, help="seconds of one-connection latency run per target (0 = skip)"
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the proxy under test to its own core (default on with 2+ cores)",
    )
    parser.add_argument("--json", default=str(RESULTS / "proxy.json"))
    parser.add_argument("--svg", default=str(RESULTS / "proxy.svg"))
    args = parser.parse_args()
    if args.duration < 1 or args.connections < 1 or args.rounds < 1 or args.warmup < 0 or args.one_connection < 0:
        parser.error("--duration, --connections and --rounds must be >= 1; --warmup, --one-connection >= 0 (whole s)")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    for tool in ("wrk", "nginx", "node"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            parser.error(f"{tool} is required and was not found on PATH")

    cores = sorted(os.sched_getaffinity(0))
    pinned = args.pin and len(cores) >= 2
    load_core, proxy_core = cores[0], cores[-1]
    load_cpus = {load_core} if pinned else None  # wrk and the origin
    proxy_cpus = {proxy_core} if pinned else None  # the proxy under test

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    procs = Processes()
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="edgeproxy-bench-") as tmp_name:
            tmp = Path(tmp_name)
            log("starting the Node origin, nginx, the aiohttp pass-through and edgeproxy ...")
            origin = start_origin(procs, tmp, load_cpus)
            proxies = [
                start_nginx(procs, tmp, origin.port, proxy_cpus),
                start_passthrough(procs, tmp, origin.port, proxy_cpus),
                start_edgeproxy(procs, tmp, origin.port, proxy_cpus),
            ]
            for service in proxies:
                wait_ready(service)
            applied = check_personalizes(proxies[-1].port, args.path)
            log(f"  origin :{origin.port}, " + ", ".join(f"{s.name} :{s.port}" for s in proxies))
            log(f"  edgeproxy personalizes {args.path} (origin applied: {applied})")
            script = write_lua(tmp, args.path)
            targets: list[tuple[str, Service]] = [(ORIGIN, origin), *((s.name, s) for s in proxies)]
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in targets}
            one_connection: dict[str, dict[str, Any]] = {}
            for round_no in range(1, args.rounds + 1):
                for index, (name, service) in enumerate(targets, 1):
                    url = f"http://127.0.0.1:{service.port}{args.path}"
                    watch = {"origin": origin.process.pid}
                    if service is not origin:
                        watch = {"proxy": service.process.pid, **watch}
                    where = f"round {round_no}/{args.rounds}, " if args.rounds > 1 else ""
                    log(
                        f"[{where}{index}/{len(targets)}] {name}: warm-up {args.warmup:g} s, then {args.duration:g} s "
                        f"with {args.connections} connections"
                    )
                    if args.warmup > 0:
                        run_wrk(procs, f"{name} warm-up", url, script, args.connections, args.warmup, tmp, load_cpus)
                    loaded = run_wrk(procs, name, url, script, args.connections, args.duration, tmp, load_cpus, watch)
                    cpu = loaded["cpu_percent"]
                    log(
                        f"    {name}: {loaded['requests_per_s']:,.0f} req/s, p50 {loaded['p50_ms']:.2f} ms, "
                        f"p99 {loaded['p99_ms']:.2f} ms; cpu % "
                        + ", ".join(f"{who} {value:.0f}" for who, value in cpu.items())
                    )
                    if disturbed(loaded):
                        log(
                            f"    WARNING {name}: other processes used {cpu['other']:.0f}% CPU "
                            f"(steal {loaded['steal_percent']:.0f}%) during the run: figures are disturbed"
                        )
                    if loaded["socket_errors"] or loaded["non_2xx_3xx"]:
                        log(
                            f"    WARNING {name}: {loaded['socket_errors']} socket errors, "
                            f"{loaded['non_2xx_3xx']} non-2xx/3xx responses"
                        )
                    runs[name].append(loaded)
                    if args.one_connection > 0 and round_no == 1:
                        idle = run_wrk(procs, f"{name} 1 conn", url, script, 1, args.one_connection, tmp, load_cpus)
                        log(f"    {name}, 1 connection: p50 {idle['p50_ms']:.3f} ms, p99 {idle['p99_ms']:.3f} ms")
                        one_connection[name] = idle
            for name, service in targets:
                # The median round by req/s stands for the target, chosen among the undisturbed rounds when there
                # are any; every round is kept in the JSON.
                clean = [run for run in runs[name] if not disturbed(run)]
                ordered = sorted(clean or runs[name], key=lambda run: run["requests_per_s"])
                entry: dict[str, Any] = {
                    "target": name,
                    "url": f"http://127.0.0.1:{service.port}{args.path}",
                    "loaded": ordered[(len(ordered) - 1) // 2],
                    "disturbed": not clean,
                    "rounds": runs[name],
                }
                if name in one_connection:
                    entry["one_connection"] = one_connection[name]
                results.append(entry)
            for service in [origin, *proxies]:
                if service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} died during the run:\n{service.log_tail()}")
    except KeyboardInterrupt:
        log("\ninterrupted: stopping everything this run started")
        return 130
    finally:
        procs.stop_all()

    base = next(r for r in results if r["target"] == BASELINE)
    origin_result = next(r for r in results if r["target"] == ORIGIN)
    for r in results:
        r["ratio_vs_baseline"] = round(r["loaded"]["requests_per_s"] / base["loaded"]["requests_per_s"], 4)
        r["added_p99_ms"] = round(r["loaded"]["p99_ms"] - origin_result["loaded"]["p99_ms"], 3)
        if "one_connection" in r and "one_connection" in origin_result:
            r["one_connection_added_p99_ms"] = round(
                r["one_connection"]["p99_ms"] - origin_result["one_connection"]["p99_ms"], 3
            )
    edge = next(r for r in results if r["target"] == EDGEPROXY)
    verdict = {
        "throughput_ratio": edge["ratio_vs_baseline"],
        "throughput_target": THROUGHPUT_TARGET,
        "throughput_met": edge["ratio_vs_baseline"] >= THROUGHPUT_TARGET,
        "added_p99_ms": edge["added_p99_ms"],
        "added_p99_target_ms": ADDED_P99_TARGET_MS,
        "added_p99_met": edge["added_p99_ms"] < ADDED_P99_TARGET_MS,
        # the same comparison by CPU time per request, which other load on the machine disturbs less
        "cpu_per_request_ratio": round(
            base["loaded"]["cpu_us_per_request"]["proxy"] / edge["loaded"]["cpu_us_per_request"]["proxy"], 4
        ),
        "disturbed": any(r["disturbed"] for r in results),
    }
    by_name = {r["target"]: r for r in results}
    throughput_disturbed = by_name[EDGEPROXY]["disturbed"] or by_name[BASELINE]["disturbed"]
    latency_disturbed = by_name[EDGEPROXY]["disturbed"] or by_name[ORIGIN]["disturbed"]
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
        "one_connection_s": args.one_connection,
        "path": args.path,
        "user_uids": USER_UIDS,
        "user_agents": len(USER_AGENTS),
        "pinned": pinned,
        "placement": {"wrk_and_origin": [load_core], "proxy": [proxy_core]} if pinned else None,
        "edgeproxy": "edgeproxy serve --rules rules (default settings, personalization on)",
        "edgeproxy_commit": git_commit(),
        "versions": {
            "wrk": tool_version(["wrk", "-v"]),
            "nginx": tool_version([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
            "node": tool_version(["node", "--version"]),
            "aiohttp": aiohttp.__version__,
            "event_loop": loop,
        },
    }
    report = {"benchmark": "proxy", "machine": machine(), "settings": settings, "targets": verdict, "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    Path(args.svg).write_text(svg_chart(report))

    m = machine()
    print(
        f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {loop}; "
        f"edgeproxy {settings['edgeproxy_commit']}; "
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s GET {args.path}"
        + (f"; proxy pinned to cpu {proxy_core}, wrk + origin to cpu {load_core}" if pinned else "")
    )
    print(table(results))
    print(
        "(vs aiohttp = req/s over the plain aiohttp pass-through's; +p99 = p99 minus origin direct's p99;\n"
        " CPU µs/req = the proxy's CPU time per request (the origin's for origin direct); 1-conn = one connection,"
        " no queueing)"
    )
    print(
        f"\nthroughput: edgeproxy at {verdict['throughput_ratio']:.1%} of the aiohttp pass-through "
        f"(target >= {THROUGHPUT_TARGET:.0%}): {outcome(verdict['throughput_met'], throughput_disturbed)}; "
        f"by CPU time per request {verdict['cpu_per_request_ratio']:.1%}"
    )
    print(
        f"latency:    edgeproxy adds {verdict['added_p99_ms']:+.2f} ms p99 over origin direct "
        f"(target < {ADDED_P99_TARGET_MS:g} ms): {outcome(verdict['added_p99_met'], latency_disturbed)}"
    )
    if verdict["disturbed"]:
        print(
            "\n* every round of this target had other processes busy on the machine (see the WARNINGs), so the\n"
            "  verdicts that involve it are not valid: rerun on a quiet machine or with more --rounds\n"
            "  (CPU µs/req holds up best under such noise)"
        )
    print(f"\nwritten: {args.json}\n         {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
