"""The official SDK browser bundle in a real headless Chromium, on a page served through `edgeproxy serve`.

tests/sdk/browser.mjs opens http://127.0.0.1:Q/sdk-test.html (a static origin behind the proxy: the page, the SDK
bundle `personalize-edge-sdk.min.js` and the Edge API share the proxy's origin) and runs the steps of
tests/sdk/page/sdk-test.js one by one. Every request is sent with `X-Forwarded-For: 81.2.69.160` (a CDN in front of
the proxy, which trusts loopback), so the visitor is in London.

In a browser the SDK initializes from the `cs-personalize-manifest` cookie when there is one (no fetch), so both
paths are judged: the first visit, where the proxy's page cookies feed the SDK, and a fresh context whose manifest
cookie was cleared, where the SDK fetches `/manifest`. A third scenario loads the page straight from the origin so
that every Edge API call is cross-origin (CORS, SPEC §5). Screenshots go to tests/e2e_sdk/artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .conftest import (
    ARTIFACTS,
    IP_LONDON,
    MANIFEST_COOKIE,
    PROJECT_UID,
    ROOT,
    SCRIPT_TIMEOUT,
    SDK_DIR,
    UID_COOKIE,
    UUID4_PATTERN,
    VIP_ATTRIBUTES,
    Launcher,
    Stack,
    active,
    assert_sdk_matches_decide,
    cookie_pairs,
    decide_one,
)

pytestmark = pytest.mark.e2e_sdk

BrowserRun = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def run_browser(node_bin: str, sdk_installed: Path, chromium_bin: str, launcher: Launcher) -> BrowserRun:
    def run(scenario: str, page_url: str, stack: Stack, **env: Any) -> dict[str, Any]:
        screenshot = ARTIFACTS / f"sdk-browser-{scenario}.png"
        if screenshot.exists():
            screenshot.unlink()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
        full_env.update(
            {
                "PAGE_URL": page_url,
                "PROJECT_UID": PROJECT_UID,
                "CHROMIUM": chromium_bin,
                "SCENARIO": scenario,
                "PROFILE_ROOT": str(launcher.tmp),
                "SCREENSHOT": str(screenshot),
                "X_FORWARDED_FOR": IP_LONDON,
                "ATTRIBUTES": json.dumps(VIP_ATTRIBUTES),
                "EVENT_KEY": "purchase",
            }
        )
        full_env.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()})
        argv = [node_bin, str((SDK_DIR / "browser.mjs").relative_to(ROOT))]
        try:
            result = subprocess.run(
                argv, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"browser scenario {scenario} did not finish within {SCRIPT_TIMEOUT:.0f} s\n"
                f"stderr: {exc.stderr!r}\n{stack.logs()}",
                pytrace=False,
            )
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        output = json.loads(lines[-1]) if lines else {"ok": False, "error": "no JSON output"}
        if result.returncode != 0 or not output.get("ok"):
            pytest.fail(
                f"browser scenario {scenario} failed (exit {result.returncode}): {output.get('error')}\n"
                f"{output.get('stack') or ''}\nstdout:\n{result.stdout[-2000:]}\n"
                f"stderr:\n{result.stderr[-3000:]}\n{stack.logs()}",
                pytrace=False,
            )
        return output

    return run


@pytest.fixture(scope="module")
def first_visit(run_browser: BrowserRun, page_stack: Stack) -> dict[str, Any]:
    return run_browser(
        "first-visit", page_stack.url + "/sdk-test.html", page_stack, NEW_USER_ID="browser-first-visit-logged-in"
    )


@pytest.fixture(scope="module")
def fresh_context(run_browser: BrowserRun, page_stack: Stack) -> dict[str, Any]:
    return run_browser("fresh-context", page_stack.url + "/sdk-test.html", page_stack)


@pytest.fixture(scope="module")
def cross_origin(run_browser: BrowserRun, page_stack: Stack) -> dict[str, Any]:
    return run_browser(
        "cross-origin",
        page_stack.origin.url + "/sdk-test.html",
        page_stack,
        EDGE_API_URL=page_stack.edge_api_url,
        NEW_USER_ID="browser-cross-origin-logged-in",
    )


# -- helpers -----------------------------------------------------------------------------------------------


def step(out: dict[str, Any], label: str) -> dict[str, Any]:
    found = [s for s in out["steps"] if s["label"] == label]
    assert len(found) == 1, f"step {label}: {out['steps']}"
    entry: dict[str, Any] = found[0]
    assert "error" not in entry, f"step {label} failed in the page: {entry['error']}"
    return entry


def navigation(out: dict[str, Any], label: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [n for n in out["navigations"] if n["label"] == label]
    assert len(found) == 1, out["navigations"]
    return found[0]


def api_calls(out: dict[str, Any], label: str, method: str, endpoint: str) -> list[dict[str, Any]]:
    return [
        n
        for n in out["network"]
        if n["label"] == label
        and n["method"] == method
        and urlsplit(n["url"]).path.endswith("/_personalize" + endpoint)
    ]


def response_headers(entry: dict[str, Any]) -> dict[str, str]:
    return {h["name"].lower(): h["value"] for h in entry.get("responseHeaders") or []}


def page_cookies(nav: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(uid, manifest) from the proxy's Set-Cookie headers on a page load."""
    cookies = cookie_pairs(nav["setCookies"])
    assert set(cookies) >= {UID_COOKIE, MANIFEST_COOKIE}, nav["setCookies"]
    return cookies[UID_COOKIE][0], json.loads(cookies[MANIFEST_COOKIE][0])


