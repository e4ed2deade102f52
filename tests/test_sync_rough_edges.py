"""Issue 15 items 10, 13, 14: fake-admin's `invalid` fault and bind, a rejected sync's path, `--watch` logging."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edgeproxy.engine.errors import RulesError
from edgeproxy.engine.useragent import UserAgentClassifier
from edgeproxy.runtime.snapshots import SnapshotHolder
from edgeproxy.sync.client import ManagementClient
from edgeproxy.sync.fake_admin import FakeAdmin
from edgeproxy.sync.poller import RulesSource, SnapshotPoller
from edgeproxy.sync.writer import write_export

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "6565d3b1a3f0c7b2e1d4a9f0"


def _sync_with_fault(fault: dict[str, object], out: Path) -> None:
    async def main() -> None:
        admin = FakeAdmin(ROOT / "rules", PROJECT, "t")
        async with TestServer(admin.app()) as server, aiohttp.ClientSession() as session:
            async with session.post(str(server.make_url("/_fake/faults")), data=json.dumps(fault)) as reply:
                assert reply.status == 200
            tree = await ManagementClient(str(server.make_url("")), PROJECT, authtoken="t").fetch_tree()
        write_export(out, tree.files)

    asyncio.run(main())


def test_the_invalid_fault_without_paths_breaks_the_next_sync(tmp_path: Path) -> None:
    """A `count` is spent on /audiences by default, where a broken condition is a load error (not on /attributes)."""
    with pytest.raises(RulesError, match="SOUNDS_LIKE"):
        _sync_with_fault({"mode": "invalid", "count": 1}, tmp_path / "out")
    _sync_with_fault({"mode": "invalid", "count": 0, "paths": ["/nothing"]}, tmp_path / "good")  # sanity: no fault


def test_a_rejected_sync_names_a_file_that_exists(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RulesError) as rejected:
        _sync_with_fault({"mode": "invalid"}, out)
    named = Path(rejected.value.file)
    assert named.is_file(), rejected.value.file
    assert named.is_relative_to(out / "rejected") and "SOUNDS_LIKE" in named.read_text()
    assert not [p for p in (out / "versions").iterdir() if p.name.startswith(".staging")]


def test_fake_admin_says_serving_only_once_bound(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "edgeproxy.cli", "fake-admin", "--rules", str(ROOT / "rules"), "--project-uid",
             PROJECT, "--token", "t", "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 2, done
    assert "serving" not in done.stdout and "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_watch_logs_a_rejection_once_and_now_serving_once_per_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    audiences = rules / "personalize" / "audiences" / "audiences.json"
    good = audiences.read_text()
    source = RulesSource(rules, UserAgentClassifier())
    holder = SnapshotHolder()
    poller = SnapshotPoller(holder, source, interval=1.0, watch=True)

    async def watch_ticks(count: int) -> list[str]:
        """What the --watch loop does each second: refresh only when a file changed."""
        results = []
        for _ in range(count):
            if source.changed():
                results.append((await poller.refresh("watch"))["result"])
        return results

    caplog.set_level(logging.INFO, logger="edgeproxy.sync")
    assert asyncio.run(watch_ticks(1)) == ["swapped"]
    first = holder.current
    assert first is not None
    audiences.write_text(good.replace('"STRING_EQUALS"', '"SOUNDS_LIKE"', 1))
    assert asyncio.run(watch_ticks(5)) == ["rejected"]  # a broken file that stays broken is tried once
    assert asyncio.run(poller.refresh("trigger"))["result"] == "rejected"  # SIGHUP retries, not logged again
    audiences.write_text(good)  # the fix: back to the rules that still serve
    os.utime(audiences, ns=(1, 1))
    audiences.write_text(good)  # an editor writing twice
    assert asyncio.run(watch_ticks(3)) == ["unchanged"]
    assert holder.current is first and holder.last_error is None
    messages = [record.getMessage() for record in caplog.records]
    assert sum("rejected" in m for m in messages) == 1, messages
    assert sum("now serving" in m for m in messages) == 1, messages
