"""The analytics dashboard in a real headless Chromium: it renders, its charts have data, the browser logs no
error, and the figures it shows are `edgeproxy report --json`'s. A screenshot is saved to
tests/e2e/artifacts/dashboard.png on every run.

The proxy (`edgeproxy serve --ops-token ... --state sqlite:///...`) is started on a state file pre-filled with
four weeks of events before a fixed instant, and its clock starts at that instant (`--now`): the page reads the
same on any date.

Needs node, Debian's chromium and `npm ci --prefix tests/sdk` (playwright-core): each missing one FAILS the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.analytics_data import example_history, write_sqlite

from .conftest import ROOT, Launcher, Service, require_tool

TOKEN = "dash-token-5f2a"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PLAYWRIGHT_CORE = ROOT / "tests" / "sdk" / "node_modules" / "playwright-core" / "index.mjs"
DRIVER = Path(__file__).resolve().parent / "dashboard_browser.mjs"
NOW = "2026-12-07T12:00:00Z"  # the proxy's clock (--now) and the end of the pre-filled history
NOW_TS = 1_796_644_800.0
LIVE_EXPERIENCES = 9  # rules/: 10 experiences, one draft-only


def chromium_path() -> str:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("Debian's chromium is required (apt-get install -y chromium); this test fails rather than skips.")


def playwright_core() -> Path:
    if not PLAYWRIGHT_CORE.is_file():
        pytest.fail(f"playwright-core is missing at {PLAYWRIGHT_CORE}: run `npm ci --prefix tests/sdk`.")
    return PLAYWRIGHT_CORE


@pytest.fixture
def dashboard(launch: Launcher, node_origin: Service, tmp_path: Path) -> dict[str, Any]:
    now = NOW_TS
    state_url = write_sqlite(tmp_path / "state.sqlite3", example_history(now))
    # No impressions of its own: the store must hold exactly the events the CLI report is compared with.
    server = launch.proxy(node_origin, "--ops-token", TOKEN, "--state", state_url, "--impressions", "off", "--now", NOW)
    for i in range(30):  # decisions for the live counters
        request = urllib.request.Request(server.url + "/", headers={"Cookie": f"cs-personalize-user-uid=live-{i}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    return {"server": server, "state_url": state_url, "now": now}


def run_browser(url: str, screenshot: Path, tmp: Path) -> dict[str, Any]:
    node = require_tool("node")
    env = {**os.environ, "DASHBOARD_URL": url, "CHROMIUM": chromium_path(), "PLAYWRIGHT_CORE": str(playwright_core()),
           "PROFILE_ROOT": str(tmp), "SCREENSHOT": str(screenshot)}  # fmt: skip
    result = subprocess.run([node, str(DRIVER)], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"browser driver failed:\n{result.stdout}\n{result.stderr}"
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def cli_report(state_url: str, now: float) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", "report", "--rules", "rules", "--state", state_url, "--json",
         "--now", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 60))],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.e2e
def test_dashboard_renders_with_chart_data_and_no_console_errors(dashboard: dict[str, Any], tmp_path: Path) -> None:
    server: Service = dashboard["server"]
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    seen = run_browser(f"{server.url}/_edgeproxy/dashboard?token={TOKEN}", screenshot, tmp_path)

    errors = [m for m in seen["console"] if m["type"] in ("error", "warning")]
    assert errors == [], errors
    assert seen["pageErrors"] == []
    assert seen["failedRequests"] == []
    assert all(r["status"] == 200 for r in seen["responses"]), seen["responses"]
    # Everything came from the proxy itself: no CDN, no other host.
    assert {r["url"].split("/")[2] for r in seen["responses"]} == {f"127.0.0.1:{server.port}"}

    page = seen["page"]
    assert page["state"] == "ready" and page["error"] is None
    assert int(page["liveTotal"].replace(",", "")) > 0
    cards = page["experiences"]
    # Priority order (experiences-priority.json), all live experiences.
    assert [c["shortUid"] for c in cards] == ["1", "0", "6", "3", "2", "4", "8", "9", "7"][:LIVE_EXPERIENCES]
    by_uid = {c["shortUid"]: c for c in cards}
    for uid in ("2", "3", "7"):  # A/B tests: impressions, conversion rate, P2BB charts, all with data
        charts = by_uid[uid]["charts"]
        assert [c["title"].split(",")[0] for c in charts] == [
            "New unique impressions per day", "Conversion rate", "Probability to be best"
        ], charts
        assert all(c["points"] > 0 and c["paths"] > 0 for c in charts), charts
    for uid in ("0", "6"):  # segmented with impressions: the impressions chart has data
        assert by_uid[uid]["charts"][0]["points"] > 0
    assert "Winner: Green button" in by_uid["2"]["badges"]
    assert "Sample ratio mismatch" in by_uid["7"]["badges"]
    assert any("Sample ratio mismatch" in n for n in by_uid["7"]["notes"])
    assert "Add to cart" in seen["secondaryMetricFacts"]
    # Experiences are named by short uid as `edgeproxy report` names them ("[2] Checkout button"), not by position.
    assert [c["label"] for c in cards] == [f"[{c['shortUid']}]" for c in cards]
    assert page["toc"] == [f"[{c['shortUid']}] {c['name']}" for c in cards]
    assert by_uid["2"]["charts"][0]["legend"][0].startswith("0 · ")
    for card in cards:
        for chart in card["charts"]:
            assert len(set(chart["yTicks"])) == len(chart["yTicks"]), (card["shortUid"], chart)

    # The page shows the CLI report's figures.
    report = cli_report(dashboard["state_url"], dashboard["now"])
    for exp in report["experiences"]:
        rows = by_uid[exp["shortUid"]]["rows"]
        for variant, row in zip(exp["variants"], rows, strict=False):
            assert row[0].startswith(f"{variant['shortUid']} · {variant['name']}")
            assert f"{variant['impressions']:,}" in row, (exp["shortUid"], row)
            if exp["primaryMetric"]:
                cell = variant["metrics"][exp["primaryMetric"]]
                assert f"{cell['conversions']:,}" in row, (exp["shortUid"], row)
    assert screenshot.stat().st_size > 20_000


@pytest.mark.e2e
def test_dashboard_needs_the_ops_token(dashboard: dict[str, Any]) -> None:
    base = dashboard["server"].url + "/_edgeproxy/dashboard"
    for url, headers in [(base, {}), (base + "?token=wrong", {}), (base + "/data.json", {}),
                         (base + "/data.json", {"Authorization": "Bearer wrong"})]:  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    request = urllib.request.Request(base + "/data.json", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        data = json.loads(response.read())
    assert data["ready"] is True
    assert [e["shortUid"] for e in data["report"]["experiences"]] == ["1", "0", "6", "3", "2", "4", "8", "9", "7"]


@pytest.mark.e2e
def test_small_counts_get_whole_number_y_ticks(launch: Launcher, node_origin: Service, tmp_path: Path) -> None:
    """Issue 15 item 15: a chart of one or two impressions a day labels its y-axis 0, 1, 2 — not 0, 1, 1, 2, 2."""
    state_url = write_sqlite(tmp_path / "state.sqlite3", example_history(NOW_TS, users=4, days=3))
    server = launch.proxy(node_origin, "--ops-token", TOKEN, "--state", state_url, "--impressions", "off", "--now", NOW)
    seen = run_browser(f"{server.url}/_edgeproxy/dashboard?token={TOKEN}", tmp_path / "small.png", tmp_path)
    assert seen["pageErrors"] == [] and seen["page"]["state"] == "ready"
    impressions = [card["charts"][0] for card in seen["page"]["experiences"] if card["charts"][0]["points"] > 0]
    assert impressions, seen["page"]["experiences"]
    for chart in impressions:
        ticks = chart["yTicks"]
        assert len(set(ticks)) == len(ticks), ticks
        assert all(t.replace(",", "").isdigit() for t in ticks), ticks  # counts: whole numbers only
        values = [int(t.replace(",", "")) for t in ticks]
        assert values == sorted(values) and values[0] == 0, ticks
    for card in seen["page"]["experiences"]:
        for chart in card["charts"]:
            assert len(set(chart["yTicks"])) == len(chart["yTicks"]), (card["shortUid"], chart)
