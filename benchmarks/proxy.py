"""edgeproxy against the servers users would put there instead, on realistic traffic, in one run.

    python benchmarks/proxy.py [--visitors 20000] [--rounds 3] [--duration 10] [--workers 1]
                               [--origin nginx|node] [--latency] [--no-pin]

Started by the benchmark on free loopback ports:
- the origin: a static nginx serving a 5 KB HTML page, `GET /page` without Cache-Control (a personalized page)
  and `GET /cached/page` with `Cache-Control: public, s-maxage=3600` (what a shared cache may keep);
  `--origin node` uses the Node example origin instead (`/` and `/cacheable?cc=public,%20s-maxage=3600`);
- the targets: `edgeproxy serve --rules rules` on the default settings (personalization on, memory cache on), the
  plain aiohttp pass-through (benchmarks/passthrough.py), nginx with proxy_pass and with proxy_cache (one worker,
  upstream keep-alive), Varnish (`varnishd -F`, malloc storage) and the Python floor (benchmarks/floor_proxy.py:
  uvloop + httptools, no work), in its two modes: a keep-alive proxy and a server that writes a prebuilt page.

Two sections, each target against the same origin and the same load:
- pages:  personalized pages, no cache — edgeproxy, aiohttp pass-through, nginx proxy_pass, floor proxy;
- hits:   cache hits — edgeproxy, nginx proxy_cache, Varnish, floor writing a prebuilt page. Before measuring,
  every hit target is primed and checked: twice through the whole visitor rotation for edgeproxy (the second pass
  must be >= 99% `X-Cache: HIT`), a short run for the others (their key has no visitor in it); during each measured
  edgeproxy run its own counters (`/_edgeproxy/status`) give the share of hits.

Load: `wrk -t1 -c32` with a Lua script: `--visitors` returning visitors (`cs-personalize-user-uid` cookie) in a
rotation that visits each of them once per cycle, 4 browser User-Agents, browser Accept headers. Every target is
primed once with a whole cycle, so visitors are returning ones. Then `--rounds` interleaved rounds (each round
starts one target later, so none always runs right after the same neighbour); each run is `--warmup` seconds
unmeasured, then `--duration` measured seconds; the median round stands for each target.

Each target is pinned to one core (the last), wrk and the origin to another (the first); `--no-pin` leaves
placement to the scheduler. `--workers N` (N > 1) adds rows for `edgeproxy --workers N`, pinned to up to N cores
other than wrk's; with fewer cores than that, the run measures its CPU time per request and the report models the
scaling from it (req/s on k cores ~= k x 1,000,000 / CPU us per request, while wrk and the origin keep up).

Reported per target: req/s (median and every round), its CPU time per request (steadier than req/s on a shared
machine), p50/p99 under load, and the ratio edgeproxy / target; CPU that processes outside the benchmark used
meanwhile flags a run as disturbed (the median then prefers undisturbed rounds). `--latency` adds, after each load
run, a run at a fixed `--rate` (wrk delay() pacing) and origin direct at that rate, for latency without queueing.
Writes benchmarks/results/proxy.json and a bar chart benchmarks/results/proxy.svg.
"""

from __future__ import annotations

import argparse
import html
import importlib.metadata
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decide import machine  # the house helper: same machine description in every result file

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.122 Mobile "
    "Safari/537.36",
)
BROWSER_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.9",
}
PAGE_BODY = "<html><body>" + "x" * 5000 + "</body></html>\n"  # the static origin's 5 KB page
PATHS = {  # origin kind -> (personalized page, cacheable page)
    "nginx": ("/page", "/cached/page"),
    "node": ("/", "/cacheable?cc=public,%20s-maxage=3600"),
}
PAGES, HITS = "pages", "hits"
SECTION_TITLES = {PAGES: "personalized pages, no cache", HITS: "cache hits"}
EDGEPROXY = "edgeproxy"
PASSTHROUGH = "aiohttp pass-through"
NGINX_PASS = "nginx proxy_pass"
NGINX_CACHE = "nginx proxy_cache"
VARNISH = "Varnish"
FLOOR_PROXY = "Python floor (uvloop + httptools proxy)"
FLOOR_HIT = "Python floor (prebuilt page)"
ORIGIN_DIRECT = "origin direct"
# The goals of issue 20: edgeproxy's req/s over these baselines' in the same run.
GOALS = {PAGES: (NGINX_PASS, 0.6), HITS: (NGINX_CACHE, 0.8)}
OTHER_CPU_WARNING = 15.0  # % of one core used by processes outside the benchmark before a run is flagged
HIT_SHARE_REQUIRED = 0.99  # of the checked priming requests of a hit target


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
            # children of a stopped leader (nginx workers, Varnish's cache process) share its group
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


def tool(name: str) -> str:
    """The path of a system tool, looking in /usr/sbin too (nginx and varnishd live there on Debian)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise RuntimeError(f"{name} is required and was not found on PATH or in /usr/sbin")
    return found


def wait_ready(service: Service, path: str, timeout: float = 30.0) -> None:
    """Until GET `path` answers 200 (so the whole chain behind the service works), or fail with its log."""
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


ORIGIN_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/origin.pid;
error_log {tmp}/origin-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/site;
        default_type text/html;
        location / {{ try_files /index.html =404; }}
        location /cached/ {{
            add_header Cache-Control "public, s-maxage=3600";
            try_files /index.html =404;
        }}
    }}
}}
"""

