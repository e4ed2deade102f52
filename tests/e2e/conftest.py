"""End-to-end fixtures: real origins (the Node example shop, nginx) and real `edgeproxy serve` processes.

Every process runs as a subprocess on a free loopback port, is polled until it answers, and is stopped with
SIGTERM (then SIGKILL) at teardown. A missing `node` or `nginx` FAILS the test with a clear message: these
tests never skip (DESIGN.md, "Tests").
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from support.processes import free_port, http_status

ROOT = Path(__file__).resolve().parents[2]
RULES = str(ROOT / "rules")
GEOIP = str(ROOT / "tests" / "data" / "GeoIP2-City-Test.mmdb")
NODE_SERVER = ROOT / "examples" / "origin" / "server.js"
TRUSTED = ("--trusted-proxies", "127.0.0.1")
START_TIMEOUT = 20.0

# User-Agents of the sample visitors in rules/requests.jsonl.
UA_WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
UA_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)
UA_PIXEL = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.6478.122 Mobile Safari/537.36"
)
UA_MAC_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15"
)
UA_ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.6478.122 Safari/537.36"
)
UA_GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

IP_LONDON = "81.2.69.160"  # GB / ENG / London in the MaxMind test database
IP_US = "216.160.83.56"  # US / WA / Milton


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end test starting real processes (node, nginx, edgeproxy serve); needs node and nginx"
    )


# -- tools ------------------------------------------------------------------------------------------------


def require_tool(name: str, *fallbacks: str) -> str:
    """The path of `name`, or FAIL (never skip) the test: CI must not go green without the real origin."""
    found = shutil.which(name) or next((p for p in fallbacks if os.access(p, os.X_OK)), None)
    if found is None:
        where = f" (looked on PATH and at {', '.join(fallbacks)})" if fallbacks else " (looked on PATH)"
        pytest.fail(
            f"`{name}` is required by the end-to-end tests in tests/e2e and was not found{where}. "
            f"Install it (Debian/Ubuntu: .ci/run installs it with apt); these tests fail rather than skip.",
            pytrace=False,
        )
    return found


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of a process from /proc/PID/status (VmRSS, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


# -- processes --------------------------------------------------------------------------------------------


@dataclass
class Service:
    """One running subprocess listening on a loopback port."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str]
    cwd: Path = ROOT
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()

    def wait_ready(self, ready_path: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.process.returncode if self.process else None
                pytest.fail(
                    f"{self.name} exited with code {code} before it was ready.\n"
                    f"command: {' '.join(self.argv)}\nlog:\n{self.log_tail()}",
                    pytrace=False,
                )
            if http_status(self.url + ready_path, timeout=1.0) == 200:
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(
            f"{self.name} did not answer 200 on {ready_path} within {timeout:.0f} s.\n"
            f"command: {' '.join(self.argv)}\nlog:\n{self.log_tail()}",
            pytrace=False,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


NGINX_CONF = r"""
daemon off;
master_process off;  # one process: SIGTERM/SIGKILL at teardown leave no orphaned worker behind
pid @TMP@/nginx.pid;
error_log stderr notice;
events { worker_connections 256; }
http {
    types { text/html html; text/css css; application/javascript js; font/woff2 woff2; }
    default_type application/octet-stream;
    client_body_temp_path @TMP@/client_body;
    proxy_temp_path @TMP@/proxy;
    fastcgi_temp_path @TMP@/fastcgi;
    uwsgi_temp_path @TMP@/uwsgi;
    scgi_temp_path @TMP@/scgi;
    log_format e2e '$request_method $request_uri $status uri=$uri vu="$http_x_cs_variant_uid" '
                   'pv="$http_x_cs_personalize_variants" uid="$http_x_cs_personalize_user_uid"';
    access_log @TMP@/access.log e2e;
    server {
        listen 127.0.0.1:@PORT@;
        server_name localhost;
        root @ROOT@;
        location = /__ready { access_log off; default_type text/plain; return 200 "ready\n"; }
        # What arrived from the proxy, as JSON (personalized paths).
        location = /hdr { default_type application/json; return 200 '@HEADERS_JSON@'; }
        location = /checkout { default_type application/json; return 200 '@HEADERS_JSON@'; }
        # The same under a static asset path: the proxy must not personalize it.
        location = /static/hdr.css { default_type text/css; return 200 '@HEADERS_JSON@'; }
        location /static/ { add_header Cache-Control "public, max-age=600"; }
        location / { index index.html; add_header Cache-Control "public, max-age=300"; }
    }
}
"""
NGINX_HEADERS_JSON = (
    '{"method":"$request_method","uri":"$request_uri",'
    '"x-cs-variant-uid":"$http_x_cs_variant_uid",'
    '"x-cs-personalize-variants":"$http_x_cs_personalize_variants",'
    '"x-cs-personalize-user-uid":"$http_x_cs_personalize_user_uid",'
    '"x-forwarded-for":"$http_x_forwarded_for"}\n'
)


class Launcher:
    """Starts services in a temporary directory and stops all of them at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.services: list[Service] = []
        self._counter = 0

    def _log(self, name: str) -> Path:
        self._counter += 1
        return self.tmp / f"{self._counter:02d}-{name}.log"

    def _launch(self, service: Service, ready_path: str) -> Service:
        self.services.append(service)
        service.start()
        service.wait_ready(ready_path)
        return service

    def node_origin(self, port: int | None = None) -> Service:
        node = require_tool("node")
        port = port or free_port()
        service = Service(
            name=f"node origin :{port}",
            argv=[node, str(NODE_SERVER.relative_to(ROOT)), "--host", "127.0.0.1", "--port", str(port)],
            port=port,
            log_path=self._log("node-origin"),
            env=dict(os.environ),
        )
        return self._launch(service, "/healthz")

    def restart(self, service: Service, ready_path: str) -> Service:
        """Start a stopped service again with the same command line, so on the same port."""
        assert not service.alive(), f"{service.name} is still running"
        service.start()
        service.wait_ready(ready_path)
        return service

    def nginx_origin(self) -> Service:
        nginx = require_tool("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
        self._counter += 1
        base = self.tmp / f"nginx-{self._counter}"
        docroot = base / "www"
        (docroot / "static").mkdir(parents=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (base / sub).mkdir()
        (docroot / "index.html").write_text("<!doctype html><title>nginx origin</title><h1>Static home</h1>\n")
        (docroot / "static" / "site.css").write_text("body { color: #123456; }\n")
        # Every byte value, in a length that is not a multiple of any buffer size.
        (docroot / "static" / "font.woff2").write_bytes(bytes(range(256)) * 1201 + os.urandom(777))
        port = free_port()
        conf = (
            NGINX_CONF.replace("@HEADERS_JSON@", NGINX_HEADERS_JSON)
            .replace("@TMP@", str(base))
            .replace("@ROOT@", str(docroot))
            .replace("@PORT@", str(port))
        )
        conf_path = base / "nginx.conf"
        conf_path.write_text(conf)
        service = Service(
            name=f"nginx origin :{port}",
            argv=[nginx, "-p", str(base), "-c", str(conf_path)],
            port=port,
            log_path=self._log("nginx-origin"),
            env=dict(os.environ),
            extra={"access_log": base / "access.log", "docroot": docroot},
        )
        return self._launch(service, "/__ready")

    def proxy(
        self, origin: Service | str, *flags: str, env: dict[str, str] | None = None, geoip: bool = True
    ) -> Service:
        """`edgeproxy serve` in front of `origin`; EDGEPROXY_* variables of the test run are not inherited."""
        origin_url = origin if isinstance(origin, str) else origin.url
        port = free_port()
        argv = [sys.executable, "-m", "edgeproxy.cli", "serve", "--origin", origin_url, "--rules", RULES,
                "--listen", f"127.0.0.1:{port}"]  # fmt: skip
        if geoip:
            argv += ["--geoip", GEOIP]
        argv += list(flags)
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
        # The edgeproxy of this checkout, whatever else is installed.
        clean_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean_env.get("PYTHONPATH")]))
        clean_env.update(env or {})
        # Its own working directory: whatever the proxy writes relative to it (state, caches) stays per process
        # and out of the repository.
        workdir = self.tmp / f"edgeproxy-{port}"
        workdir.mkdir(exist_ok=True)
        service = Service(
            name=f"edgeproxy :{port} -> {origin_url}", argv=argv, port=port, log_path=self._log("edgeproxy"),
            env=clean_env, cwd=workdir,
        )  # fmt: skip
        return self._launch(service, "/_edgeproxy/ready")

    def stop_all(self) -> None:
        for service in reversed(self.services):
            service.stop()


@pytest.fixture(scope="session")
def session_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("e2e-session"))
    yield launcher
    launcher.stop_all()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """Processes that live for one test only (their own proxy flags, an origin the test stops, ...)."""
    launcher = Launcher(tmp_path)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="session")
def node_origin(session_launcher: Launcher) -> Service:
    return session_launcher.node_origin()


@pytest.fixture(scope="session")
def nginx_origin(session_launcher: Launcher) -> Service:
    return session_launcher.nginx_origin()


@pytest.fixture(scope="session")
def proxy(session_launcher: Launcher, node_origin: Service) -> Service:
    """The proxy in front of the Node origin, trusting the loopback CDN (X-Forwarded-For gives the geo)."""
    return session_launcher.proxy(node_origin, *TRUSTED)


@pytest.fixture(scope="session")
def nginx_proxy(session_launcher: Launcher, nginx_origin: Service) -> Service:
    return session_launcher.proxy(nginx_origin, *TRUSTED)


@pytest.fixture(scope="session")
def untrusting_proxy(session_launcher: Launcher, node_origin: Service) -> Service:
    """The proxy in front of the Node origin with no trusted proxies: X-Forwarded-* are not believed."""
    return session_launcher.proxy(node_origin)


@pytest.fixture(autouse=True)
def _session_services_stay_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """A shared service that died during a test is reported there, with its log, not as a puzzling later failure."""
    launcher = request.getfixturevalue("session_launcher") if "session_launcher" in request.fixturenames else None
    yield
    for service in launcher.services if launcher else ():
        if not service.alive():
            pytest.fail(f"{service.name} died during the test; log:\n{service.log_tail()}", pytrace=False)


# -- the decision oracle: `edgeproxy decide` ----------------------------------------------------------------


def run_decide(descriptions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `edgeproxy decide --rules rules --geoip ...` prints for these request descriptions (SPEC §9)."""
    stdin = "".join(json.dumps(d) + "\n" for d in descriptions)
    result = subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", "decide", "--rules", RULES, "--geoip", GEOIP, "--strict"],
        cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, f"edgeproxy decide failed:\n{result.stdout}\n{result.stderr}"
    manifests = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(manifests) == len(descriptions), result.stdout
    return manifests


@pytest.fixture(scope="session")
def decide() -> Any:
    return run_decide


# -- visitors -----------------------------------------------------------------------------------------------

CDN_GEO_HEADERS = frozenset({"cf-ipcountry", "cf-region-code", "cf-ipcity", "cloudfront-viewer-country"})


@dataclass(frozen=True)
class Visitor:
    """One browser behind a CDN: what it sends through the proxy, and the SPEC §9 description of that request."""

    name: str
    user_agent: str = UA_WINDOWS_CHROME
    client_ip: str | None = None  # the CDN in front of the proxy says so in X-Forwarded-For
    query: str = ""
    cookies: tuple[tuple[str, str], ...] = ()
    headers_extra: tuple[tuple[str, str], ...] = ()

    @property
    def cookie_uid(self) -> str | None:
        return dict(self.cookies).get("cs-personalize-user-uid")

    def target(self, path: str = "/echo") -> str:
        return f"{path}?{self.query}" if self.query else path

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies)
        if self.client_ip:
            headers["X-Forwarded-For"] = self.client_ip
        headers.update(self.headers_extra)
        return headers

    def description(
        self,
        proxy: Service,
        path: str = "/echo",
        *,
        user_uid: str | None = None,
        trusted: bool = True,
        tags: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The same visitor as a request description. `user_uid` is the uid the proxy minted for a new
        visitor (the decision would otherwise bucket a different fresh uid). Untrusted: the proxy sees only
        its TCP peer (127.0.0.1) and ignores CDN geo headers."""
        headers: dict[str, str] = {"User-Agent": self.user_agent}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies)
        for name, value in self.headers_extra:
            if trusted or name.lower() not in CDN_GEO_HEADERS:
                headers[name] = value
        description: dict[str, Any] = {
            "url": proxy.url + self.target(path),
            "method": "GET",
            "headers": headers,
            "ip": self.client_ip if trusted and self.client_ip else "127.0.0.1",
        }
        if user_uid is not None:
            description["userUid"] = user_uid
        if tags is not None:
            description["tags"] = list(tags)
        return description


LONDON_DESKTOP = Visitor("london-desktop", UA_WINDOWS_CHROME, IP_LONDON)
US_IPHONE_BF_HIGH_VALUE = Visitor(
    "us-iphone-bf-high-value", UA_IPHONE, IP_US, query="utm_campaign=bf",
    cookies=(("cs-personalize-user-uid", "e2e-us-iphone-7"), ("cs-lytics-audiences", "|high_value_shoppers|")),
)  # fmt: skip
SILVER_LYTICS_VIP = Visitor(
    "silver-lytics-vip", UA_MAC_SAFARI, IP_US,
    cookies=(("cs-personalize-user-uid", "e2e-vip-42"), ("cs-lytics-audiences", "|vip_shoppers|")),
    headers_extra=(("X-Live-Attributes", '{"tier": "silver", "lifetime_value": 800}'),),
)  # fmt: skip
GB_PIXEL_NEWSLETTER = Visitor(
    "gb-pixel-newsletter-link", UA_PIXEL, IP_LONDON, query="ref=newsletter&utm_source=email",
    cookies=(("cs-lytics-flows", "|post-purchase-nurture:engaged|"),),
)  # fmt: skip
US_GOOGLEBOT = Visitor("us-googlebot", UA_GOOGLEBOT, IP_US)
SEARCH_TABLET = Visitor(
    "search-referral-tablet", UA_ANDROID_TABLET, None,
    headers_extra=(("Referer", "https://www.google.com/search?q=jackets"),),
)  # fmt: skip
NO_GEO_NEWCOMER = Visitor("no-geo-newcomer", UA_WINDOWS_CHROME, None)

VISITORS = (
    LONDON_DESKTOP, US_IPHONE_BF_HIGH_VALUE, SILVER_LYTICS_VIP, GB_PIXEL_NEWSLETTER, US_GOOGLEBOT, SEARCH_TABLET,
    NO_GEO_NEWCOMER,
)  # fmt: skip


@dataclass(frozen=True)
class VisitorCatalog:
    """The sample visitors of the e2e suite (fixture `visitors`), plus `new()` for one-off ones."""

    all: tuple[Visitor, ...] = VISITORS
    london: Visitor = LONDON_DESKTOP
    us_iphone_bf: Visitor = US_IPHONE_BF_HIGH_VALUE
    vip: Visitor = SILVER_LYTICS_VIP
    gb_pixel: Visitor = GB_PIXEL_NEWSLETTER
    googlebot: Visitor = US_GOOGLEBOT
    search_tablet: Visitor = SEARCH_TABLET
    newcomer: Visitor = NO_GEO_NEWCOMER

    @staticmethod
    def new(name: str, **fields: Any) -> Visitor:
        return Visitor(name, **fields)


@pytest.fixture(scope="session")
def visitors() -> VisitorCatalog:
    return VisitorCatalog()


# -- small helpers shared through fixtures ------------------------------------------------------------------


def parse_set_cookie(value: str) -> tuple[str, str, list[str]]:
    """`name=value; A; B=c` -> (name, raw value, [attributes]); the value is the text between the first `=`
    and `;`, as the Personalize SDK reads it (SPEC §6)."""
    first, _, rest = value.partition(";")
    name, _, raw = first.partition("=")
    attributes = [part.strip() for part in rest.split(";") if part.strip()]
    return name.strip(), raw, attributes


@pytest.fixture(scope="session")
def set_cookie() -> Any:
    return parse_set_cookie


@pytest.fixture(scope="session")
def rss() -> Any:
    return proc_rss_bytes


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def set_cookies(self) -> list[str]:
        return list(self.headers.getall("Set-Cookie", ()))


class Http:
    """A plain aiohttp client: no cookie jar, redirects not followed, one event loop per call."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout

    async def request_async(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, data: Any = None
    ) -> Reply:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout) as session,
            session.request(method, url, headers=headers, data=data, allow_redirects=False) as response,
        ):
            return Reply(response.status, response.headers, await response.read())

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None, data: Any = None) -> Reply:
        return asyncio.run(self.request_async(method, url, headers=headers, data=data))

    def get(self, url: str, *, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", url, headers=headers)


@pytest.fixture(scope="session")
def http() -> Http:
    return Http()
