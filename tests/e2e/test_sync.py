"""Sync from a (fake) Personalize Admin: changes propagate, faults and outages never replace the last good.

Real processes: the fake Management API (`edgeproxy fake-admin`), the Node origin and `edgeproxy serve`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import GEOIP, ROOT, Http, Launcher, Service, free_port

pytestmark = pytest.mark.e2e

PROJECT = "6565d3b1a3f0c7b2e1d4a9f0"
TOKEN = "admin-secret"
HOOK = "hook-secret"
UK_AUDIENCE_COUNTRY = '"value": "GB"'
# A visitor from Boxford, England (MaxMind test data; not London, so only the UK audience holds) through a
# trusted proxy with a known uid: experience 0 shows variant 1 (UK shoppers).
DESKTOP = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"
LONDON = {"X-Forwarded-For": "2.125.160.216", "Cookie": "cs-personalize-user-uid=sync-visitor", "User-Agent": DESKTOP}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Admin:
    def __init__(self, launch: Launcher, rules: Path) -> None:
        self.launch = launch
        self.rules = rules
        self.port = free_port()
        self.service = Service(
            name=f"fake admin :{self.port}",
            argv=[sys.executable, "-m", "edgeproxy.cli", "fake-admin", "--rules", str(rules), "--project-uid",
                  PROJECT, "--token", TOKEN, "--listen", f"127.0.0.1:{self.port}"],
            port=self.port, log_path=launch.tmp / f"admin-{self.port}.log", env=_clean_env(),
        )  # fmt: skip
        launch._launch(self.service, "/_fake/requests")

    @property
    def url(self) -> str:
        return self.service.url

    def audiences_file(self) -> Path:
        return self.rules / "personalize" / "audiences" / "audiences.json"

    def set_uk_country(self, country: str) -> None:
        file = self.audiences_file()
        text = file.read_text()
        data = json.loads(text)
        for audience in data:
            if audience.get("name", "").lower().startswith("uk"):
                audience["definition"]["rules"][0]["attributeMatchOptions"]["value"] = country
                break
        else:
            raise AssertionError("the example rules have no UK audience")
        file.write_text(json.dumps(data, indent=2))

    def fault(self, http: Http, **fault: Any) -> None:
        assert http.request("POST", self.url + "/_fake/faults", data=json.dumps(fault)).status == 200

    def clear(self, http: Http) -> None:
        http.request("DELETE", self.url + "/_fake/faults")


@pytest.fixture
def admin(launch: Launcher, tmp_path: Path) -> Admin:
    rules = tmp_path / "admin-rules"
    shutil.copytree(ROOT / "rules", rules)
    return Admin(launch, rules)


def start_proxy(launch: Launcher, admin_url: str, origin: Service, snapshot_dir: Path, *flags: str) -> Service:
    port = free_port()
    workdir = launch.tmp / f"sync-proxy-{port}"
    workdir.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "edgeproxy.cli", "serve", "--origin", origin.url, "--admin-url", admin_url,
            "--project-uid", PROJECT, "--listen", f"127.0.0.1:{port}", "--geoip", GEOIP,
            "--trusted-proxies", "127.0.0.1", "--snapshot-dir", str(snapshot_dir), "--webhook-token", HOOK,
            "--sync-timeout", "2", *flags]  # fmt: skip
    service = Service(
        name=f"edgeproxy(admin) :{port}", argv=argv, port=port, log_path=launch.tmp / f"sync-proxy-{port}.log",
        env=_clean_env(EDGEPROXY_AUTHTOKEN=TOKEN), cwd=workdir,
    )  # fmt: skip
    return launch._launch(service, "/_edgeproxy/ready")


def hero_variant(http: Http, proxy: Service) -> str | None:
    seen = http.get(proxy.url + "/echo", headers=LONDON)
    assert seen.status == 200
    params = seen.json()["headers"]["x-cs-personalize-variants"].split(",")
    return next((p.split("_")[1] for p in params if p.startswith("0_")), None)


def webhook(http: Http, proxy: Service) -> Any:
    reply = http.request("POST", proxy.url + "/_edgeproxy/sync", headers={"Authorization": f"Bearer {HOOK}"})
    return reply.status, reply.json()


def status(http: Http, proxy: Service) -> Any:
    return http.get(proxy.url + "/_edgeproxy/status").json()


@pytest.fixture
def origin(launch: Launcher) -> Service:
    return launch.node_origin()


def test_an_audience_changed_in_admin_reaches_the_page_after_the_webhook(
    launch: Launcher, admin: Admin, origin: Service, http: Http, tmp_path: Path
) -> None:
    proxy = start_proxy(launch, admin.url, origin, tmp_path / "snap", "--sync-interval", "3600")
    assert hero_variant(http, proxy) == "1"  # UK shoppers
    admin.set_uk_country("DE")
    assert hero_variant(http, proxy) == "1"  # nothing changes until a sync
    code, outcome = webhook(http, proxy)
    assert code == 200 and outcome["result"] == "swapped"
    assert hero_variant(http, proxy) != "1"
    code, outcome = webhook(http, proxy)
    assert outcome["result"] == "unchanged"  # conditional requests: everything answered 304
    assert http.request("POST", proxy.url + "/_edgeproxy/sync").status == 401  # no token sent


def test_a_change_arrives_within_one_poll_interval(
    launch: Launcher, admin: Admin, origin: Service, http: Http, tmp_path: Path
) -> None:
    proxy = start_proxy(launch, admin.url, origin, tmp_path / "snap", "--sync-interval", "1")
    assert hero_variant(http, proxy) == "1"
    admin.set_uk_country("DE")
    deadline = time.monotonic() + 10
    while hero_variant(http, proxy) == "1":
        assert time.monotonic() < deadline, "the change did not arrive within several poll intervals"
        time.sleep(0.2)


FAULTS = [
    {"mode": "error", "status": 500},
    {"mode": "error", "status": 503, "paths": ["/experiences/"]},
    {"mode": "timeout", "paths": ["/audiences"]},
    {"mode": "malformed", "paths": ["/audiences"]},
    {"mode": "invalid", "paths": ["/audiences"]},
    {"mode": "partial", "paths": ["/experiences"]},
]


def test_each_fault_class_leaves_the_previous_snapshot_serving(
    launch: Launcher, admin: Admin, origin: Service, http: Http, tmp_path: Path
) -> None:
    proxy = start_proxy(launch, admin.url, origin, tmp_path / "snap", "--sync-interval", "3600")
    version = status(http, proxy)["snapshot"]["version"]
    admin.set_uk_country("DE")  # a sync that succeeded would change the hero
    for fault in FAULTS:
        admin.fault(http, **fault)
        code, outcome = webhook(http, proxy)
        assert code == 502 and outcome["result"] == "rejected", (fault, outcome)
        assert hero_variant(http, proxy) == "1", fault
        current = status(http, proxy)
        assert current["snapshot"]["version"] == version
        assert current["sync"]["lastError"], fault
        admin.clear(http)
    code, outcome = webhook(http, proxy)  # Admin healthy again: the change lands
    assert outcome["result"] == "swapped"
    assert hero_variant(http, proxy) != "1"


def test_admin_down_keeps_serving_and_a_cold_start_uses_the_last_good_snapshot(
    launch: Launcher, admin: Admin, origin: Service, http: Http, tmp_path: Path
) -> None:
    snap = tmp_path / "snap"
    proxy = start_proxy(launch, admin.url, origin, snap, "--sync-interval", "0.5")
    version = status(http, proxy)["snapshot"]["version"]
    admin.service.stop()
    time.sleep(1.5)  # a few failed polls
    assert hero_variant(http, proxy) == "1"
    sync = status(http, proxy)["sync"]
    assert sync["consecutiveFailures"] >= 1 and "cannot reach Admin" in sync["lastError"]
    proxy.stop()
    assert (snap / "snapshot.msgpack").exists() and (snap / "personalize").is_symlink()
    again = start_proxy(launch, admin.url, origin, snap, "--sync-interval", "3600")  # Admin still down
    assert hero_variant(http, again) == "1"
    assert status(http, again)["snapshot"]["version"] == version
    assert "last good" in status(http, again)["snapshot"]["source"]


def test_cold_start_without_admin_or_last_good_is_not_ready_but_passes_through(
    launch: Launcher, origin: Service, http: Http, tmp_path: Path
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "edgeproxy.cli", "serve", "--origin", origin.url, "--admin-url",
            f"http://127.0.0.1:{free_port()}", "--project-uid", PROJECT, "--listen", f"127.0.0.1:{port}",
            "--snapshot-dir", str(tmp_path / "none"), "--sync-interval", "3600"]  # fmt: skip
    service = Service(name="edgeproxy(no admin)", argv=argv, port=port, log_path=tmp_path / "p.log",
                      env=_clean_env(EDGEPROXY_AUTHTOKEN=TOKEN), cwd=tmp_path)  # fmt: skip
    launch._launch(service, "/_edgeproxy/health")
    assert http.get(service.url + "/_edgeproxy/ready").status == 503
    page = http.get(service.url + "/echo")
    assert page.status == 200 and "x-cs-variant-uid" not in page.json()["headers"]


@pytest.fixture
def swap_files(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """Two compiled snapshots that differ in two experiences at once, and a link the proxy reads."""
    from edgeproxy.files.snapshot_file import load_snapshot, write_snapshot_file

    a_rules = tmp_path / "a"
    b_rules = tmp_path / "b"
    shutil.copytree(ROOT / "rules", a_rules)
    shutil.copytree(ROOT / "rules", b_rules)
    audiences = b_rules / "personalize" / "audiences" / "audiences.json"
    text = audiences.read_text()
    assert text.count(UK_AUDIENCE_COUNTRY) >= 1
    audiences.write_text(text.replace('"value": "GB"', '"value": "ZZ"'))
    priority = b_rules / "personalize" / "experiences-priority.json"
    order = json.loads(priority.read_text())
    order["priorityOrder"].reverse()  # every experience moves: a mixed manifest cannot go unnoticed
    priority.write_text(json.dumps(order))
    write_snapshot_file(load_snapshot(a_rules), tmp_path / "a.msgpack")
    write_snapshot_file(load_snapshot(b_rules), tmp_path / "b.msgpack")
    link = tmp_path / "current.msgpack"
    os.symlink(tmp_path / "a.msgpack", link)
    yield tmp_path / "a.msgpack", tmp_path / "b.msgpack", link


def test_a_thousand_swaps_under_load_fail_no_request_and_mix_no_manifest(
    launch: Launcher, origin: Service, http: Http, swap_files: tuple[Path, Path, Path]
) -> None:
    import asyncio

    import aiohttp

    from edgeproxy.engine import VisitorContext
    from edgeproxy.files.snapshot_file import load_snapshot

    a_file, b_file, link = swap_files
    proxy = launch.proxy(origin, "--webhook-token", HOOK, geoip=False)
    # `launch.proxy` serves the repository rules; restart on the swappable link instead.
    proxy.stop()
    proxy.argv[proxy.argv.index("--rules") + 1] = str(link)
    proxy.start()
    proxy.wait_ready("/_edgeproxy/ready")
    users = [f"load-user-{n}" for n in range(20)]
    expected: dict[str, dict[str, Any]] = {}
    for file in (a_file, b_file):
        snapshot = load_snapshot(file)
        expected[snapshot.version] = {
            uid: snapshot.decide(VisitorContext(user_uid=uid, now=time.time())).edge_body() for uid in users
        }
    assert len(expected) == 2

    async def scenario() -> tuple[int, int, int, list[str]]:
        stop = asyncio.Event()
        problems: list[str] = []
        counts = {"requests": 0}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def load(worker: int) -> None:
                n = worker
                while not stop.is_set():
                    uid = users[n % len(users)]
                    n += 1
                    headers = {"X-Project-Uid": PROJECT, "X-CS-Personalize-User-Uid": uid}
                    async with session.get(proxy.url + "/_personalize/manifest", headers=headers) as reply:
                        counts["requests"] += 1
                        if reply.status != 200:
                            problems.append(f"status {reply.status}")
                            continue
                        body = await reply.json()
                        version = reply.headers["X-Edgeproxy-Snapshot"]
                        if body != expected[version][uid]:
                            problems.append(f"manifest for {uid} does not match snapshot {version}")
                    page = await session.get(proxy.url + "/echo", headers={"Cookie": f"cs-personalize-user-uid={uid}"})
                    counts["requests"] += 1
                    if page.status != 200:
                        problems.append(f"page status {page.status}")
                    page.release()

            workers = [asyncio.create_task(load(w)) for w in range(8)]
            swaps = 0
            for i in range(1000):
                target = b_file if i % 2 == 0 else a_file
                temp = link.with_suffix(".tmp")
                temp.unlink(missing_ok=True)
                os.symlink(target, temp)
                os.replace(temp, link)
                async with session.post(proxy.url + "/_edgeproxy/sync",
                                        headers={"Authorization": f"Bearer {HOOK}"}) as reply:  # fmt: skip
                    outcome = await reply.json()
                    if outcome["result"] == "swapped":
                        swaps += 1
                    else:
                        problems.append(f"swap {i}: {outcome}")
            stop.set()
            await asyncio.gather(*workers)
        return swaps, counts["requests"], len(problems), problems[:5]

    swaps, requests, failures, sample = asyncio.run(scenario())
    assert swaps == 1000
    assert requests > 1000
    assert failures == 0, sample
