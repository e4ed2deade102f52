"""SDK conformance fixtures: the REAL `@contentstack/personalize-edge-sdk` (1.0.27) against a running `edgeproxy serve`.

Processes (session scope, each on a free loopback port, stopped with SIGTERM then SIGKILL at teardown):

- the Node example origin (`examples/origin/server.js`) behind `edgeproxy serve` with a SQLite state file: the
  Node flows call this proxy's Edge API with the SDK (`tests/sdk/*.mjs`);
- a static origin (`python -m http.server`) serving `tests/sdk/page/` plus the SDK browser bundle, behind a second
  `edgeproxy serve` with its own state file: headless Chromium opens http://127.0.0.1:Q/sdk-test.html THROUGH the
  proxy, so the page, the bundle and the Edge API share the proxy's origin (`tests/sdk/browser.mjs`).

The oracle is `edgeproxy decide` on the SPEC §9 description of the same visitor. Each Node script prints one JSON
line; a script that crashes fails the test with its output and the proxy's log.

Requirements, each of which FAILS (never skips) the tests with the command that fixes it:
node >= 20, `npm ci --prefix tests/sdk` (the pinned SDK and playwright-core), and Debian's `chromium`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.processes import free_port
from support.processes import http_status as _http_status

ROOT = Path(__file__).resolve().parents[2]
SDK_DIR = ROOT / "tests" / "sdk"
PAGE_DIR = SDK_DIR / "page"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
RULES = "rules"
GEOIP = "tests/data/GeoIP2-City-Test.mmdb"
NODE_SERVER = "examples/origin/server.js"
SDK_PACKAGE = "@contentstack/personalize-edge-sdk"
SDK_VERSION = "1.0.27"
SDK_BUNDLE = (
    SDK_DIR / "node_modules" / "@contentstack" / "personalize-edge-sdk" / "dist" / "personalize-edge-sdk.min.js"
)
NPM_CI = "npm ci --prefix tests/sdk"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
START_TIMEOUT = 20.0
FAKE_EDGE_API_READY = "/_fake/received"
SCRIPT_TIMEOUT = 90.0

PROJECT_UID: str = json.loads((ROOT / RULES / "personalize" / "projects" / "projects.json").read_text())[0]["uid"]

UID_COOKIE = "cs-personalize-user-uid"
MANIFEST_COOKIE = "cs-personalize-manifest"
UUID4_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"

UA_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)
UA_WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
IP_LONDON = "81.2.69.160"  # GB / ENG / London in the MaxMind test database
IP_US = "216.160.83.56"  # US / WA / Milton
VIP_ATTRIBUTES = {"tier": "gold", "lifetime_value": 1500}  # "VIP customers": experience 0 -> variant "0"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "e2e_sdk: runs the real @contentstack/personalize-edge-sdk (Node and headless Chromium) against "
        f"`edgeproxy serve`; needs node >= 20, `{NPM_CI}` and Debian's chromium",
    )


# -- requirements: fail, never skip ------------------------------------------------------------------------


def _fail(message: str) -> None:
    pytest.fail(
        message + "\nThese SDK conformance tests fail rather than skip when a requirement is missing.", pytrace=False
    )


@pytest.fixture(scope="session")
def node_bin() -> str:
    node = shutil.which("node")
    if node is None:
        _fail(
            "`node` (>= 20) is required by tests/e2e_sdk and was not found on PATH. "
            "Install it (Debian/Ubuntu: apt-get install -y nodejs npm)."
        )
    assert node is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        major = 0
    if major < 20:
        _fail(
            f"tests/e2e_sdk need node >= 20 (global fetch/Request/Response, Headers.getSetCookie); "
            f"{node} is {version or 'of unknown version'}."
        )
    return node


@pytest.fixture(scope="session")
def sdk_installed(node_bin: str) -> Path:
    """The pinned SDK and playwright-core in tests/sdk/node_modules (installed by `npm ci --prefix tests/sdk`)."""
    wanted = {SDK_PACKAGE: SDK_VERSION, "playwright-core": None}
    problems = []
    for package, version in wanted.items():
        manifest = SDK_DIR / "node_modules" / package / "package.json"
        if not manifest.is_file():
            problems.append(f"{package} is not installed ({manifest} is missing)")
            continue
        found = json.loads(manifest.read_text()).get("version")
        if version is not None and found != version:
            problems.append(f"{package} is {found}, the suite pins exactly {version}")
    if not SDK_BUNDLE.is_file():
        problems.append(f"the SDK browser bundle {SDK_BUNDLE.relative_to(ROOT)} is missing")
    if problems:
        _fail(
            "npm packages for tests/e2e_sdk: " + "; ".join(problems) + f".\nRun `{NPM_CI}` from the repository root "
            "(it installs exactly what tests/sdk/package-lock.json pins; no browser download)."
        )
    return SDK_DIR


@pytest.fixture(scope="session")
def chromium_bin() -> str:
    """Debian's chromium (never a browser downloaded by playwright); CHROMIUM_PATH overrides."""
    override = os.environ.get("CHROMIUM_PATH")
    candidates = [override] if override else [*CHROMIUM_CANDIDATES, shutil.which("chromium") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    _fail(
        f"Chromium is required by the browser tests of tests/e2e_sdk and was not found at "
        f"{', '.join(c for c in candidates if c)}. Install Debian's package: apt-get install -y chromium "
        f"(or set CHROMIUM_PATH). Never `npx playwright install`."
    )
    raise AssertionError("unreachable")


# -- processes ---------------------------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, ready_path: str) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive():
                _fail(
                    f"{self.name} exited with code {self.process.returncode} before it was ready.\n"
                    f"command: {' '.join(self.argv)}\nlog:\n{self.log_tail()}"
                )
            if _http_status(self.url + ready_path) == 200:
                return
            time.sleep(0.05)
        self.stop()
        _fail(
            f"{self.name} did not answer 200 on {ready_path} within {START_TIMEOUT:.0f} s.\n"
            f"command: {' '.join(self.argv)}\nlog:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


@dataclass
class Stack:
    """An origin and the `edgeproxy serve` in front of it, with the proxy's SQLite state file."""

    origin: Service
    proxy: Service
    state_db: Path

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def edge_api_url(self) -> str:
        return self.proxy.url + "/_personalize"

    def logs(self) -> str:
        return (
            f"--- {self.proxy.name} log ---\n{self.proxy.log_tail()}\n"
            f"--- {self.origin.name} log ---\n{self.origin.log_tail(15)}"
        )

    def events(self, user_uid: str) -> list[dict[str, Any]]:
        """The rows of the proxy's `events` table for one user, oldest first (read after the fact)."""
        with sqlite3.connect(f"file:{self.state_db}?mode=ro", uri=True, timeout=10) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT ts, project_uid, user_uid, type, experience_short_uid, variant_short_uid, event_key, source "
                "FROM events WHERE user_uid = ? ORDER BY id",
                (user_uid,),
            ).fetchall()
        return [dict(row) for row in rows]


class Launcher:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.services: list[Service] = []

    def _service(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None) -> Service:
        log = self.tmp / f"{len(self.services) + 1:02d}-{name.split()[0]}.log"
        service = Service(name=name, argv=argv, port=port, log_path=log, env=env or dict(os.environ))
        self.services.append(service)
        return service

    def node_origin(self, node: str, *options: str) -> Service:
        port = free_port()
        service = self._service(
            f"node-origin :{port}", [node, NODE_SERVER, "--host", "127.0.0.1", "--port", str(port), *options], port
        )
        service.start("/healthz")
        return service

    def static_origin(self, docroot: Path) -> Service:
        port = free_port()
        argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(docroot), str(port)]
        service = self._service(f"static-origin :{port}", argv, port)
        service.start("/sdk-test.html")
        return service

    def fake_edge_api(self, *project_uids: str) -> Service:
        """`edgeproxy fake-edge-api` (the Edge API a proxy forwards to); `stop()` then `start(FAKE_EDGE_API_READY)`
        restarts it on the same port (what it had received is forgotten)."""
        port = free_port()
        argv = [sys.executable, "-m", "edgeproxy.cli", "fake-edge-api", "--listen", f"127.0.0.1:{port}"]
        for uid in project_uids:
            argv += ["--project-uid", uid]
        service = self._service(f"fake-edge-api :{port}", argv, port)
        service.start(FAKE_EDGE_API_READY)
        return service

    def proxy(self, origin: Service, state_db: Path, *options: str, settings: dict[str, str] | None = None) -> Service:
        """`edgeproxy serve` in front of `origin`; `options`: more flags; `settings`: EDGEPROXY_* variables."""
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "edgeproxy.cli",
            "serve",
            "--origin",
            origin.url,
            "--rules",
            RULES,
            "--listen",
            f"127.0.0.1:{port}",
            "--geoip",
            GEOIP,
            "--trusted-proxies",
            "127.0.0.1",
            "--state",
            f"sqlite:///{state_db}",
            "--access-log",
            *options,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
        env.update(settings or {})
        service = self._service(f"edgeproxy :{port} -> {origin.url}", argv, port, env)
        service.start("/_edgeproxy/ready")
        return service

    def stop_all(self) -> None:
        for service in reversed(self.services):
            service.stop()