def description(
    out: dict[str, Any],
    *,
    url: str,
    uid: str,
    now: str,
    referer: str | None = None,
    stored: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The browser visitor as SPEC §9 input: Chromium's User-Agent, the page URL, London (X-Forwarded-For)."""
    headers = {"User-Agent": out["userAgent"]}
    if referer:
        headers["Referer"] = referer
    d: dict[str, Any] = {"method": "GET", "url": url, "headers": headers, "ip": IP_LONDON, "userUid": uid, "now": now}
    if stored:
        d["storedAttributes"] = stored
    return d


def fetched_manifest(out: dict[str, Any], label: str, uid: str | None) -> dict[str, Any]:
    """The one GET /manifest of a step: status 200, the SDK's headers, the uid answered. Returns its request headers."""
    calls = api_calls(out, label, "GET", "/manifest")
    assert len(calls) == 1, f"step {label} should fetch the manifest exactly once: {out['network']}"
    call = calls[0]
    assert call["status"] == 200 and not call["failure"], call
    sent = call["requestHeaders"]
    assert sent.get("x-project-uid") == PROJECT_UID, sent
    assert sent.get("x-page-url") == out["pageUrl"], sent
    if uid is None:
        assert "x-cs-personalize-user-uid" not in sent, sent
    else:
        assert sent.get("x-cs-personalize-user-uid") == uid, sent
    answered = response_headers(call).get("x-cs-personalize-user-uid")
    assert answered and (uid is None or answered == uid), response_headers(call)
    return dict(sent)


def assert_clean(out: dict[str, Any]) -> None:
    """No console errors, no uncaught page errors, every step fine, every Edge API call answered 2xx."""
    errors = [c for c in out["console"] if c["type"] == "error"]
    assert errors == [], f"console errors: {errors}"
    assert out["pageErrors"] == [], out["pageErrors"]
    assert [s for s in out["steps"] if "error" in s] == []
    for entry in out["network"]:
        if entry["failure"]:
            # The SDK never reads the body of events/attributes answers; Chromium aborts such unread bodies when
            # the page navigates (the reload), after the 2xx status and headers arrived. Anything else is a failure.
            assert entry["failure"] == "net::ERR_ABORTED" and entry["status"] is not None, entry
        if "/_personalize/" in entry["url"]:
            assert entry["status"] is not None and 200 <= entry["status"] < 300, entry
    since_last_load = out["steps"][out["navigations"][-1]["stepsBefore"] :]
    assert [r["step"] for r in out["windowResults"]] == [s["step"] for s in since_last_load], "window.__results"
    assert Path(out["screenshot"]).is_file() and Path(out["screenshot"]).stat().st_size > 1000


def assert_events_stored(stack: Stack, uid: str, snapshot: dict[str, Any]) -> None:
    rows = stack.events(uid)
    impressions = sorted((r["experience_short_uid"], r["variant_short_uid"]) for r in rows if r["type"] == "IMPRESSION")
    expected = sorted((e, v) for e, v in active(snapshot).items() if v is not None)
    assert impressions == expected, rows
    assert [r["event_key"] for r in rows if r["type"] == "EVENT"] == ["purchase"], rows
    assert all(r["project_uid"] == PROJECT_UID and r["source"] == "sdk" for r in rows), rows


# -- first visit: the page through the proxy, the SDK initialized from the proxy's cookies ------------------


def test_first_visit_page_bundle_and_flow_run_without_errors(first_visit: dict[str, Any], page_stack: Stack) -> None:
    out = first_visit
    load = navigation(out, "load")
    assert load["status"] == 200 and load["url"] == page_stack.url + "/sdk-test.html"
    bundle = [n for n in out["network"] if n["url"] == page_stack.url + "/personalize-edge-sdk.min.js"]
    assert bundle and bundle[0]["status"] == 200, "the SDK bundle is loaded from the proxy's origin"
    assert_clean(out)


def test_first_visit_init_uses_the_proxy_cookies_without_fetching(first_visit: dict[str, Any]) -> None:
    out = first_visit
    load = navigation(out, "load")
    uid, manifest = page_cookies(load)
    assert re.match(UUID4_PATTERN, uid), uid
    init = step(out, "init-from-cookie")
    reported = init["result"]
    assert api_calls(out, "init-from-cookie", "GET", "/manifest") == [], "the manifest cookie is used, not fetched"
    assert reported["cookiesBefore"][UID_COOKIE] == uid
    assert json.loads(reported["cookiesBefore"][MANIFEST_COOKIE]) == manifest
    assert reported["userId"] == uid
    assert reported["experiences"] == manifest["experiences"]
    assert reported["variants"] == manifest["activeVariants"]
    decided = decide_one(description(out, url=out["pageUrl"], uid=uid, now=load["at"]))
    assert {"experiences": decided["experiences"], "activeVariants": decided["activeVariants"]} == manifest
    assert_sdk_matches_decide(reported, decided, "browser init from the proxy's manifest cookie")
    assert active(reported)["0"] == "1", "London (X-Forwarded-For): UK shoppers hero"


def test_first_visit_set_then_refetched_manifest_has_the_new_audience(first_visit: dict[str, Any]) -> None:
    out = first_visit
    uid, _ = page_cookies(navigation(out, "load"))
    patches = api_calls(out, "set", "PATCH", "/user-attributes")
    assert len(patches) == 1 and patches[0]["status"] == 200, out["network"]
    assert patches[0]["requestHeaders"].get("x-cs-personalize-user-uid") == uid
    cleared = step(out, "clear-manifest-cookie")["result"]["cookies"]
    assert MANIFEST_COOKIE not in cleared and cleared.get(UID_COOKIE) == uid, cleared

    init = step(out, "init-after-set")
    sent = fetched_manifest(out, "init-after-set", uid)
    reported = init["result"]
    assert reported["userId"] == uid
    assert active(reported)["0"] == "0", f"VIP hero after set({VIP_ATTRIBUTES}): {active(reported)}"
    decided = decide_one(
        description(
            out, url=sent["x-page-url"], uid=uid, now=init["at"], referer=sent.get("referer"), stored=VIP_ATTRIBUTES
        )
    )
    assert_sdk_matches_decide(reported, decided, "browser init (fetched) after set()")


def test_first_visit_impressions_and_event_reach_the_state_store(
    first_visit: dict[str, Any], page_stack: Stack
) -> None:
    out = first_visit
    uid, _ = page_cookies(navigation(out, "load"))
    posts = api_calls(out, "impressions", "POST", "/events") + api_calls(out, "event", "POST", "/events")
    assert len(posts) == 3 and all(p["status"] == 200 for p in posts), out["network"]
    assert all(p["requestHeaders"].get("x-cs-personalize-user-uid") == uid for p in posts)
    assert_events_stored(page_stack, uid, step(out, "init-from-cookie")["result"])


def test_first_visit_set_user_id_merges_and_the_proxy_cookies_follow(first_visit: dict[str, Any]) -> None:
    out = first_visit
    new_uid = "browser-first-visit-logged-in"
    changed = step(out, "set-user-id")["result"]
    assert changed["after"] == new_uid and changed["cookies"].get(UID_COOKIE) == new_uid, changed
    merges = api_calls(out, "set-user-id", "POST", "/user-attributes/actions/merge")
    assert len(merges) == 1 and merges[0]["status"] == 200, out["network"]

    init = step(out, "init-after-merge")
    sent = fetched_manifest(out, "init-after-merge", new_uid)
    reported = init["result"]
    assert reported["userId"] == new_uid
    assert active(reported)["0"] == "0", f"the merged attributes make {new_uid} VIP: {active(reported)}"
    decided = decide_one(
        description(
            out, url=sent["x-page-url"], uid=new_uid, now=init["at"], referer=sent.get("referer"), stored=VIP_ATTRIBUTES
        )
    )
    assert_sdk_matches_decide(reported, decided, "browser init (fetched) after setUserId(merge)")

    # The next page load: the proxy reads the uid cookie the SDK wrote and decides with the merged attributes.
    reload = navigation(out, "reload")
    assert reload["status"] == 200
    uid, manifest = page_cookies(reload)
    assert uid == new_uid
    page_decided = decide_one(
        description(out, url=out["pageUrl"], uid=new_uid, now=reload["at"], stored=VIP_ATTRIBUTES)
    )
    assert manifest == {"experiences": page_decided["experiences"], "activeVariants": page_decided["activeVariants"]}
    after_reload = step(out, "init-after-reload")["result"]
    assert api_calls(out, "init-after-reload", "GET", "/manifest") == []
    assert after_reload["userId"] == new_uid
    assert after_reload["experiences"] == manifest["experiences"]
    assert_sdk_matches_decide(after_reload, page_decided, "browser init from the proxy's cookie after the merge")


# -- fresh context: the manifest cookie cleared, the SDK fetches -----------------------------------------------


def test_fresh_context_fetched_manifest_equals_the_proxy_cookie(fresh_context: dict[str, Any]) -> None:
    out = fresh_context
    load = navigation(out, "load")
    uid, manifest = page_cookies(load)
    names = {c["name"] for c in out["cookiesAfterClearing"]}
    assert UID_COOKIE in names and MANIFEST_COOKIE not in names, names

    init = step(out, "init-fetch")
    sent = fetched_manifest(out, "init-fetch", uid)
    reported = init["result"]
    assert MANIFEST_COOKIE not in reported["cookiesBefore"]
    assert reported["userId"] == uid
    assert reported["cookiesAfter"].get(UID_COOKIE) == uid, "the SDK keeps the proxy's uid in its cookie"
    assert reported["experiences"] == manifest["experiences"], "same visitor, same manifest as the page cookie"
    assert reported["variants"] == manifest["activeVariants"]
    decided = decide_one(description(out, url=sent["x-page-url"], uid=uid, now=init["at"], referer=sent.get("referer")))
    assert_sdk_matches_decide(reported, decided, "browser init (fetched) in a fresh context")
    assert_clean(out)


# -- cross-origin: the page straight from the origin, the Edge API on the proxy (CORS) -------------------------


def test_cross_origin_flow_works_with_cors(cross_origin: dict[str, Any], page_stack: Stack) -> None:
    out = cross_origin
    load = navigation(out, "load")
    assert load["status"] == 200 and load["setCookies"] == [], "the page comes from the origin, not the proxy"
    assert_clean(out)

    init = step(out, "init-fetch")
    sent = fetched_manifest(out, "init-fetch", None)
    reported = init["result"]
    uid = reported["userId"]
    assert re.match(UUID4_PATTERN, uid or ""), f"the uid comes from the exposed response header: {uid!r}"
    assert reported["cookiesAfter"].get(UID_COOKIE) == uid
    decided = decide_one(description(out, url=sent["x-page-url"], uid=uid, now=init["at"], referer=sent.get("referer")))
    assert_sdk_matches_decide(reported, decided, "cross-origin init")

    init = step(out, "init-after-set")
    sent = fetched_manifest(out, "init-after-set", uid)
    assert active(init["result"])["0"] == "0"
    decided = decide_one(
        description(
            out, url=sent["x-page-url"], uid=uid, now=init["at"], referer=sent.get("referer"), stored=VIP_ATTRIBUTES
        )
    )
    assert_sdk_matches_decide(init["result"], decided, "cross-origin init after set()")
    assert_events_stored(page_stack, uid, reported)

    new_uid = "browser-cross-origin-logged-in"
    init = step(out, "init-after-merge")
    sent = fetched_manifest(out, "init-after-merge", new_uid)
    assert init["result"]["userId"] == new_uid and active(init["result"])["0"] == "0"
    decided = decide_one(
        description(
            out, url=sent["x-page-url"], uid=new_uid, now=init["at"], referer=sent.get("referer"), stored=VIP_ATTRIBUTES
        )
    )
    assert_sdk_matches_decide(init["result"], decided, "cross-origin init after setUserId(merge)")


# -- a user id that is not RFC 6265 cookie-octets is replaced, never echoed ------------------------------------

ROUND_TRIP_UID = "Jane Doe"  # setUserId() writes it raw into the cookie; a space is no cookie-octet (contract §11)


@pytest.fixture(scope="module")
def uid_round_trip(run_browser: BrowserRun, page_stack: Stack) -> dict[str, Any]:
    return run_browser("uid-round-trip", page_stack.url + "/sdk-test.html", page_stack, NEW_USER_ID=ROUND_TRIP_UID)


def test_a_user_id_that_is_not_cookie_octets_is_replaced_on_the_next_page_and_never_echoed(
    uid_round_trip: dict[str, Any],
) -> None:
    out = uid_round_trip
    changed = step(out, "set-user-id")["result"]
    assert changed["cookies"].get(UID_COOKIE) == ROUND_TRIP_UID, changed
    reload = navigation(out, "reload")
    uid, _ = page_cookies(reload)
    assert uid and uid != ROUND_TRIP_UID and " " not in uid, reload["setCookies"]
    assert not any("Jane" in line for line in reload["setCookies"]), reload["setCookies"]
    after = step(out, "init-after-reload")["result"]
    assert after["userId"] == uid, f"the proxy set uid {uid!r}; the SDK now reports {after['userId']!r}"
