"""Preview links (SPEC §10, issue 17) end to end: links minted with `edgeproxy preview-link`, opened in a real
headless Chromium on the Node example origin THROUGH `edgeproxy serve`, with the official SDK browser bundle
loaded into each page (tests/sdk/preview.mjs).

What is judged, per link: the variant the origin rendered (its `cs-variant-aliases` meta and `data-variant`
attributes, from the aliases the proxy sent), the manifest the SDK reports both from the proxy's cookie and
fetched from the proxy's /manifest, the response headers (no-store, noindex), and — around a burst of preview
traffic that also sends SDK impressions and a conversion — that the shared cache and the event store are exactly
as they were. The proxy and `preview-link` run on the system clock (a shifted `now` would make every page the
origin dates stale on arrival); the time window is opened by `--now`, and the one expired link is minted on a clock
set years back, so no test reads today's date.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    IP_LONDON,
    ROOT,
    RULES,
    Launcher,
    Stack,
    browse,
    decide_one,
)

pytestmark = pytest.mark.e2e_sdk

SECRET = "e2e-preview-secret-of-this-test"
BLACK_FRIDAY = "2026-11-28T12:00:00Z"  # inside the example rules' "Black Friday week 2026" window
CONTENT = json.loads((ROOT / "examples" / "origin" / "content.json").read_text())


@pytest.fixture(scope="module")
def preview_stack(launcher: Launcher, node_bin: str) -> Stack:
    """The Node example origin (pages a shared cache may keep) behind a proxy with previews on."""
    origin = launcher.node_origin(node_bin, "--page-cache-control", "public, s-maxage=600")
    state_db = launcher.tmp / "preview-state.db"
    settings = {"EDGEPROXY_PREVIEW_SECRET": SECRET}
    return Stack(origin=origin, proxy=launcher.proxy(origin, state_db, settings=settings), state_db=state_db)


def mint(stack: Stack, path: str, *options: str, now: str = "") -> str:
    """`edgeproxy preview-link` for a page of the proxy, minted on the system clock or one starting at `now`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env.update(EDGEPROXY_PREVIEW_SECRET=SECRET, EDGEPROXY_NOW=now)
    argv = [sys.executable, "-m", "edgeproxy.cli", "preview-link", "--url", stack.url + path, *options]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip()
    assert link.startswith(stack.url + path.split("?")[0]) and "cs_preview=" in link, link
    return link


def header(visit: dict[str, Any], name: str) -> list[str]:
    return [h["value"] for h in visit["document"]["headers"] if h["name"].lower() == name.lower()]


def applied(visit: dict[str, Any]) -> set[str]:
    return {alias for alias in (visit["applied"] or "").split(",") if alias}


def sdk(visit: dict[str, Any], source: str = "fetched") -> dict[str, str | None]:
    return dict(visit["sdk"][source])


def alias(experience: str, variant: str) -> str:
    return f"cs_personalize_{experience}_{variant}"


def page_for(name: str) -> str:
    """The page of the example site where this variant alias shows best: the one with fields for it and for the
    fewest other experiences (the home page has content for most, and a field takes the first alias that sets it);
    the home page when no page has content for it."""

    def experiences(entry: dict[str, Any]) -> int:
        return len({alias.rsplit("_", 1)[0] for alias in entry["variants"]})

    pages = [entry for entry in CONTENT["entries"] if entry["variants"].get(name)]
    return str(min(pages, key=experiences)["url"]) if pages else "/"


def has_content(name: str) -> bool:
    """Whether a page has fields for this alias (a control variant changes nothing, so it is never "applied")."""
    return any(entry["variants"].get(name) for entry in CONTENT["entries"])


@cache
def live_variants() -> list[tuple[str, str]]:
    """(experience, variant) short uids of every live example experience, from the rules as the proxy loads them."""
    from edgeproxy.files.rules import load_project

    project = load_project(ROOT / RULES)
    return [(e.short_uid, v.short_uid) for e in project.experiences for v in e.variants]


def assert_preview_headers(visit: dict[str, Any]) -> None:
    assert header(visit, "Cache-Control") == ["no-store"], (visit["name"], visit["document"]["headers"])
    assert header(visit, "X-Robots-Tag") == ["noindex"], visit["name"]
    assert header(visit, "X-Cache") in ([], ["BYPASS"]), visit["name"]  # never a cache answer
    assert header(visit, "X-Edgeproxy-Preview") == [], visit["name"]