@pytest.fixture(scope="session")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("e2e-sdk"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="session")
def stack(launcher: Launcher, node_bin: str) -> Stack:
    """Node example origin behind `edgeproxy serve` (trusting loopback, so X-Forwarded-For gives the geo)."""
    origin = launcher.node_origin(node_bin)
    state_db = launcher.tmp / "state.db"
    return Stack(origin=origin, proxy=launcher.proxy(origin, state_db), state_db=state_db)


@pytest.fixture(scope="session")
def page_stack(launcher: Launcher, sdk_installed: Path) -> Stack:
    """tests/sdk/page + the SDK browser bundle on a static origin, behind its own `edgeproxy serve`."""
    docroot = launcher.tmp / "page-docroot"
    docroot.mkdir()
    for item in PAGE_DIR.iterdir():
        shutil.copy(item, docroot / item.name)
    shutil.copy(SDK_BUNDLE, docroot / SDK_BUNDLE.name)
    origin = launcher.static_origin(docroot)
    state_db = launcher.tmp / "page-state.db"
    return Stack(origin=origin, proxy=launcher.proxy(origin, state_db), state_db=state_db)


# -- running the SDK ---------------------------------------------------------------------------------------


@dataclass
class NodeRunner:
    node: str

    def __call__(self, script: str, stack: Stack, env: dict[str, Any] | None = None) -> dict[str, Any]:
        """`node tests/sdk/<script>` with EDGE_API_URL/PROJECT_UID (+ env; non-strings as JSON); its JSON line."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
        full_env.update({"EDGE_API_URL": stack.edge_api_url, "PROJECT_UID": PROJECT_UID})
        for name, value in (env or {}).items():
            full_env[name] = value if isinstance(value, str) else json.dumps(value)
        argv = [self.node, str((SDK_DIR / script).relative_to(ROOT))]
        try:
            result = subprocess.run(
                argv, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"{' '.join(argv)} did not finish within {SCRIPT_TIMEOUT:.0f} s\n"
                f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}\n{stack.logs()}",
                pytrace=False,
            )
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        shown_env = dict(env or {})
        if not lines:
            pytest.fail(
                f"{' '.join(argv)} printed no JSON (exit {result.returncode}); env {shown_env}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}\n{stack.logs()}",
                pytrace=False,
            )
        output: dict[str, Any] = json.loads(lines[-1])
        if result.returncode != 0 or not output.get("ok"):
            pytest.fail(
                f"{' '.join(argv)} failed (exit {result.returncode}): {output.get('error')}\n"
                f"{output.get('stack') or ''}\nenv {shown_env}\nstderr:\n{result.stderr[-3000:]}\n"
                f"{stack.logs()}",
                pytrace=False,
            )
        output["_stderr"] = result.stderr
        return output


@pytest.fixture(scope="session")
def run_node(node_bin: str, sdk_installed: Path) -> NodeRunner:
    return NodeRunner(node_bin)


def run_decide(descriptions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `edgeproxy decide --rules rules --geoip ...` prints for these request descriptions (SPEC §9)."""
    stdin = "".join(json.dumps(d) + "\n" for d in descriptions)
    result = subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", "decide", "--rules", RULES, "--geoip", GEOIP, "--strict"],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"edgeproxy decide failed:\n{result.stdout}\n{result.stderr}"
    manifests = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(manifests) == len(descriptions), result.stdout
    return manifests


