"""Start real servers for tests (redis-server), on free loopback ports, and stop them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of a GET, or None when nothing answers yet."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def require_tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    assert path, f"{name} is required for this test and is not installed (.ci/run installs it with apt-get)"
    return path


@contextmanager
def _serving(argv: list[str], port: int, *, real_clock: bool = False) -> Iterator[None]:
    """A server process, until it listens on `port`; terminated (then killed) on the way out."""
    # `real_clock`: run on the machine's real clock even when the suite runs clock-shifted (`faketime`, see the
    # README): redis-server does not start under libfaketime. Origins keep the shifted clock, so their Date
    # headers agree with the proxy's (an origin a year behind would make every response stale, RFC 9111 §4.2.3).
    drop = ("LD_PRELOAD", "FAKETIME") if real_clock else ()
    env = {k: v for k, v in os.environ.items() if k not in drop}
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for_port(port)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    binary = require_tool("redis-server")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)]
    with _serving(argv, port, real_clock=True):
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def node_origin(*args: str) -> Iterator[str]:
    """The bundled example origin (examples/origin/server.js) on a free port, with `args` (e.g.
    `--page-cache-control`); yields its base URL."""
    node = require_tool("node")
    port = free_port()
    server = Path(__file__).resolve().parents[2] / "examples" / "origin" / "server.js"
    with _serving([node, str(server), "--host", "127.0.0.1", "--port", str(port), *args], port):
        yield f"http://127.0.0.1:{port}"