PROXIES_CONF = """\
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
    proxy_cache_path {tmp}/nginx-cache keys_zone=pages:10m;
    keepalive_requests 1000000;   # like aiohttp and edgeproxy: do not recycle busy keep-alive connections
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    server {{   # proxy_pass
        listen 127.0.0.1:{pass_port};
        location / {{ proxy_pass http://origin; }}
    }}
    server {{   # proxy_cache: what the origin's Cache-Control allows, one entry per URL
        listen 127.0.0.1:{cache_port};
        location / {{
            proxy_pass http://origin;
            proxy_cache pages;
            proxy_cache_key $request_uri;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"""

# Varnish's builtin VCL passes requests with a Cookie; a site that caches pages for returning visitors strips the
# cookie for them (the usual recipe), which is what the other caches' key does too (the URL).
VARNISH_VCL = """\
vcl 4.1;
backend origin {{ .host = "127.0.0.1"; .port = "{origin_port}"; }}
sub vcl_recv {{ unset req.http.Cookie; }}
sub vcl_deliver {{
    if (obj.hits > 0) {{ set resp.http.X-Cache = "HIT"; }} else {{ set resp.http.X-Cache = "MISS"; }}
}}
"""


def start_origin(procs: Processes, tmp: Path, kind: str, cpus: set[int] | None) -> Service:
    if kind == "node":
        log_path = tmp / "origin.log"
        process = procs.start(
            [tool("node"), str(ROOT / "examples" / "origin" / "server.js"), "--port", "0"], log_path, cpus
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
            if found:
                service = Service("origin (Node example)", process, int(found.group(1)), log_path)
                wait_ready(service, "/healthz")
                return service
            time.sleep(0.05)
        raise RuntimeError(f"the Node origin did not start:\n{log_path.read_text(errors='replace')}")
    (tmp / "site").mkdir()
    (tmp / "site" / "index.html").write_text(PAGE_BODY)
    port = free_port()
    conf = tmp / "origin.conf"
    conf.write_text(ORIGIN_CONF.format(tmp=tmp, port=port))
    argv = [tool("nginx"), "-p", str(tmp), "-e", str(tmp / "origin-error.log"), "-c", str(conf)]
    service = Service(
        "origin (static nginx)", procs.start(argv, tmp / "origin.log", cpus), port, tmp / "origin-error.log"
    )
    wait_ready(service, PATHS["nginx"][0])
    return service


def start_nginx(procs: Processes, tmp: Path, origin_port: int, cpus: set[int] | None) -> tuple[Service, Service]:
    """One nginx (one worker) with two servers: proxy_pass and proxy_cache."""
    pass_port, cache_port = free_port(), free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(PROXIES_CONF.format(tmp=tmp, origin_port=origin_port, pass_port=pass_port, cache_port=cache_port))
    argv = [tool("nginx"), "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
    process = procs.start(argv, tmp / "nginx.log", cpus)
    log_path = tmp / "nginx-error.log"
    return Service(NGINX_PASS, process, pass_port, log_path), Service(NGINX_CACHE, process, cache_port, log_path)


def start_varnish(procs: Processes, tmp: Path, origin_port: int, cpus: set[int] | None) -> Service:
    port = free_port()
    vcl = tmp / "default.vcl"
    vcl.write_text(VARNISH_VCL.format(origin_port=origin_port))
    argv = [
        tool("varnishd"), "-F", "-n", str(tmp / "varnish"), "-a", f"127.0.0.1:{port}", "-f", str(vcl),
        "-s", "malloc,256m", "-p", "thread_pools=1",
    ]  # fmt: skip
    return Service(VARNISH, procs.start(argv, tmp / "varnish.log", cpus), port, tmp / "varnish.log")


def start_passthrough(procs: Processes, tmp: Path, origin_port: int, cpus: set[int] | None) -> Service:
    port = free_port()
    script = str(ROOT / "benchmarks" / "passthrough.py")
    argv = [sys.executable, script, "--origin", f"http://127.0.0.1:{origin_port}", "--listen", f"127.0.0.1:{port}"]
    return Service(PASSTHROUGH, procs.start(argv, tmp / "passthrough.log", cpus), port, tmp / "passthrough.log")


def start_floor(procs: Processes, tmp: Path, mode: str, origin_port: int, path: str, cpus: set[int] | None) -> Service:
    port = free_port()
    script = str(ROOT / "benchmarks" / "floor_proxy.py")
    argv = [sys.executable, script, mode, "--origin", f"127.0.0.1:{origin_port}", "--listen", f"127.0.0.1:{port}"]
    name = FLOOR_HIT if mode == "hit" else FLOOR_PROXY
    log_path = tmp / f"floor-{mode}.log"
    return Service(name, procs.start([*argv, "--path", path], log_path, cpus), port, log_path)


def start_edgeproxy(procs: Processes, tmp: Path, origin_port: int, workers: int, cpus: set[int] | None) -> Service:
    port = free_port()
    script = Path(sys.executable).parent / "edgeproxy"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "edgeproxy.cli"]
    argv = [
        *command, "serve", "--origin", f"http://127.0.0.1:{origin_port}", "--rules", str(ROOT / "rules"),
        "--listen", f"127.0.0.1:{port}", "--workers", str(workers),
    ]  # fmt: skip
    # its own working directory: the default settings put the SQLite state store (edgeproxy-state.sqlite3) there
    cwd = tmp / f"edgeproxy-{workers}"
    cwd.mkdir()
    name = EDGEPROXY if workers == 1 else f"{EDGEPROXY} --workers {workers}"
    return Service(name, procs.start(argv, cwd / "edgeproxy.log", cpus, cwd=cwd), port, cwd / "edgeproxy.log")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (nginx's worker, Varnish's cache process, workers)."""
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


# ---------------------------------------------------------------- wrk scripts

VISITORS_LUA = """\
-- {visitors} returning visitors (cs-personalize-user-uid cookie) asking for {path}: request n is visitor
-- (n * {stride}) mod {visitors} (the stride is coprime with the count, so a cycle visits each visitor once, in an
-- order that does not follow the ids), with one of {agents} browser User-Agents per visitor.
local agents = {{ {agent_list} }}
local n = {start}

request = function()
   n = n + 1
   local v = (n * {stride}) % {visitors}
   return wrk.format("GET", {path}, {{
      ["User-Agent"] = agents[v % #agents + 1],
      ["Accept"] = {accept},
      ["Accept-Language"] = {accept_language},
      ["Cookie"] = "cs-personalize-user-uid=visitor-" .. v,
   }})
end
"""

# Priming: `total` requests, then stop (see run_wrk's stop_file); of the responses after the first `check_from`,
# count status 200 and X-Cache: HIT (printed by done(), which runs outside the thread, hence the thread:get()).
PRIMING_LUA = """
responses, ok, hits = 0, 0, 0
local threads = {{}}

function setup(thread)
   table.insert(threads, thread)
end

response = function(status, headers, body)
   responses = responses + 1
   if responses > {check_from} then
      if status == 200 then ok = ok + 1 end
      if (headers["X-Cache"] or headers["x-cache"]) == "HIT" then hits = hits + 1 end
   end
   if responses == {total} then
      -- a stopped thread does not end wrk's run: this file tells run_wrk() to end it (SIGINT, then done() runs)
      local marker = io.open({stop_file}, "w")
      marker:write("done")
      marker:close()
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   for _, t in ipairs(threads) do
      io.write(string.format("PRIMED responses=%d ok=%d hits=%d\\n", t:get("responses"), t:get("ok"), t:get("hits")))
   end
end
"""

# Fixed rate: after each response a connection waits this think time before its next request (wrk's delay() hook,
# which wrk counts outside the latency). wrk takes whole ms, so the fraction is one more ms with that probability.
PACING_LUA = """
local whole = math.floor({think_ms})
local part = {think_ms} - whole

function delay()
   if math.random() < part then
      return whole + 1
   end
   return whole
end
"""


def rotation_stride(visitors: int) -> int:
    """A stride coprime with `visitors` (7919, a prime, unless it divides the count), so a cycle covers them all."""
    stride = 7919
    while math.gcd(stride, visitors) != 1:
        stride += 1
    return stride


def visitors_lua(path: str, visitors: int, start: int = 0) -> str:
    return VISITORS_LUA.format(
        path=json.dumps(path),  # a JSON string of printable ASCII is a Lua string literal too
        visitors=visitors,
        stride=rotation_stride(visitors),
        start=start,
        agents=len(USER_AGENTS),
        agent_list=", ".join(json.dumps(agent) for agent in USER_AGENTS),
        accept=json.dumps(BROWSER_HEADERS["Accept"]),
        accept_language=json.dumps(BROWSER_HEADERS["Accept-Language"]),
    )


def visitor_headers(visitor: int) -> dict[str, str]:
    """The headers the Lua script sends for one visitor (for checks made outside wrk)."""
    return {
        "User-Agent": USER_AGENTS[visitor % len(USER_AGENTS)],
        **BROWSER_HEADERS,
        "Cookie": f"cs-personalize-user-uid=visitor-{visitor}",
    }


# ---------------------------------------------------------------- wrk runs

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
        "p50_ms": round(latency["50"], 3) if latency else None,
        "p99_ms": round(latency["99"], 3) if latency else None,
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


@dataclass(frozen=True, slots=True)
class Load:
    """How wrk loads a target: the machine placement and the per-run settings."""

    connections: int
    cpus: set[int] | None
    tmp: Path


def run_wrk(
    procs: Processes,
    label: str,
    url: str,
    script: Path,
    seconds: float,
    load: Load,
    connections: int | None = None,
    watch: dict[str, int] | None = None,
    stop_file: Path | None = None,
) -> tuple[dict[str, Any], str]:
    """One wrk run (progress every 2 s), its figures and output; `watch`: processes whose CPU time it reports;
    `stop_file`: the run ends early (SIGINT, which wrk takes as "stop and report") once the script creates it."""
    argv = [
        tool("wrk"), "-t1", f"-c{connections or load.connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
        "-s", str(script), url,
    ]  # fmt: skip
    out = load.tmp / "wrk.out"
    watch = watch or {}
    cpu_before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped meanwhile
    system_before = system_cpu()
    started = time.monotonic()
    process = procs.start(argv, out, load.cpus)
    next_report = started + 2.0
    while process.poll() is None:
        time.sleep(0.1)
        if stop_file is not None and stop_file.exists():
            stop_file.unlink()
            process.send_signal(signal.SIGINT)
        now = time.monotonic()
        if now >= next_report and now - started < seconds:
            log(f"    {label}: {now - started:4.1f}" + (" s" if stop_file else f"/{seconds:g} s"))
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
    # Anything else busy on the machine meanwhile (another job, a test suite) disturbs the figures.
    used["other"] = max(0.0, busy - sum(used.values()))
    result["cpu_percent"] = {name: round(100 * value / elapsed, 1) for name, value in used.items()}
    result["steal_percent"] = round(100 * steal / elapsed, 1)
    if result["requests"] and "proxy" in used:
        # CPU time per request: the efficiency figure, steadier than req/s when the machine is shared
        result["cpu_us_per_request"] = round(1e6 * used["proxy"] / result["requests"], 1)
    return result, text


def disturbed(run: dict[str, Any]) -> bool:
    return bool(run["cpu_percent"]["other"] > OTHER_CPU_WARNING or run["steal_percent"] > OTHER_CPU_WARNING)


# ---------------------------------------------------------------- targets and checks


@dataclass(frozen=True, slots=True)
class Target:
    """One row of the table: a service, the section it is measured in, and the path asked of it."""

    section: str
    service: Service
    path: str
    load_script: Path
    rate_script: Path | None

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def key(self) -> str:
        return f"{self.section}: {self.name}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}{self.path}"


def check_personalizes(port: int, path: str) -> str:
    """edgeproxy personalizes `path`: a manifest cookie for a new visitor; returns the variants it applied."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=visitor_headers(0))
    with urllib.request.urlopen(request, timeout=5) as response:
        cookies = response.headers.get_all("Set-Cookie") or []
        applied = response.headers.get("x-cs-applied-variants")
    if not any(c.startswith("cs-personalize-manifest=") for c in cookies):
        raise RuntimeError(f"edgeproxy did not personalize {path} (no manifest cookie): is the path skipped?")
    return applied or "(none)"


def prime(procs: Processes, target: Target, visitors: int, load: Load) -> dict[str, int]:
    """Warm a target with the visitor rotation: one whole cycle for edgeproxy (twice for its hits, the second
    pass checked), a short run for the others; for hits, fail unless the checked part was X-Cache: HIT."""
    is_edgeproxy = target.name.startswith(EDGEPROXY)
    cycles = (2 if target.section == HITS else 1) if is_edgeproxy else 0
    total = cycles * visitors or min(visitors, 5000)
    check_from = total - visitors if cycles == 2 else min(total // 2, 100 + load.connections)
    name = re.sub(r"[^a-z0-9]+", "-", target.key.lower())
    script, stop_file = load.tmp / f"prime-{name}.lua", load.tmp / f"prime-{name}.done"
    script.write_text(
        visitors_lua(target.path, visitors)
        + PRIMING_LUA.format(total=total, check_from=check_from, stop_file=json.dumps(str(stop_file)))
    )
    log(f"  priming {target.key}: {total:,} requests")
    _, text = run_wrk(procs, f"priming {target.key}", target.url, script, 3600, load, stop_file=stop_file)
    found = re.search(r"PRIMED responses=(\d+) ok=(\d+) hits=(\d+)", text)
    if not found:
        raise RuntimeError(f"priming {target.key}: no counts in wrk's output:\n{text}")
    responses, ok, hits = (int(g) for g in found.groups())
    checked = max(0, responses - check_from)
    if checked == 0 or ok < checked:
        raise RuntimeError(f"{target.key}: {checked - ok} of {checked} priming responses were not 200 OK")
    if target.section == HITS and hits < HIT_SHARE_REQUIRED * checked:
        raise RuntimeError(
            f"{target.key} did not serve {target.path} from its cache: {hits:,} of the last {checked:,} priming "
            f"responses had X-Cache: HIT (need {HIT_SHARE_REQUIRED:.0%}). Does the origin mark it cacheable "
            "(Cache-Control: public, s-maxage), and is the cache on in edgeproxy's default settings?"
        )
    return {"requests": responses, "checked": checked, "hits": hits}


def cache_counters(port: int) -> tuple[int, int] | None:
    """edgeproxy's own counts of cache hits and of requests (its ops status endpoint), or None if it does not say."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_edgeproxy/status", timeout=5) as reply:
            status = json.load(reply)
        return int(status["cache"]["results"].get("hit", 0)), int(status["requests"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure(
    procs: Processes, target: Target, origin: Service, args: argparse.Namespace, load: Load
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Warm-up, the load run, and with --latency the fixed-rate run of one target."""
    watch = {"proxy": target.service.process.pid, "origin": origin.process.pid}
    if args.warmup > 0:
        run_wrk(procs, f"{target.key} warm-up", target.url, target.load_script, args.warmup, load)
    # one process answers the status endpoint: its counters are the whole server's only without --workers
    counting = target.section == HITS and target.name == EDGEPROXY
    before = cache_counters(target.service.port) if counting else None
    loaded, _ = run_wrk(procs, target.key, target.url, target.load_script, args.duration, load, watch=watch)
    after = cache_counters(target.service.port) if before else None
    if before and after and after[1] > before[1]:
        # of the requests edgeproxy served during the run (warm-up excluded), the share served from its cache
        loaded["cache_hit_share"] = round((after[0] - before[0]) / (after[1] - before[1]), 4)
    report_run(target.key, loaded)
    paced = None
    if target.rate_script is not None:
        label = f"{target.key} at ~{args.rate:,} req/s"
        paced, _ = run_wrk(
            procs, label, target.url, target.rate_script, args.rate_duration, load, args.rate_connections, watch
        )
        report_run(label, paced)
    return loaded, paced


def report_run(label: str, run: dict[str, Any]) -> None:
    cpu = run["cpu_percent"]
    hit_share = f", {run['cache_hit_share']:.1%} hits" if "cache_hit_share" in run else ""
    cpu_per_request = f", {run['cpu_us_per_request']:.0f} µs CPU/req" if "cpu_us_per_request" in run else ""
    log(
        f"    {label}: {run['requests_per_s']:,.0f} req/s{cpu_per_request}, "
        f"p99 {run['p99_ms']:.2f} ms{hit_share}; cpu % " + ", ".join(f"{who} {value:.0f}" for who, value in cpu.items())
    )
    if disturbed(run):
        log(
            f"    WARNING {label}: other processes used {cpu['other']:.0f}% CPU (steal {run['steal_percent']:.0f}%) "
            "during the run: figures are disturbed"
        )
    if run["socket_errors"] or run["non_2xx_3xx"]:
        log(f"    WARNING {label}: {run['socket_errors']} socket errors, {run['non_2xx_3xx']} non-2xx/3xx responses")
    if run.get("cache_hit_share", 1.0) < HIT_SHARE_REQUIRED:
        log(f"    WARNING {label}: only {run['cache_hit_share']:.1%} of the requests were cache hits")


# ---------------------------------------------------------------- results


def median_run(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The median run by req/s, among the undisturbed runs when there are any; and whether all were disturbed."""
    clean = [run for run in runs if not disturbed(run)]
    ordered = sorted(clean or runs, key=lambda run: float(run["requests_per_s"]))
    return ordered[(len(ordered) - 1) // 2], not clean


def collect(
    targets: list[Target], runs: dict[str, list[dict[str, Any]]], paced: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One entry per target: the median run, every round, and edgeproxy's req/s over its req/s."""
    results: list[dict[str, Any]] = []
    for target in targets:
        loaded, all_disturbed = median_run(runs[target.key])
        # CPU per request: its own median over the same rounds (a round squeezed by other load has a low req/s
        # but a CPU time per request close to the others')
        counted = [r for r in runs[target.key] if "cpu_us_per_request" in r and not disturbed(r)] or [
            r for r in runs[target.key] if "cpu_us_per_request" in r
        ]
        cpu = round(statistics.median(r["cpu_us_per_request"] for r in counted), 1) if counted else None
        entry: dict[str, Any] = {
            "section": target.section,
            "target": target.name,
            "path": target.path,
            "requests_per_s": loaded["requests_per_s"],
            "cpu_us_per_request": cpu,
            "p50_ms": loaded["p50_ms"],
            "p99_ms": loaded["p99_ms"],
            "cache_hit_share": loaded.get("cache_hit_share"),
            "disturbed": all_disturbed,
            "rounds_requests_per_s": [run["requests_per_s"] for run in runs[target.key]],
            "rounds": runs[target.key],
        }
        if paced.get(target.key):
            by_p99 = sorted(paced[target.key], key=lambda run: float(run["p99_ms"]))
            entry["fixed_rate"] = by_p99[(len(by_p99) - 1) // 2]
            entry["fixed_rate_rounds"] = paced[target.key]
        results.append(entry)
    for section in (PAGES, HITS):
        rows = [r for r in results if r["section"] == section]
        edge = next(r for r in rows if r["target"] == EDGEPROXY)
        for r in rows:
            r["edgeproxy_ratio"] = round(edge["requests_per_s"] / r["requests_per_s"], 4)
            # the same comparison by CPU time per request, which other load on the machine disturbs less
            if r["cpu_us_per_request"] and edge["cpu_us_per_request"]:
                r["edgeproxy_cpu_ratio"] = round(r["cpu_us_per_request"] / edge["cpu_us_per_request"], 4)
    return results


def goals(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, (baseline, goal) in GOALS.items():
        row = next(r for r in results if r["section"] == section and r["target"] == baseline)
        out[section] = {
            "baseline": baseline,
            "goal": goal,
            "ratio": row["edgeproxy_ratio"],
            "cpu_ratio": row.get("edgeproxy_cpu_ratio"),
            "met": row["edgeproxy_ratio"] >= goal,
        }
    return out


def scaling_model(results: list[dict[str, Any]], workers: int, cores: int) -> dict[str, Any] | None:
    """With --workers N: req/s on k cores modelled as k x 1e6 / (CPU µs per request of the N-worker edgeproxy)."""
    if workers == 1:
        return None
    model: dict[str, Any] = {"workers": workers, "cores_given": cores, "sections": {}}
    for section in (PAGES, HITS):
        rows = {r["target"]: r for r in results if r["section"] == section}
        one, many = rows[EDGEPROXY], rows[f"{EDGEPROXY} --workers {workers}"]
        cpu = many["cpu_us_per_request"]
        model["sections"][section] = {
            "one_worker": {"requests_per_s": one["requests_per_s"], "cpu_us_per_request": one["cpu_us_per_request"]},
            "workers": {"requests_per_s": many["requests_per_s"], "cpu_us_per_request": cpu},
            "modelled_requests_per_s": {str(k): round(k * 1e6 / cpu) for k in sorted({1, 2, workers, 4, 8})}
            if cpu
            else None,
        }
    return model


def markdown_table(results: list[dict[str, Any]], latency: bool) -> str:
    head = "| section | target | req/s (median) | rounds | CPU µs/req | p50 ms | p99 ms | edgeproxy ÷ target |"
    rule = "|---|---|---|---|---|---|---|---|"
    if latency:
        head += " fixed-rate p50 ms | fixed-rate p99 ms |"
        rule += "---|---|"
    lines = [head, rule]
    for r in results:
        cpu = r["cpu_us_per_request"]
        name = r["target"] + (" *" if r["disturbed"] else "")
        if r.get("cache_hit_share") is not None:
            name += f" ({r['cache_hit_share']:.0%} hits)"
        ratio = "—" if r["target"] == EDGEPROXY else f"{r['edgeproxy_ratio']:.2f}x"
        if r["target"] != EDGEPROXY and r.get("edgeproxy_cpu_ratio"):
            ratio += f" (CPU {r['edgeproxy_cpu_ratio']:.2f}x)"
        rounds = ", ".join(f"{v / 1000:.1f}k" for v in r["rounds_requests_per_s"])
        line = (
            f"| {SECTION_TITLES[r['section']]} | {name} | {r['requests_per_s']:,.0f} | {rounds} | "
            f"{'-' if cpu is None else f'{cpu:.0f}'} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ratio} |"
        )
        if latency:
            fixed = r.get("fixed_rate")
            line += f" {fixed['p50_ms']:.2f} | {fixed['p99_ms']:.2f} |" if fixed else " — | — |"
        lines.append(line)
    return "\n".join(lines)


def svg_chart(report: dict[str, Any]) -> str:
    """Two panels of horizontal bars (req/s), one per section, each labelled with edgeproxy's ratio to it and the
    section's goal as a dashed line. Hand-written SVG."""
    results, m, s = report["results"], report["machine"], report["settings"]
    colors = {
        EDGEPROXY: "#d9822b", PASSTHROUGH: "#4a6fa5", NGINX_PASS: "#4f8a5b", NGINX_CACHE: "#4f8a5b",
        VARNISH: "#7b5ea7", FLOOR_PROXY: "#8a9ba8", FLOOR_HIT: "#8a9ba8",
    }  # fmt: skip
    sections = [[r for r in results if r["section"] == section] for section in (PAGES, HITS)]
    width, label_w, bar_w, row_h, panel_gap, top = 1000, 290, 360, 30, 34, 104
    height = top + sum(30 + row_h * len(rows) + 18 for rows in sections) + panel_gap + 50
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        '<text x="20" y="28" font-size="18" font-weight="600">'
        "edgeproxy vs nginx, Varnish, aiohttp and the Python floor: requests/s on one core</text>",
        f'<text x="20" y="50" fill="#555">{html.escape(m["cpu"])}, {m["cores"]} cores, Python {m["python"]}; '
        f"edgeproxy {html.escape(s['edgeproxy_commit'])}"
        + ("; each server pinned to one core, wrk + origin to another" if s["pinned"] else "")
        + "</text>",
        f'<text x="20" y="70" fill="#555">{s["visitors"]:,} rotating returning visitors x {s["user_agents"]} '
        f"User-Agents; origin: {html.escape(s['origin'].split(' (')[0])}</text>",
        f'<text x="20" y="90" fill="#555">wrk -t1 -c{s["connections"]} -d{s["duration_s"]:g}s, median of '
        f"{s['rounds']} interleaved round(s); labels: edgeproxy's req/s ÷ the target's</text>",
    ]
    y = float(top)
    for rows in sections:
        section = rows[0]["section"]
        baseline, goal = GOALS[section]
        base = next(r for r in rows if r["target"] == baseline)
        scale_max = max(r["requests_per_s"] for r in rows) * 1.15
        out.append(
            f'<text x="20" y="{y + 16}" font-size="14" font-weight="600">'
            f"{html.escape(SECTION_TITLES[section].capitalize())} (GET {html.escape(rows[0]['path'])})</text>"
        )
        x0, y_bars = 20 + label_w, y + 28
        goal_x = x0 + bar_w * goal * base["requests_per_s"] / scale_max
        y_end = y_bars + len(rows) * row_h - 6
        out.append(
            f'<line x1="{goal_x:.1f}" y1="{y_bars - 2}" x2="{goal_x:.1f}" y2="{y_end}" stroke="#c0392b" '
            'stroke-width="1.5" stroke-dasharray="5,4"/>'
        )
        out.append(
            f'<text x="{goal_x:.1f}" y="{y_end + 13}" fill="#c0392b" font-size="11" text-anchor="middle">'
            f"goal: {goal:g}x {html.escape(baseline)}</text>"
        )
        for r in rows:
            w = max(1.0, bar_w * r["requests_per_s"] / scale_max)
            name = r["target"] + (" *" if r["disturbed"] else "")
            color = colors.get(r["target"], colors[EDGEPROXY] if r["target"].startswith(EDGEPROXY) else "#777")
            ratio = "" if r["target"] == EDGEPROXY else f" — edgeproxy = {r['edgeproxy_ratio']:.2f}x"
            cpu = f", {r['cpu_us_per_request']:.0f} µs CPU" if r["cpu_us_per_request"] else ""
            out.append(f'<text x="{x0 - 8}" y="{y_bars + 17}" text-anchor="end">{html.escape(name)}</text>')
            out.append(f'<rect x="{x0}" y="{y_bars + 2}" width="{w:.1f}" height="{row_h - 8}" rx="2" fill="{color}"/>')
            out.append(
                f'<text x="{x0 + w + 6:.1f}" y="{y_bars + 17}" stroke="#fff" stroke-width="4" paint-order="stroke">'
                f"{r['requests_per_s']:,.0f} req/s{html.escape(cpu)}{html.escape(ratio)}</text>"
            )
            y_bars += row_h
        y = y_bars + 18 + panel_gap / 2
    footer = [
        f"{SECTION_TITLES[section]}: edgeproxy {g['ratio']:.2f}x {g['baseline']} (goal {g['goal']:g}x: "
        f"{'met' if g['met'] else 'not met'})"
        for section, g in report["goals"].items()
    ]
    if any(r["disturbed"] for r in results):
        footer.append("* other processes were busy on the machine in every round of this target: figures disturbed")
    for line in footer:
        out.append(f'<text x="20" y="{y + 8}" fill="#333">{html.escape(line)}</text>')
        y += 18
    out.append("</svg>")
    return "\n".join(out) + "\n"


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


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


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=20_000, help="rotating returning visitors (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per target per round (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before each run (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections, one wrk thread (default 32)")
    parser.add_argument("--workers", type=int, default=1, help="N > 1 adds edgeproxy --workers N rows (default 1)")
    parser.add_argument("--origin", choices=sorted(PATHS), default="nginx", help="static nginx page or Node example")
    parser.add_argument("--latency", action="store_true", help="add fixed-rate latency runs after each load run")
    parser.add_argument("--rate", type=int, default=1000, help="requests/s of the fixed-rate runs (default 1000)")
    parser.add_argument("--rate-connections", type=int, default=10, help="connections of the fixed-rate runs")
    parser.add_argument("--rate-duration", type=int, default=10, help="seconds of each fixed-rate run")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin each server to one core, wrk + origin to another (default on with 2+ cores)",
    )
    parser.add_argument("--json", default=str(RESULTS / "proxy.json"))
    parser.add_argument("--svg", default=str(RESULTS / "proxy.svg"))
    args = parser.parse_args()
    if min(args.visitors, args.rounds, args.duration, args.connections, args.workers, args.rate) < 1:
        parser.error("--visitors, --rounds, --duration, --connections, --workers and --rate must be >= 1")
    if min(args.rate_connections, args.rate_duration) < 1 or args.warmup < 0:
        parser.error("--rate-connections and --rate-duration must be >= 1, --warmup >= 0 (whole seconds)")
    needed = ["wrk", "nginx", "varnishd"] + (["node"] if args.origin == "node" else [])
    for name in needed:
        try:
            tool(name)
        except RuntimeError as exc:
            parser.error(f"{exc} (scripts/install-test-tools.sh installs nginx and Varnish; apt-get install wrk)")
    return args


def main() -> int:
    args = parse_args()
    cores = sorted(os.sched_getaffinity(0))
    pinned = args.pin and len(cores) >= 2
    load_core, server_core = cores[0], cores[-1]
    load_cpus = {load_core} if pinned else None  # wrk and the origin
    server_cpus = {server_core} if pinned else None  # the server under test
    # edgeproxy --workers N: up to N cores that are not wrk's
    worker_cpus = set(cores[1:][-args.workers :]) if pinned else None
    page_path, hit_path = PATHS[args.origin]
    think_ms = 1000.0 * args.rate_connections / args.rate  # per connection, so that all of them make ~--rate

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeproxy-bench-") as tmp_name:
            tmp = Path(tmp_name)
            tmp.chmod(0o755)  # nginx and Varnish workers run as other users when started as root
            load = Load(args.connections, load_cpus, tmp)
            log(f"starting the origin ({args.origin}) and the servers, each on a free port ...")
            origin = start_origin(procs, tmp, args.origin, load_cpus)
            nginx_pass, nginx_cache = start_nginx(procs, tmp, origin.port, server_cpus)
            edgeproxies = [start_edgeproxy(procs, tmp, origin.port, 1, server_cpus)]
            if args.workers > 1:
                edgeproxies.append(start_edgeproxy(procs, tmp, origin.port, args.workers, worker_cpus))
            page_services = [
                *edgeproxies,
                start_passthrough(procs, tmp, origin.port, server_cpus),
                nginx_pass,
                start_floor(procs, tmp, "proxy", origin.port, page_path, server_cpus),
            ]
            hit_services = [
                *edgeproxies,
                nginx_cache,
                start_varnish(procs, tmp, origin.port, server_cpus),
                start_floor(procs, tmp, "hit", origin.port, hit_path, server_cpus),
            ]
            for service in {id(s): s for s in page_services + hit_services}.values():
                wait_ready(service, page_path)
            log(
                f"  origin :{origin.port}; "
                + ", ".join(f"{s.name} :{s.port}" for s in page_services + hit_services[-3:])
            )
            applied = check_personalizes(edgeproxies[0].port, page_path)
            log(f"  edgeproxy personalizes {page_path} (origin applied: {applied})")
            rate_scripts: dict[str, Path] = {}
            targets: list[Target] = []
            for section, path, services in ((PAGES, page_path, page_services), (HITS, hit_path, hit_services)):
                script = tmp / f"{section}.lua"
                script.write_text(visitors_lua(path, args.visitors))
                if args.latency:
                    rate_scripts[section] = tmp / f"{section}-rate.lua"
                    rate_scripts[section].write_text(
                        visitors_lua(path, args.visitors) + PACING_LUA.format(think_ms=f"{think_ms:.6f}")
                    )
                targets += [Target(section, s, path, script, rate_scripts.get(section)) for s in services]
            log(f"priming: every target gets the visitor rotation ({args.visitors:,} visitors) before any measurement")
            priming = {target.key: prime(procs, target, args.visitors, load) for target in targets}
            runs: dict[str, list[dict[str, Any]]] = {t.key: [] for t in targets}
            paced: dict[str, list[dict[str, Any]]] = {t.key: [] for t in targets}
            origin_paced: list[dict[str, Any]] = []
            for round_no in range(args.rounds):
                order = targets[round_no % len(targets) :] + targets[: round_no % len(targets)]
                for index, target in enumerate(order, 1):
                    log(
                        f"[round {round_no + 1}/{args.rounds}, {index}/{len(order)}] {target.key} "
                        f"(GET {target.path}): warm-up {args.warmup} s, {args.duration} s measured"
                    )
                    loaded, fixed = measure(procs, target, origin, args, load)
                    runs[target.key].append(loaded)
                    if fixed is not None:
                        paced[target.key].append(fixed)
                if args.latency:
                    # origin direct at the fixed rate: what a proxy's added latency is measured from
                    run, _ = run_wrk(
                        procs, f"{ORIGIN_DIRECT} at ~{args.rate:,} req/s", f"http://127.0.0.1:{origin.port}{page_path}",
                        rate_scripts[PAGES],
                        args.rate_duration, load, args.rate_connections, {"origin": origin.process.pid},
                    )  # fmt: skip
                    report_run(f"{ORIGIN_DIRECT} at ~{args.rate:,} req/s", run)
                    origin_paced.append(run)
            for service in [origin, *page_services, *hit_services]:
                if service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} died during the run:\n{service.log_tail()}")
    except KeyboardInterrupt:
        log("\ninterrupted: stopping everything this run started")
        return 130
    finally:
        procs.stop_all()

    results = collect(targets, runs, paced)
    settings = {
        "visitors": args.visitors,
        "user_agents": len(USER_AGENTS),
        "rotation_stride": rotation_stride(args.visitors),
        "origin": f"static nginx, 5 KB page (GET {page_path}; GET {hit_path} with Cache-Control: public, s-maxage=3600)"
        if args.origin == "nginx"
        else f"Node example origin (GET {page_path}; GET {hit_path})",
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "wrk_threads": 1,
        "rounds": args.rounds,
        "workers": args.workers,
        "pinned": pinned,
        "placement": {"wrk_and_origin": [load_core], "server": [server_core], "edgeproxy_workers": sorted(worker_cpus)}
        if pinned and worker_cpus
        else None,
        "edgeproxy": "edgeproxy serve --rules rules (default settings: personalization on, memory cache on)",
        "edgeproxy_commit": git_commit(),
        "priming": priming,
        "versions": {
            "wrk": tool_version([tool("wrk"), "-v"]),
            "nginx": tool_version([tool("nginx"), "-v"]),
            "varnish": tool_version([tool("varnishd"), "-V"]),
            "aiohttp": importlib.metadata.version("aiohttp"),
            "uvloop": importlib.metadata.version("uvloop"),
        },
    }
    m = machine()
    report: dict[str, Any] = {
        "benchmark": "proxy",
        "machine": m,
        "settings": settings,
        "goals": goals(results),
        "scaling": scaling_model(results, args.workers, len(worker_cpus or cores)),
        "results": results,
    }
    if args.latency:
        settings["fixed_rate"] = {"rate_per_s": args.rate, "connections": args.rate_connections,
                                  "duration_s": args.rate_duration, "think_ms": round(think_ms, 3)}  # fmt: skip
        by_p99 = sorted(origin_paced, key=lambda run: float(run["p99_ms"]))
        report["origin_direct_fixed_rate"] = by_p99[(len(by_p99) - 1) // 2]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    Path(args.svg).write_text(svg_chart(report))
    print_report(report, args)
    return 0


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    m, s, results = report["machine"], report["settings"], report["results"]
    print(
        f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; edgeproxy {s['edgeproxy_commit']}"
        + ("; each server pinned to one core, wrk + origin to another" if s["pinned"] else "; not pinned")
        + f"\nload: wrk -t1 -c{s['connections']} -d{s['duration_s']}s, {s['visitors']:,} rotating returning visitors x "
        f"{s['user_agents']} User-Agents, median of {s['rounds']} interleaved round(s); origin: {s['origin']}\n"
    )
    print(markdown_table(results, args.latency))
    print(
        "(edgeproxy ÷ target: edgeproxy's req/s over the target's in the same section; CPU: the target's CPU µs per "
        "request over edgeproxy's;\n * = every round disturbed by other processes on the machine)"
    )
    for section, g in report["goals"].items():
        print(
            f"goal, {SECTION_TITLES[section]}: edgeproxy {g['ratio']:.2f}x {g['baseline']} (by CPU per request "
            f"{g['cpu_ratio'] or float('nan'):.2f}x; goal >= {g['goal']:g}x): {'met' if g['met'] else 'not met'}"
        )
    if report["scaling"]:
        sc = report["scaling"]
        for section, figures in sc["sections"].items():
            modelled = figures["modelled_requests_per_s"] or {}
            print(
                f"--workers {sc['workers']}, {SECTION_TITLES[section]}: measured "
                f"{figures['workers']['requests_per_s']:,.0f} req/s on {sc['cores_given']} core(s) at "
                f"{figures['workers']['cpu_us_per_request']} µs CPU/req "
                f"(1 worker: {figures['one_worker']['cpu_us_per_request']} µs); model (k cores x 1e6 / CPU µs): "
                + ", ".join(f"{k} cores {v:,}" for k, v in modelled.items())
            )
    if args.latency:
        direct = report["origin_direct_fixed_rate"]
        print(f"origin direct at the fixed rate: p50 {direct['p50_ms']:.2f} ms, p99 {direct['p99_ms']:.2f} ms")
    print(f"\nwritten: {args.json}\n         {args.svg}")


if __name__ == "__main__":
    sys.exit(main())
