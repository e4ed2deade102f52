"""A real PostgreSQL for tests (Debian's `postgresql` package): `initdb` + `pg_ctl` in a temporary directory, on a
free loopback port, with its unix socket inside that directory. Nothing is mocked and nothing system-wide is started.

`initdb` refuses to run as root, so as root the cluster is created and run as an unprivileged account (`postgres`,
which Debian's package creates, else `nobody`) through `runuser`. pytest's temporary directories are private to
root (0700), which that account cannot enter, so as root the cluster lives in its own `mkdtemp` directory under
the system temporary directory; `base_dir` then only holds a note saying where. `remove()` deletes it.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from edgeproxy.store.base import EventRecord
from support.processes import free_port

INSTALL_HINT = "run scripts/install-test-tools.sh (as root it installs Debian's `postgresql` package)"
SUPERUSER = "edgeproxy"
# Settings for a throwaway test cluster: durability off (a crash loses nothing a test needs), small footprint.
TEST_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
}


class PostgresToolsMissing(RuntimeError):
    pass


def postgres_bin_dir() -> Path:
    """The newest `/usr/lib/postgresql/<major>/bin` holding `initdb` and `pg_ctl`; PostgresToolsMissing if none."""
    candidates = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bin_dir in candidates:
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    raise PostgresToolsMissing(f"PostgreSQL's initdb/pg_ctl not found under /usr/lib/postgresql/*/bin: {INSTALL_HINT}")


def _unprivileged_account() -> str | None:
    """The account the cluster runs as when we are root (initdb refuses root); None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresToolsMissing("running as root and neither a `postgres` nor a `nobody` account exists for initdb")


def _server_environment() -> dict[str, str]:
    # The suite may run clock-shifted under libfaketime (see tests/support/processes.py): PostgreSQL runs on the
    # machine's real clock, as redis-server does. Event times are data, never the server's clock.
    drop = ("LD_PRELOAD", "FAKETIME", "PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE")
    return {k: v for k, v in os.environ.items() if k not in drop}


class PostgresServer:
    """One PostgreSQL cluster in `root` (data in `root/data`, socket and log next to it), listening on `port`."""

    def __init__(self, bin_dir: Path, root: Path, port: int, account: str | None) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.port = port
        self.account = account
        self.data_dir = root / "data"
        self.socket_dir = root / "socket"
        self.log_file = root / "postgres.log"
        self.running = False

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self.account is not None:
            command = ["runuser", "-u", self.account, "--", *command]
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_server_environment(),
            cwd=self.root,
            check=False,
        )
        if completed.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv)} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}\n{log}"
            )
        return completed

    def initdb(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            for key, value in TEST_SETTINGS.items():
                conf.write(f"{key} = '{value}'\n")

    def configure(self, settings: dict[str, str]) -> None:
        """Append settings to postgresql.conf; they apply at the next `start()`."""
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            for key, value in settings.items():
                conf.write(f"{key} = '{value}'\n")

    def start(self) -> None:
        """Start (again) on the same port and data directory; returns once it accepts connections."""
        options = f"-p {self.port} -k {self.socket_dir}"
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w",
            "-t", "60", "start",
        )  # fmt: skip
        self.running = True

    def stop(self) -> None:
        """Fast shutdown (open sessions are ended); the data directory is kept, so `start()` brings it back."""
        if not self.running:
            return
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")
        self.running = False

    def remove(self) -> None:
        """Stop and delete the cluster's directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create database `name` (a plain identifier) and return its URL."""
        if not name.replace("_", "").isalnum() or not name[0].isalpha():
            raise ValueError(f"database name {name!r}: use letters, digits and underscores, starting with a letter")
        psql = str(self.bin_dir / "psql")
        self._run(psql, "-X", "-q", "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER,
                  "-d", "postgres", "-c", f'CREATE DATABASE "{name}"')  # fmt: skip
        return self.url(name)


def start_postgres(base_dir: Path) -> PostgresServer:
    """A fresh cluster, started. Its files go in `base_dir` when we are not root; as root in a directory of its own
    (named in `base_dir/postgres-location.txt`) that the unprivileged account can reach."""
    bin_dir = postgres_bin_dir()
    account = _unprivileged_account()
    base_dir.mkdir(parents=True, exist_ok=True)
    if account is None:
        root = Path(tempfile.mkdtemp(prefix="postgres-", dir=base_dir))
    else:
        root = Path(tempfile.mkdtemp(prefix="edgeproxy-postgres-"))
        entry = pwd.getpwnam(account)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        (base_dir / "postgres-location.txt").write_text(f"{root}\n")
    server = PostgresServer(bin_dir, root, free_port(), account)
    try:
        (server.socket_dir).mkdir()
        if account is not None:
            entry = pwd.getpwnam(account)
            os.chown(server.socket_dir, entry.pw_uid, entry.pw_gid)
        server.initdb()
        server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def store_postgres_events(url: str, events: Sequence[EventRecord], *, batch: int = 2000, id_prefix: str = "e") -> int:
    """Insert `events` through the real PostgresEventStore (its schema, partitions, indexes), ids `e0`, `e1`, ...
    (`id_prefix` then the position in the list); returns how many were newly inserted."""
    from edgeproxy.store.postgres_events import PostgresEventStore

    async def fill() -> int:
        store = PostgresEventStore(url)
        await store.start()
        inserted = 0
        try:
            for i in range(0, len(events), batch):
                inserted += await store.insert_events(
                    [(f"{id_prefix}{i + j}", e) for j, e in enumerate(events[i : i + batch])]
                )
        finally:
            await store.close()
        return inserted

    return asyncio.run(fill())
