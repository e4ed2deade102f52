"""The dashboard handler in-process (token, page, data, cache) and the live decision counters."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from support.analytics_backends import store_events
from support.analytics_data import example_history

from edgeproxy.analytics.live import LiveDecisions
from edgeproxy.analytics.sources import redact
from edgeproxy.endpoints.dashboard import dashboard_handler, static_text
from edgeproxy.engine.context import context_from_description
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.runtime.config import load_config
from edgeproxy.runtime.serve import make_state

TOKEN = "t0ken"


NOW = "2026-12-07T12:00:00Z"  # the proxy's clock (`now`): the history ends here, on any date
NOW_TS = 1_796_644_800.0


def with_dashboard(
    state_url: str, scenario: Callable[[TestClient[Any, Any]], Awaitable[None]], manifests: tuple[Any, ...] = (),
    **settings: str,
) -> None:
    """`settings`: more proxy settings (e.g. now); `ops_token=""` turns the dashboard off."""
    values = {"origin": "http://127.0.0.1:9", "rules": "rules", "state": state_url, "ops_token": TOKEN, "now": NOW,
              **settings}
    config = load_config(None, {}, values)
    state = make_state(config)
    for manifest in manifests:
        state.live.record(manifest)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await dashboard_handler(request, state)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)

    async def main() -> None:
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(main())


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/state.db"
    store_events(url, example_history(NOW_TS, users=400))
    return url


def test_token_is_required_in_a_header_or_the_query(state_url: str) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for path, headers in [("/_edgeproxy/dashboard", {}), ("/_edgeproxy/dashboard?token=nope", {}),
                              ("/_edgeproxy/dashboard/data.json", {"Authorization": "Bearer nope"})]:  # fmt: skip
            response = await client.get(path, headers=headers)
            assert response.status == 401, path
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), path
        for path, headers in [("/_edgeproxy/dashboard?token=" + TOKEN, {}),
                              ("/_edgeproxy/dashboard", {"Authorization": "Bearer " + TOKEN}),
                              ("/_edgeproxy/dashboard", {"X-Edgeproxy-Token": TOKEN})]:  # fmt: skip
            response = await client.get(path, headers=headers)
            assert response.status == 200, path
        assert (await client.get("/_edgeproxy/dashboard/nope?token=" + TOKEN)).status == 404
        refused = await client.post("/_edgeproxy/dashboard?token=" + TOKEN)
        assert refused.status == 405 and refused.headers["Allow"] == "GET, HEAD"

    with_dashboard(state_url, scenario)


def test_no_token_configured_means_no_dashboard(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/_edgeproxy/dashboard?token=")).status == 403  # the dashboard is off

    with_dashboard(f"sqlite:///{tmp_path}/s.db", scenario, ops_token="")

def test_page_is_self_contained_with_a_nonce_csp(state_url: str) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get("/_edgeproxy/dashboard?token=" + TOKEN)
        html = await response.text()
        csp = response.headers["Content-Security-Policy"]
        nonce = re.search(r"'nonce-([^']+)'", csp)
        assert nonce and f'<script nonce="{nonce.group(1)}">' in html
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert static_text("dashboard.js")[:200] in html and "{{" not in html
        assert not re.search(r"""(src|href)=["']https?:""", html)  # nothing from a CDN
        assert 'data-url="/_edgeproxy/dashboard/data.json"' in html

    with_dashboard(state_url, scenario)


