from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.postgres import PostgresServer, PostgresToolsMissing, start_postgres

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def example_rules() -> Path:
    return ROOT / "rules"


@pytest.fixture(scope="session")
def geoip_db() -> Path:
    return ROOT / "tests" / "data" / "GeoIP2-City-Test.mmdb"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL (Debian's package) for the session, on a free loopback port; stopped and removed at the end.
    Fails, never skips, when PostgreSQL is not installed."""
    try:
        server = start_postgres(tmp_path_factory.mktemp("postgres"))
    except PostgresToolsMissing as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.remove()


_postgres_database_numbers = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL, for one test."""
    if not postgres_server.running:
        postgres_server.start()  # a previous test stopped it (outage tests)
    return postgres_server.create_database(f"test_{next(_postgres_database_numbers)}")
