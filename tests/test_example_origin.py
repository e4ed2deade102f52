"""The bundled Node origin's own tests (CDA-style variant application, streaming, WebSocket) run under node."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def test_example_origin_node_suite_passes(repo_root: Path) -> None:
    node = shutil.which("node")
    assert node, "node is required for the example origin tests (.ci/run installs it)"
    result = subprocess.run(
        [node, "--test", "examples/origin/test/"], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