def test_data_has_the_report_series_and_live_counts(state_url: str) -> None:
    snapshot = load_snapshot("rules")
    before = 0
    ctx = context_from_description({"userUid": "dash-1"}, clock=lambda: NOW_TS, new_uid=lambda: "x",
                                   classifier=snapshot.classifier, geo_lookup=None)  # fmt: skip
    manifest = snapshot.decide(ctx.context)

    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get("/_edgeproxy/dashboard/data.json", headers={"Authorization": "Bearer " + TOKEN})
        assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
        data = await response.json()
        assert data["ready"] is True and data["stale"] is False
        assert data["live"]["decisions"] == before + 1
        entry = manifest.entries[0]
        variant = "-" if entry[1] is None else entry[1].short_uid
        assert data["live"]["experiences"][entry[0]][variant]["total"] >= 1
        report = data["report"]
        assert [e["shortUid"] for e in report["experiences"]] == ["1", "0", "6", "3", "2", "4", "8", "9", "7"]
        series = data["series"]["2"]
        assert len(series["days"]) >= 28 and series["primaryMetric"] == "purchase"
        imps = series["variants"]["0"]["cumulativeImpressions"]
        assert imps[-1] == next(e for e in report["experiences"] if e["shortUid"] == "2")["variants"][0]["impressions"]
        assert len(series["probabilityToBeBest"]["1"]) == len(series["days"])
        again = await (await client.get("/_edgeproxy/dashboard/data.json?token=" + TOKEN)).json()
        assert again["generatedAt"] == data["generatedAt"]  # cached: nothing changed

    with_dashboard(state_url, scenario, (manifest,))


def test_data_reports_an_unreadable_state_as_503(tmp_path: Path) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get("/_edgeproxy/dashboard/data.json?token=" + TOKEN)
        assert response.status == 503
        assert (await response.json())["error"] == "analytics_unavailable"

    (tmp_path / "empty.db").write_bytes(b"")
    with_dashboard(f"sqlite:///{tmp_path}/empty.db", scenario)


def test_redact_hides_passwords() -> None:
    assert redact("redis://:s3cret@cache:6379/0") == "redis://***@cache:6379/0"
    assert redact("sqlite:///state.db") == "sqlite:///state.db"


class FakeManifest:
    def __init__(self, *entries: tuple[str, str | None]) -> None:
        self.entries = tuple((e, None if v is None else type("V", (), {"short_uid": v})()) for e, v in entries)


def test_live_counters_roll_per_minute() -> None:
    now = [6000.0]
    counters = LiveDecisions(clock=lambda: now[0])
    counters.record(FakeManifest(("2", "1"), ("0", None)))
    counters.record(FakeManifest(("2", "1")))
    now[0] += 120  # two minutes later
    counters.record(FakeManifest(("2", "0")))
    snap = counters.snapshot()
    assert snap["decisions"] == 3
    assert snap["experiences"]["2"] == {"1": {"total": 2, "last5Minutes": 2}, "0": {"total": 1, "last5Minutes": 1}}
    assert snap["experiences"]["0"]["-"]["total"] == 1
    assert snap["perMinute"][-3:] == [2, 0, 1] and len(snap["perMinute"]) == 60
    now[0] += 600  # ten minutes later: nothing in the last five
    later = counters.snapshot()
    assert later["experiences"]["2"]["1"] == {"total": 2, "last5Minutes": 0}


def test_live_counts_of_past_minutes_stay_per_slot_across_snapshot_reloads() -> None:
    """Every reload compiles new variant objects (hashed by identity): past minutes must not keep a key per
    reload, or a proxy reloading every few seconds would grow its live counts for ever."""
    now = [6000.0]
    counters = LiveDecisions(clock=lambda: now[0])
    for _reload in range(200):
        counters.record(FakeManifest(("2", "1"), ("0", None)))  # new variant objects each time, same slots
        now[0] += 61
    assert counters.totals == {("2", "1"): 200, ("0", None): 200}
    assert len(counters._totals) == 2  # past minutes, per (experience, variant)
    assert all(len(counts) == 2 for _, _, counts in counters._history)


def test_report_is_dated_on_the_proxy_clock(tmp_path: Path) -> None:
    """A proxy started with `now` (the demo's --now) dates events on that clock; the dashboard's report reads the
    same clock, not the system's (else "running 7.6 days" a minute after a demo started in the past)."""
    start = 1_795_867_200.0  # 2026-11-28T12:00:00Z
    url = f"sqlite:///{tmp_path}/state.db"
    store_events(url, example_history(start, users=50))
    async def scenario(client: TestClient[Any, Any]) -> None:
        data = await (await client.get("/_edgeproxy/dashboard/data.json?token=" + TOKEN)).json()
        assert data["report"]["now"].startswith("2026-11-28T12:0"), data["report"]["now"]

    with_dashboard(url, scenario, now="2026-11-28T12:00:00Z")