def test_a_link_forcing_each_variant_of_each_experience_renders_it_and_the_sdk_agrees(
    preview_stack: Stack, node_bin: str, chromium_bin: str, sdk_installed: Path
) -> None:
    pairs = live_variants()
    assert len(pairs) >= 10  # every variant of the example's live experiences
    visits = [
        {
            "name": f"force-{e}-{v}",
            "url": mint(preview_stack, page_for(alias(e, v)), "--set", f"{e}={v}"),
            "fresh": True,
        }
        for e, v in pairs
    ]
    seen = browse(node_bin, chromium_bin, preview_stack, visits)
    for e, v in pairs:
        visit = seen[f"force-{e}-{v}"]
        assert_preview_headers(visit)
        assert alias(e, v) in (visit["variantUidHeader"] or "").split(","), visit  # what the origin was sent
        if has_content(alias(e, v)):
            assert alias(e, v) in applied(visit), visit  # what it rendered
            assert alias(e, v) in visit["dataVariants"], visit
        for source in ("fromCookie", "fetched"):
            assert sdk(visit, source).get(e) == v, (visit["name"], source, visit["sdk"])
        cookie = [c for c in visit["cookies"] if c["name"] == "cs-personalize-preview"]
        assert len(cookie) == 1 and cookie[0]["httpOnly"], visit["cookies"]


def test_a_draft_experience_is_visible_only_with_draft(
    preview_stack: Stack, node_bin: str, chromium_bin: str, sdk_installed: Path
) -> None:
    # Experience 5 ("Winter collection") has only a DRAFT version; 4 ("Loyalty upsell") is PAUSED with a DRAFT edit.
    assert ("5", "0") not in live_variants()
    visits = [
        {"name": "draft-off", "url": mint(preview_stack, "/", "--set", "5=0"), "fresh": True},
        {"name": "draft-on", "url": mint(preview_stack, "/", "--set", "5=0", "--draft"), "fresh": True},
        {"name": "draft-edit", "url": mint(preview_stack, "/", "--set", "4=1", "--draft"), "fresh": True},
    ]
    seen = browse(node_bin, chromium_bin, preview_stack, visits)
    assert alias("5", "0") not in applied(seen["draft-off"]) and "5" not in sdk(seen["draft-off"])
    assert alias("5", "0") in applied(seen["draft-on"]), seen["draft-on"]
    assert sdk(seen["draft-on"]).get("5") == "0" and sdk(seen["draft-on"], "fromCookie").get("5") == "0"
    assert alias("4", "1") in applied(seen["draft-edit"]) and sdk(seen["draft-edit"]).get("4") == "1"
    for visit in seen.values():
        assert_preview_headers(visit)


def test_a_time_window_opens_with_now(
    preview_stack: Stack, node_bin: str, chromium_bin: str, sdk_installed: Path
) -> None:
    visits = [
        {"name": "black-friday", "url": mint(preview_stack, "/", "--now", BLACK_FRIDAY), "fresh": True},
        {"name": "today", "url": preview_stack.url + "/", "fresh": True},
    ]
    seen = browse(node_bin, chromium_bin, preview_stack, visits)
    # The independent reference: `edgeproxy decide` on the same visitor at each time.
    for name, now in (("black-friday", BLACK_FRIDAY), ("today", None)):  # None: decide's clock, as the proxy's
        visit = seen[name]
        uid = next(c["value"] for c in visit["cookies"] if c["name"] == "cs-personalize-user-uid")
        decided = decide_one({"url": preview_stack.url + "/", "userUid": uid, "now": now, "ip": IP_LONDON,
                              "headers": {"User-Agent": visit["sdk"]["userAgent"]}})  # fmt: skip
        assert sdk(visit) == {e["shortUid"]: e["activeVariantShortUid"] for e in decided["experiences"]}, name
        assert applied(visit) <= set(decided["aliases"]), name
    banner = sdk(seen["black-friday"]).get("1")
    assert banner is not None and alias("1", banner) in applied(seen["black-friday"])
    assert sdk(seen["today"]).get("1") is None


def test_the_preview_follows_navigation_until_off_and_bad_links_give_the_normal_page(
    preview_stack: Stack, node_bin: str, chromium_bin: str, sdk_installed: Path
) -> None:
    expired = mint(preview_stack, "/", "--set", "0=1", "--ttl", "1h", now="2020-01-01T00:00:00Z")
    good = mint(preview_stack, "/", "--set", "0=1")
    signature = good.rpartition("cs_preview=")[2].partition(".")[2]
    tampered = good.replace(signature, signature[:-2] + ("AA" if not signature.endswith("AA") else "BB"))
    visits = [
        {"name": "start", "url": good, "fresh": True},
        {"name": "next-page", "url": preview_stack.url + "/"},
        {"name": "off", "url": preview_stack.url + "/?cs_preview=off"},
        {"name": "after-off", "url": preview_stack.url + "/"},
        {"name": "tampered", "url": tampered, "fresh": True},
        {"name": "tampered-plain", "url": preview_stack.url + "/"},
        {"name": "expired", "url": expired, "fresh": True},
        {"name": "expired-plain", "url": preview_stack.url + "/"},
    ]
    seen = browse(node_bin, chromium_bin, preview_stack, visits)
    for name in ("start", "next-page"):
        assert alias("0", "1") in applied(seen[name]) and sdk(seen[name]).get("0") == "1", name
        assert_preview_headers(seen[name])
    assert "cs-personalize-preview" not in {c["name"] for c in seen["off"]["cookies"]}
    for name in ("off", "after-off"):
        assert header(seen[name], "X-Robots-Tag") == [], name
    for bad in ("tampered", "expired"):
        visit, plain = seen[bad], seen[f"{bad}-plain"]
        assert header(visit, "X-Edgeproxy-Preview") == ["invalid"], (bad, visit["document"]["headers"])
        assert header(visit, "X-Robots-Tag") == [], bad
        assert "cs-personalize-preview" not in {c["name"] for c in visit["cookies"]}, bad
        # The normal page: the same visitor's next plain request decides the same, with no forcing.
        assert applied(visit) == applied(plain) and sdk(visit) == sdk(plain), (bad, visit, plain)


