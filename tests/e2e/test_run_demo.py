"""examples/run-demo.sh as the README runs it: its hints work on any date (DEMO_NOW), or on the real clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT, free_port

pytestmark = pytest.mark.e2e


def start_demo(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    listen = f"127.0.0.1:{free_port()}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEPROXY_", "DEMO_", "ORIGIN_", "PROXY_"))}
    clean["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), clean.get("PATH", "")])
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    clean.update({"ORIGIN_PORT": str(free_port()), "PROXY_LISTEN": listen, **env})
    process = subprocess.Popen(["bash", str(ROOT / "examples" / "run-demo.sh"), "--state",
                                f"sqlite:///{log.parent}/demo.db"], stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, env=clean, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{listen}/_edgeproxy/ready", timeout=2) as answer:
                if answer.status == 200:
                    return process, f"http://{listen}"
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    stop(process)
    raise AssertionError(f"the demo did not start:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # the script, its origin and its proxy: our own session
        process.wait(timeout=20)


def page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def test_the_demo_hints_work_on_any_date(tmp_path: Path) -> None:
    process, base = start_demo({}, tmp_path / "demo.log")
    try:
        assert "Black Friday" in page(base + "/?utm_campaign=bf")  # the README's first hint, whatever the date
    finally:
        stop(process)
    assert "clock: 2026-11-28T12:00:00Z" in (tmp_path / "demo.log").read_text()


def test_an_empty_demo_now_runs_on_the_real_clock(tmp_path: Path) -> None:
    process, base = start_demo({"DEMO_NOW": ""}, tmp_path / "demo.log")
    try:
        assert "<html" in page(base + "/")
    finally:
        stop(process)
    assert "clock: real time" in (tmp_path / "demo.log").read_text()