def decide_one(description: dict[str, Any]) -> dict[str, Any]:
    return run_decide([description])[0]


def assert_sdk_matches_decide(reported: dict[str, Any], decided: dict[str, Any], what: str) -> None:
    """What the SDK instance reports equals `edgeproxy decide` for the same visitor (uid, manifest, aliases)."""
    context = f"{what}\nSDK reported: {json.dumps(_public(reported))}\ndecide printed: {json.dumps(decided)}"
    assert reported["userId"] == decided["userUid"], context
    assert reported["experiences"] == decided["experiences"], context
    assert reported["aliases"] == decided["aliases"], context
    assert reported["variantParam"] == decided["variantParam"], context
    assert reported["variants"] == decided["activeVariants"], context


def _public(reported: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reported.items() if k != "http"}


def active(reported: dict[str, Any]) -> dict[str, str | None]:
    """experience shortUid -> active variant shortUid, from an SDK snapshot or a manifest."""
    return {e["shortUid"]: e["activeVariantShortUid"] for e in reported["experiences"]}


def edge_calls(http: Sequence[dict[str, Any]], method: str, endpoint: str) -> list[dict[str, Any]]:
    """The SDK's recorded HTTP exchanges with one Edge API endpoint (e.g. "GET", "/manifest")."""
    return [h for h in http if h["method"] == method and h["path"].split("?")[0].endswith("/_personalize" + endpoint)]


