"""Two proxy processes on one Redis: shared attributes, shared cache purges, one published snapshot for both."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.processes import redis_server

from .conftest import ROOT, Http, Launcher

pytestmark = pytest.mark.e2e
PROJECT = "6565d3b1a3f0c7b2e1d4a9f0"
TOKEN = "fleet-token"


def test_two_instances_share_state_cache_and_snapshots(launch: Launcher, http: Http, tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        origin = launch.node_origin()
        flags = ("--state", url, "--cache-store", url, "--fleet-redis", url, "--ops-token", TOKEN,
                 "--trusted-proxies", "127.0.0.1")  # fmt: skip
        one = launch.proxy(origin, *flags)
        two = launch.proxy(origin, *flags)
        user = {"X-Project-Uid": PROJECT, "X-CS-Personalize-User-Uid": "fleet-user"}

        # Attributes set through one instance decide pages on the other.
        patch = http.request("PATCH", one.url + "/_personalize/user-attributes", headers=user,
                             data=json.dumps({"tier": "gold", "lifetime_value": 2000}))  # fmt: skip
        assert patch.status == 200
        manifest = http.get(two.url + "/_personalize/manifest", headers=user).json()
        assert manifest["activeVariants"]["0"] == "0"  # VIP hero from the attributes stored through `one`

        # A response cached through one is a hit through the other; a purge on one purges both. Behind a load
        # balancer every instance sees the site's Host, which is part of the key.
        path = "/cacheable?cc=public,%20s-maxage=300&tag=fleet-tag"
        visitor = {"Cookie": "cs-personalize-user-uid=c1", "Host": "shop.example"}
        first = http.get(one.url + path, headers=visitor)
        assert first.headers["X-Cache"] == "MISS"
        second = http.get(two.url + path, headers=visitor)
        assert second.headers["X-Cache"] == "HIT" and second.body == first.body
        purge = http.request("POST", one.url + "/_edgeproxy/purge", data=json.dumps({"tags": ["fleet-tag"]}),
                             headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert purge.status == 200 and purge.json()["purged"] >= 1
        assert http.get(two.url + path, headers=visitor).headers["X-Cache"] == "MISS"

        # A snapshot published once reaches both.
        changed = tmp_path / "rules"
        shutil.copytree(ROOT / "rules", changed)
        priority = changed / "personalize" / "experiences-priority.json"
        order = json.loads(priority.read_text())
        order["priorityOrder"].reverse()
        priority.write_text(json.dumps(order))
        published = subprocess.run(
            [sys.executable, "-m", "edgeproxy.cli", "publish", "--rules", str(changed), "--fleet-redis", url],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        assert "2 instance(s) listening" in published.stdout
        version = published.stdout.split()[1]
        deadline = time.monotonic() + 10
        for proxy in (one, two):
            while http.get(proxy.url + "/_edgeproxy/status").json()["snapshot"]["version"] != version:
                assert time.monotonic() < deadline, "the published snapshot did not reach every instance"
                time.sleep(0.1)
