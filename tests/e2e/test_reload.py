"""`--rules DIR --watch` reloads on a file change; SIGHUP reloads; a broken edit keeps the last good."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from .conftest import ROOT, Http, Launcher, Service

pytestmark = pytest.mark.e2e


def version(http: Http, proxy: Service) -> str:
    return str(http.get(proxy.url + "/_edgeproxy/status").json()["snapshot"]["version"])


def reverse_priority(rules: Path) -> None:
    priority = rules / "personalize" / "experiences-priority.json"
    order = json.loads(priority.read_text())
    order["priorityOrder"].reverse()
    priority.write_text(json.dumps(order))


def wait_for(check: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


@pytest.mark.parametrize("trigger", ["watch", "sighup"])
def test_rules_folder_reloads_and_a_broken_edit_keeps_the_last_good(
    launch: Launcher, http: Http, tmp_path: Path, trigger: str
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    origin = launch.node_origin()
    proxy = launch.proxy(origin, *(["--watch"] if trigger == "watch" else []))
    proxy.stop()
    proxy.argv[proxy.argv.index("--rules") + 1] = str(rules)
    proxy.start()
    proxy.wait_ready("/_edgeproxy/ready")
    first = version(http, proxy)

    def poke() -> None:
        if trigger == "sighup":
            os.kill(proxy.pid, signal.SIGHUP)

    reverse_priority(rules)
    poke()
    wait_for(lambda: version(http, proxy) != first)
    second = version(http, proxy)

    audiences = rules / "personalize" / "audiences" / "audiences.json"
    audiences.write_text(audiences.read_text().replace('"STRING_EQUALS"', '"SOUNDS_LIKE"', 1))
    poke()
    wait_for(lambda: "SOUNDS_LIKE" in str(http.get(proxy.url + "/_edgeproxy/status").json()["sync"]["lastError"]))
    assert version(http, proxy) == second  # the broken edit is rejected, the last good keeps serving
    assert http.get(proxy.url + "/echo").status == 200