def parse_set_cookie(header: str) -> tuple[str, str, list[str]]:
    """(name, value, attributes); the value is the text between the first `=` and `;` (SPEC §6)."""
    pair, _, rest = header.partition(";")
    name, _, value = pair.partition("=")
    return name.strip(), value.strip(), [a.strip() for a in rest.split(";") if a.strip()]


def cookie_pairs(headers: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    found: dict[str, tuple[str, list[str]]] = {}
    for header in headers:
        name, value, attributes = parse_set_cookie(header)
        assert name not in found, f"cookie {name} set twice: {headers}"
        found[name] = (value, attributes)
    return found


def browse(node_bin: str, chromium_bin: str, stack: Stack, visits: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run page visits in headless Chromium through `stack` (tests/sdk/preview.mjs: the page, then the SDK bundle
    in it); what each one saw, by name. Every document must answer 200 without page errors."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env.update(CHROMIUM=chromium_bin, PROJECT_UID=PROJECT_UID, SDK_BUNDLE=str(SDK_BUNDLE),
               VISITS=json.dumps(visits), X_FORWARDED_FOR=IP_LONDON, SCREENSHOT_DIR=str(ARTIFACTS))  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    argv = [node_bin, str((SDK_DIR / "preview.mjs").relative_to(ROOT))]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT * 3)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"preview.mjs printed no JSON (exit {result.returncode})\n{result.stderr[-3000:]}\n{stack.logs()}"
    output = json.loads(lines[-1])
    assert output.get("ok"), f"preview.mjs failed: {output.get('error')}\n{output.get('stack')}\n{stack.logs()}"
    seen = {visit["name"]: visit for visit in output["visits"]}
    for visit in seen.values():
        assert visit["errors"] == [], (visit["name"], visit["errors"])
        assert visit["document"]["status"] == 200, (visit["name"], visit["document"])
    return seen
