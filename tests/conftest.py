from __future__ import annotations

from pathlib import Path

import pytest

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
