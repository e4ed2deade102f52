"""`serve --workers N`: shared port, same snapshot, graceful drain, rolling restart without failed requests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from .conftest import GEOIP, ROOT, Launcher, Service, free_port

pytestmark = pytest.mark.e2e


def start_workers(launch: Launcher, origin: Service, tmp_path: Path, workers: int = 2) -> Service:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "edgeproxy.cli", "serve", "--origin", origin.url, "--rules", str(ROOT / "rules"),
            "--geoip", GEOIP, "--listen", f"127.0.0.1:{port}", "--workers", str(workers),
            "--state", f"sqlite:///{tmp_path}/state.db"]  # fmt: skip
    service = Service(name=f"edgeproxy x{workers} :{port}", argv=argv, port=port, log_path=tmp_path / "w.log",
                      env=env, cwd=tmp_path)  # fmt: skip
    return launch._launch(service, "/_edgeproxy/ready")


async def _load(url: str, seconds: float, action: asyncio.Future[None] | None = None) -> tuple[int, list[str]]:
    failures: list[str] = []
    done = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def worker(n: int) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                try:
                    async with session.get(url, headers={"Cookie": f"cs-personalize-user-uid=w{n}"}) as reply:
                        await reply.read()
                        if reply.status != 200:
                            failures.append(f"status {reply.status}")
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))
                done += 1

        await asyncio.gather(*(worker(n) for n in range(16)))
    return done, failures


def test_workers_serve_one_snapshot_and_a_rolling_restart_fails_no_request(launch: Launcher, tmp_path: Path) -> None:
    origin = launch.node_origin()
    proxy = start_workers(launch, origin, tmp_path)
    versions = set()
    pids = set()
    for _ in range(20):
        import json
        import urllib.request

        with urllib.request.urlopen(proxy.url + "/_edgeproxy/status") as reply:
            versions.add(json.load(reply)["snapshot"]["version"])
        with urllib.request.urlopen(proxy.url + "/echo") as reply:
            pids.add(reply.headers.get("x-cs-personalize-user-uid") is None)
    assert len(versions) == 1

    async def scenario() -> tuple[int, list[str]]:
        load = asyncio.ensure_future(_load(proxy.url + "/echo", 10.0))
        await asyncio.sleep(1.0)
        os.kill(proxy.pid, signal.SIGUSR2)  # rolling restart under load
        return await load

    done, failures = asyncio.run(scenario())
    assert done > 100
    assert failures == [], failures[:5]
    deadline = time.monotonic() + 30
    while "rolling restart done" not in proxy.log_tail(200):
        assert time.monotonic() < deadline, proxy.log_tail(40)
        time.sleep(0.2)


def test_sigterm_drains_in_flight_requests(launch: Launcher, tmp_path: Path) -> None:
    origin = launch.node_origin()
    proxy = start_workers(launch, origin, tmp_path)

    async def scenario() -> int:
        async with aiohttp.ClientSession() as session:
            slow = asyncio.ensure_future(session.get(proxy.url + "/slow?ms=1500"))
            await asyncio.sleep(0.4)
            os.kill(proxy.pid, signal.SIGTERM)
            reply = await slow
            await reply.read()
            return reply.status

    assert asyncio.run(scenario()) == 200
    assert proxy.process is not None
    assert proxy.process.wait(timeout=20) == 0
