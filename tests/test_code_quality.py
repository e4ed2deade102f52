"""House style (DESIGN.md): mypy --strict and ruff clean; the engine importable without aiohttp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_mypy_strict_is_clean(repo_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "edgeproxy"], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean(repo_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "edgeproxy", "tests", "benchmarks"],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_engine_imports_without_aiohttp(repo_root: Path) -> None:
    code = (
        "import sys; sys.modules['aiohttp'] = None\n"
        "import edgeproxy.engine, edgeproxy.engine.explain\n"
        "assert 'aiohttp' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