def test_the_origin_never_sees_the_token_and_is_told_it_is_a_preview(preview_stack: Stack) -> None:
    link = mint(preview_stack, "/echo?x=1", "--set", "0=1")
    with urllib.request.urlopen(urllib.request.Request(link), timeout=10) as response:
        echoed = json.loads(response.read())
        cookie = [v for v in response.headers.get_all("Set-Cookie") or [] if v.startswith("cs-personalize-preview=")]
    assert echoed["url"] == "/echo?x=1", echoed["url"]
    assert echoed["headers"]["x-edgeproxy-preview"] == "1"
    assert "cs_personalize_0_1" in echoed["headers"]["x-cs-variant-uid"].split(",")
    assert len(cookie) == 1 and "; HttpOnly" in cookie[0], cookie
    max_age = int(cookie[0].split("Max-Age=")[1].split(";")[0])
    assert 0 < max_age <= 3600  # until the token expires (1 h from mint), never longer
    token = cookie[0].split(";")[0]
    forged = urllib.request.Request(
        preview_stack.url + "/echo", headers={"Cookie": f"{token}; other=1", "X-Edgeproxy-Preview": "0"}
    )
    with urllib.request.urlopen(forged, timeout=10) as response:
        echoed = json.loads(response.read())
    assert echoed["headers"]["x-edgeproxy-preview"] == "1"  # the cookie keeps the preview; the client's header is not
    assert echoed["headers"]["cookie"] == "other=1"  # passed on, nor is the token


def _events(stack: Stack) -> int:
    with sqlite3.connect(f"file:{stack.state_db}?mode=ro", uri=True, timeout=10) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def _origin_hits(stack: Stack, path: str) -> int:
    with urllib.request.urlopen(stack.origin.url + "/_origin/hits", timeout=10) as response:
        return int(json.loads(response.read()).get(path, 0))


def _cache_status(stack: Stack) -> dict[str, Any]:
    with urllib.request.urlopen(stack.url + "/_edgeproxy/status", timeout=10) as response:
        return dict(json.loads(response.read())["cache"])


def test_preview_traffic_leaves_the_cache_and_the_event_store_untouched(
    preview_stack: Stack, node_bin: str, chromium_bin: str, sdk_installed: Path
) -> None:
    # A normal visitor fills the cache and records events (impressions, a conversion).
    warm = browse(node_bin, chromium_bin, preview_stack, [
        {"name": "warm", "url": preview_stack.url + "/", "fresh": True, "event": "purchase"},
        {"name": "warm-again", "url": preview_stack.url + "/"},
    ])  # fmt: skip
    assert header(warm["warm-again"], "X-Cache") == ["HIT"], warm["warm-again"]["document"]["headers"]
    events, hits, cache = _events(preview_stack), _origin_hits(preview_stack, "/"), _cache_status(preview_stack)
    assert events > 0
    visits = [
        {"name": f"p{n}", "url": mint(preview_stack, "/", "--set", f"0={v}"), "fresh": True, "event": "purchase"}
        for n, v in enumerate(("0", "1", "2"))
    ]
    visits.append({"name": "p-next", "url": preview_stack.url + "/", "event": "purchase"})  # by the cookie
    seen = browse(node_bin, chromium_bin, preview_stack, visits)
    for visit in seen.values():
        assert_preview_headers(visit)
    assert _events(preview_stack) == events  # no impression (proxy or SDK) and no conversion stored
    assert _origin_hits(preview_stack, "/") == hits + len(visits)  # each preview page went to the origin...
    after = _cache_status(preview_stack)
    # ...and nothing was stored (the page's static assets, never personalized, are cached as for anyone)
    assert after["store"]["entries"] == cache["store"]["entries"]
    assert after["store"]["variantKeysPerPath"] == cache["store"]["variantKeysPerPath"]
    returning = [{"name": c["name"], "value": c["value"]} for c in warm["warm-again"]["cookies"]]
    again = browse(node_bin, chromium_bin, preview_stack, [
        {"name": "normal", "url": preview_stack.url + "/", "fresh": True, "cookies": returning},
    ])  # fmt: skip
    assert header(again["normal"], "X-Cache") == ["HIT"]  # the warm visitor still gets the cached page
    assert _origin_hits(preview_stack, "/") == hits + len(visits)
