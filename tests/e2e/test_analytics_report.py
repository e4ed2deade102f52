"""Events posted to a running proxy's Edge API (as the browser SDK posts them) come out of `edgeproxy report
--json` with the figures worked out by hand: deduplicated impressions, one conversion per user and metric,
conversions before the impression and non-metric events ignored."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, Http, Launcher

pytestmark = pytest.mark.e2e
P = "6565d3b1a3f0c7b2e1d4a9f0"


def post(http: Http, base: str, user: str, events: list[dict[str, str]]) -> None:
    reply = http.request(
        "POST", base + "/_personalize/events", data=json.dumps(events),
        headers={"X-Project-Uid": P, "X-CS-Personalize-User-Uid": user, "Content-Type": "text/plain"},
    )  # fmt: skip
    assert reply.status == 200, reply.body


def imp(exp: str, var: str) -> dict[str, str]:
    return {"type": "IMPRESSION", "experienceShortUid": exp, "variantShortUid": var}


def event(key: str) -> dict[str, str]:
    return {"type": "EVENT", "eventKey": key}


def test_events_posted_to_the_edge_api_are_reported(launch: Launcher, http: Http, tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    proxy = launch.proxy("http://127.0.0.1:9", "--state", state)  # no page is proxied: Edge API only
    # Checkout button test (2): control 0, green 1, sticky 2; metrics purchase (primary) and add_to_cart.
    post(http, proxy.url, "a", [imp("2", "0"), imp("2", "0")])  # one impression
    post(http, proxy.url, "a", [imp("2", "0"), event("purchase"), event("purchase")])  # one conversion
    post(http, proxy.url, "b", [imp("2", "1"), event("add_to_cart"), event("newsletter_signup")])
    post(http, proxy.url, "c", [event("purchase")])  # converts before seeing anything ...
    time.sleep(0.01)
    post(http, proxy.url, "c", [imp("2", "1")])  # ... so it does not count
    post(http, proxy.url, "d", [imp("2", "1"), event("purchase"), imp("3", "2")])  # counts for 2 and 3
    post(http, proxy.url, "e", [imp("2", "2"), event("promo_bar_click")])  # not a metric of 2
    proxy.stop()

    result = subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", "report", "--rules", "rules", "--state", state, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    exps = {e["shortUid"]: e for e in report["experiences"]}
    checkout = exps["2"]
    figures = {
        v["shortUid"]: (v["impressions"], *(v["metrics"][k]["conversions"] for k in ("purchase", "add_to_cart")))
        for v in checkout["variants"]
    }
    assert figures == {"0": (1, 1, 0), "1": (3, 1, 1), "2": (1, 0, 0)}
    assert checkout["variants"][1]["metrics"]["purchase"]["rate"] == pytest.approx(1 / 3)
    assert checkout["variants"][1]["metrics"]["purchase"]["uplift"] == pytest.approx((1 / 3 - 1) / 1)
    assert checkout["impressions"] == 5 and checkout["runningDays"] < 1 and checkout["winner"] is None
    assert not checkout["insightsAvailable"]
    shipping = exps["3"]
    assert [(v["impressions"], v["metrics"]["purchase"]["conversions"]) for v in shipping["variants"]] == [
        (0, 0), (0, 0), (1, 1)
    ]
    assert exps["7"]["impressions"] == 0
