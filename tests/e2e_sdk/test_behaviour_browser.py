"""Behavioural attributes (SPEC §13, issue 21) end to end: headless Chromium on the Node example origin THROUGH
`edgeproxy serve --config examples/demo.toml` (the demo's `[behaviour]` section), the example project's
"Returning visitor welcome" (experience 8: visit_count > 1) and "High-intent shopper" (experience 9:
checkout_views_7d >= 2).

Leaving for longer than the session timeout is done on an injected clock: the proxy stops cleanly (everything it
counted is written) and starts again on the same state file with `--now` an hour later. What is judged: the variant
the origin rendered (its `cs-variant-aliases` meta, from the aliases the proxy sent), and the behaviour the store
holds (read from the SQLite file). No test reads today's date.
"""

from __future__ import annotations

import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.visitor.behaviour import Behaviour, decode

from .conftest import PROJECT_UID, Launcher, Service, Stack, browse

pytestmark = pytest.mark.e2e_sdk

DEMO_CONFIG = "examples/demo.toml"
T0 = "2026-11-22T10:00:00Z"
HOUR_LATER = "2026-11-22T11:00:00Z"
WELCOME = "cs_personalize_8_0"
NUDGE = "cs_personalize_9_0"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def start_proxy(launcher: Launcher, origin: Service, state_db: Path, now: str) -> Service:
    # Every active variant reaches the origin (the CDA's default of 3 would leave experience 9 out here: the
    # visitor is also in the UK hero and the A/B tests, which come first in priority order).
    return launcher.proxy(origin, state_db, "--config", DEMO_CONFIG, "--now", now, "--cda-variant-limit", "0")


def applied(visit: dict[str, Any]) -> set[str]:
    return {alias for alias in (visit["applied"] or "").split(",") if alias}


def uid_of(visit: dict[str, Any]) -> str:
    for h in visit["document"]["headers"]:
        if h["name"].lower() == "set-cookie" and h["value"].startswith("cs-personalize-user-uid="):
            return str(h["value"].split("=", 1)[1].split(";", 1)[0])
    raise AssertionError(f"no uid cookie in {visit['document']['headers']}")


def stored(state_db: Path, uid: str) -> Behaviour | None:
    with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True) as db:
        row = db.execute("SELECT state FROM visitor_behaviour WHERE project_uid=? AND user_uid=?",
                         (PROJECT_UID, uid)).fetchone()  # fmt: skip
    return decode(row[0]) if row else None


def get(url: str, uid: str, user_agent: str = CHROME) -> int:
    request = urllib.request.Request(url, headers={"Cookie": f"cs-personalize-user-uid={uid}", "User-Agent": user_agent,
                                                   "Accept": "text/html"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_a_returning_visit_and_three_checkout_views_show_their_variants_and_bots_change_nothing(
    launcher: Launcher, node_bin: str, chromium_bin: str, tmp_path: Path
) -> None:
    origin = launcher.node_origin(node_bin)
    state_db = tmp_path / "behaviour-state.db"
    proxy = start_proxy(launcher, origin, state_db, T0)
    stack = Stack(origin=origin, proxy=proxy, state_db=state_db)
    first = browse(node_bin, chromium_bin, stack, [{"name": "first", "url": f"{proxy.url}/", "fresh": True}])["first"]
    uid = uid_of(first)
    assert WELCOME not in applied(first) and NUDGE not in applied(first)  # a first visit
    cookie = [{"name": "cs-personalize-user-uid", "value": uid}]
    again = browse(node_bin, chromium_bin, stack, [{"name": "again", "url": f"{proxy.url}/", "fresh": True,
                                                   "cookies": cookie}])  # fmt: skip
    assert WELCOME not in applied(again["again"])  # minutes later: the same visit
    # What is not a page view changes nothing: a bot's page, a static asset.
    assert get(f"{proxy.url}/", uid, BOT) == 200
    assert get(f"{proxy.url}/static/site.css", uid) in (200, 404)
    proxy.stop()  # a clean stop writes everything counted
    before = stored(state_db, uid)
    assert before is not None and (before.visits, before.pageviews) == (1, 2)

    # An hour later (the session timeout is 30 minutes): a returning visit; then three checkout views.
    proxy = start_proxy(launcher, origin, state_db, HOUR_LATER)
    stack = Stack(origin=origin, proxy=proxy, state_db=state_db)
    visits = [
        {"name": "back", "url": f"{proxy.url}/", "fresh": True, "cookies": cookie},
        {"name": "checkout-1", "url": f"{proxy.url}/checkout"},
        {"name": "after-one", "url": f"{proxy.url}/"},
        {"name": "checkout-2", "url": f"{proxy.url}/checkout"},
        {"name": "checkout-3", "url": f"{proxy.url}/checkout"},
        {"name": "after-three", "url": f"{proxy.url}/"},
    ]
    seen = browse(node_bin, chromium_bin, stack, visits)
    assert WELCOME in applied(seen["back"])  # the second visit already is a returning one
    assert NUDGE not in applied(seen["after-one"])  # one checkout view is not high intent
    assert {WELCOME, NUDGE} <= applied(seen["after-three"])
    proxy.stop()
    after = stored(state_db, uid)
    assert after is not None and (after.visits, after.pageviews) == (2, 8)
    assert len(after.path_views["checkout_views_7d"]) == 3


def test_a_kill_9_loses_at_most_the_page_views_not_yet_written(
    launcher: Launcher, node_bin: str, tmp_path: Path
) -> None:
    """README: page views are written behind (a visitor's first at the next second, counts within 30 s); a kill -9
    loses at most those not written yet."""
    origin = launcher.node_origin(node_bin)
    state_db = tmp_path / "kill-state.db"
    proxy = start_proxy(launcher, origin, state_db, T0)
    for _ in range(5):
        assert get(f"{proxy.url}/", "kim") == 200
    deadline = time.monotonic() + 60  # a bound on a hang: page views that only count are written within 30 s
    while (kept := stored(state_db, "kim")) is None or kept.pageviews < 5:
        assert time.monotonic() < deadline, f"5 page views not written behind: {kept}"
        time.sleep(0.1)
    for _ in range(3):  # counted in memory, and then the process dies before or after writing them
        assert get(f"{proxy.url}/", "kim") == 200
    assert proxy.process is not None
    proxy.process.send_signal(signal.SIGKILL)
    proxy.process.wait(timeout=10)
    survived = stored(state_db, "kim")
    assert survived is not None and 5 <= survived.pageviews <= 8  # what was written is never lost
    proxy = start_proxy(launcher, origin, state_db, T0)
    assert get(f"{proxy.url}/", "kim") == 200  # counting goes on from what was kept
    proxy.stop()
    final = stored(state_db, "kim")
    assert final is not None and final.pageviews == survived.pageviews + 1
