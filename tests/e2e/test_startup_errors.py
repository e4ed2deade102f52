"""`edgeproxy serve` start-up failures as a user meets them (issue 15): a busy port, broken rules, a config file
used from another directory. Real processes on free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.processes import free_port, http_status

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"


def serve(
    *flags: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    clean.update(env or {})
    argv = [sys.executable, "-m", "edgeproxy.cli", "serve", *flags]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=clean)


@contextmanager
def listening() -> Iterator[tuple[socket.socket, int]]:
    """A port something else already listens on (and never accepts)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock, int(sock.getsockname()[1])
    finally:
        sock.close()


def connections_made(sock: socket.socket) -> int:
    sock.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def assert_one_clear_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr  # every session, connector and store opened was closed


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_fails_at_once_with_one_line(workers: str, tmp_path: Path) -> None:
    with listening() as (_, port):
        started = time.monotonic()
        result = serve("--origin", "http://127.0.0.1:9", "--rules", str(RULES), "--listen", f"127.0.0.1:{port}",
                       "--workers", workers, "--state", "sqlite:///state.db", cwd=tmp_path)  # fmt: skip
    assert_one_clear_error(result, f"cannot listen on 127.0.0.1:{port}: Address already in use (setting 'listen'")
    assert [line for line in result.stderr.splitlines() if "ERROR" in line] == [result.stderr.strip()]
    assert not (tmp_path / "state.db").exists()  # the port is checked before anything else is opened
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_admin_finds_its_port_busy_before_it_syncs(workers: str, tmp_path: Path) -> None:
    with listening() as (admin, admin_port), listening() as (_, port):
        result = serve(
            "--origin", "http://127.0.0.1:9", "--admin-url", f"http://127.0.0.1:{admin_port}", "--project-uid", "p1",
            "--listen", f"127.0.0.1:{port}", "--workers", workers, "--snapshot-dir", str(tmp_path / "snap"),
            "--sync-timeout", "2", cwd=tmp_path, env={"EDGEPROXY_AUTHTOKEN": "secret"},
        )  # fmt: skip
        assert connections_made(admin) == 0  # Admin was never asked
    assert_one_clear_error(result, f"cannot listen on 127.0.0.1:{port}")
    assert not (tmp_path / "snap").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_broken_rules_at_start_say_the_proxy_does_not_start(workers: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    audiences = rules / "personalize" / "audiences" / "audiences.json"
    audiences.write_text(audiences.read_text().replace('"STRING_EQUALS"', '"SOUNDS_LIKE"', 1))
    result = serve("--origin", "http://127.0.0.1:9", "--rules", str(rules), "--listen", f"127.0.0.1:{free_port()}",
                   "--workers", workers, cwd=tmp_path)  # fmt: skip
    assert_one_clear_error(result, "rules error, not starting (exit 2): ")
    assert "unknown match condition 'SOUNDS_LIKE'" in result.stderr
    assert "keeps serving" not in result.stderr  # there is no previous snapshot at a start
    assert "RulesError: " not in result.stderr
    assert f"setting 'rules' = {str(rules)!r}, from command line --rules" in result.stderr  # which setting, from where


def test_a_config_file_works_from_any_directory(tmp_path: Path) -> None:
    """Relative paths written in a config file are relative to the file's folder, not to the current directory."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(RULES, site / "rules")
    port = free_port()
    (site / "edgeproxy.toml").write_text(
        f'origin = "http://127.0.0.1:9"\nrules = "rules"\nlisten = "127.0.0.1:{port}"\n'
        'state = "sqlite:///data/state.db"\ndecision_log = "data/decisions.jsonl"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (site / "data").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeproxy.cli", "serve", "--config", "../site/edgeproxy.toml"],
        cwd=elsewhere, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while http_status(f"http://127.0.0.1:{port}/_edgeproxy/ready", timeout=0.5) != 200:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the proxy did not become ready"
            time.sleep(0.1)
        assert (site / "data" / "state.db").exists()
        assert list(elsewhere.iterdir()) == []  # nothing written relative to the current directory
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stderr is not None:
            process.stderr.close()
