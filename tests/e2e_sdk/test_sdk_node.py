"""The official SDK in Node (as in an edge function) against `edgeproxy serve`'s emulated Edge API (SPEC §5, §6).

Each test runs a script of tests/sdk with the real `@contentstack/personalize-edge-sdk` 1.0.27 and compares what
the SDK instance reports (getUserId, getExperiences, getVariants, getVariantAliases, getVariantParam) with
`edgeproxy decide` on the SPEC §9 description of the same visitor. Segmented expectations asserted on top are
independent of the date and of A/B bucketing, so the suite does not age.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import (
    IP_LONDON,
    MANIFEST_COOKIE,
    PROJECT_UID,
    UA_IPHONE,
    UID_COOKIE,
    UUID4_PATTERN,
    VIP_ATTRIBUTES,
    NodeRunner,
    Stack,
    active,
    assert_sdk_matches_decide,
    cookie_pairs,
    decide_one,
    edge_calls,
)

pytestmark = pytest.mark.e2e_sdk

GOOGLE = "https://www.google.com/"


@dataclass(frozen=True)
class InitCase:
    """One `Personalize.init(projectUid, options)` and the SPEC §9 description of the same visitor."""

    id: str
    user_id: str | None = None
    tags: tuple[str, ...] | None = None
    live: dict[str, Any] | None = None
    request_url: str | None = None
    request_headers: tuple[tuple[str, str], ...] = ()
    expect: tuple[tuple[str, str | None], ...] = ()  # experience -> variant, date- and bucket-independent
    expect_active: tuple[str, ...] = ()  # experiences that must have some variant (A/B without targeting)
    expect_listed: tuple[str, ...] | None = None  # the exact experiences of the manifest, in order

    def sdk_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.user_id is not None:
            options["userId"] = self.user_id
        if self.tags is not None:
            options["tags"] = list(self.tags)
        if self.live is not None:
            options["liveAttributes"] = self.live
        if self.request_url is not None:
            options["request"] = {"url": self.request_url, "headers": dict(self.request_headers)}
        return options

    def cookie_uid(self) -> str | None:
        cookie = dict(self.request_headers).get("Cookie", "")
        match = re.search(rf"(?:^|;\s*){UID_COOKIE}=([^;]*)", cookie)
        return match.group(1) if match else None

    def description(self, reported: dict[str, Any]) -> dict[str, Any]:
        """What the proxy was asked, as `edgeproxy decide` input: the page URL (X-Page-Url), User-Agent, Referer and
        Cookie of the request the SDK was given, the client IP (X-Forwarded-For), live attributes, tags, the uid."""
        manifest_call = edge_calls(reported["http"], "GET", "/manifest")[0]
        description: dict[str, Any] = {"method": "GET", "now": reported["startedAt"], "userUid": reported["userId"]}
        if self.request_url is not None:
            request = dict(self.request_headers)
            description["url"] = self.request_url
            description["headers"] = {k: v for k, v in request.items() if k in ("User-Agent", "Referer", "Cookie")}
            description["ip"] = request.get("X-Forwarded-For", "127.0.0.1")
        else:
            # No request: the manifest call carries only the User-Agent of the SDK's HTTP client (node-fetch).
            description["headers"] = {"User-Agent": manifest_call["requestHeaders"]["user-agent"]}
            description["ip"] = "127.0.0.1"
        if self.live is not None:
            description["liveAttributes"] = self.live
        if self.tags is not None:
            description["tags"] = list(self.tags)
        return description


def _request(url: str, cookie: str | None = None, **extra: str) -> dict[str, Any]:
    headers = {"User-Agent": UA_IPHONE, "X-Forwarded-For": IP_LONDON, "Referer": GOOGLE, **extra}
    if cookie is not None:
        headers["Cookie"] = cookie
    return {"request_url": url, "request_headers": tuple(headers.items())}


PRODUCT_URL = "https://shop.example/products/storm-shell-jacket?utm_campaign=bf"

INIT_CASES = [
    InitCase("no-user-uid", expect_active=("2", "7")),
    InitCase("user-uid", user_id="sdk-node-known-user", expect_active=("2", "7")),
    InitCase(
        "request",
        **_request(PRODUCT_URL, f"{UID_COOKIE}=sdk-node-request-user; cs-lytics-audiences=|vip_shoppers|"),
        # London (X-Forwarded-For) iPhone: UK hero wins over the mobile promo; Google referral: search recs.
        expect=(("0", "1"), ("6", "1")),
        expect_active=("2", "7"),
    ),
    InitCase(
        "request-lytics-cookie-and-live-tier",
        live={"tier": "silver"},
        **_request(PRODUCT_URL, f"{UID_COOKIE}=sdk-node-silver-vip; cs-lytics-audiences=|vip_shoppers|"),
        # silver + Lytics "VIP shoppers" (the cookie, sent by the SDK as the __lytics_audiences live attribute): VIP.
        expect=(("0", "0"), ("6", "1")),
    ),
    InitCase(
        "request-live-lytics-overrides-cookie",
        live={"tier": "silver", "__lytics_audiences": "|high_value_shoppers|"},
        **_request(PRODUCT_URL, f"{UID_COOKIE}=sdk-node-live-lytics; cs-lytics-audiences=|vip_shoppers|"),
        # The live attribute replaces the cookie's audiences: high-value recs, and no longer VIP (so the UK hero).
        expect=(("0", "1"), ("6", "0")),
    ),
    InitCase(
        "tags", user_id="sdk-node-checkout", tags=("section:checkout",), expect_listed=("2",), expect_active=("2",)
    ),
    InitCase(
        "tags-several-case-insensitive",
        user_id="sdk-node-product-cart",
        tags=("SECTION:PRODUCT", "section:cart"),
        expect_listed=("6", "3", "9"),
    ),
    InitCase(
        "live-attributes",
        user_id="sdk-node-live-gold",
        live={"tier": "gold", "lifetime_value": 1500, "visits": 12},
        expect=(("0", "0"), ("6", "2")),
        expect_active=("2", "7"),
    ),
]


@pytest.mark.parametrize("case", INIT_CASES, ids=[c.id for c in INIT_CASES])
def test_init_manifest_equals_decide(case: InitCase, stack: Stack, run_node: NodeRunner) -> None:
    out = run_node("init.mjs", stack, {"SDK_OPTIONS": case.sdk_options()})
    assert not out["rejected"], f"init rejected: {out.get('error')}\n{stack.logs()}"
    reported = out["init"]
    calls = edge_calls(reported["http"], "GET", "/manifest")
    assert len(calls) == 1 and calls[0]["status"] == 200, reported["http"]
    call = calls[0]

    expected_uid = case.user_id or case.cookie_uid()
    if expected_uid is None:
        assert re.match(UUID4_PATTERN, reported["userId"] or ""), f"a new visitor gets a UUID4: {reported['userId']!r}"
        assert "x-cs-personalize-user-uid" not in call["requestHeaders"]
    else:
        assert reported["userId"] == expected_uid
        assert call["requestHeaders"]["x-cs-personalize-user-uid"] == expected_uid
    # The SDK takes the uid from this response header (SPEC §5: always present).
    assert call["responseHeaders"].get("x-cs-personalize-user-uid") == reported["userId"], call["responseHeaders"]
    if case.request_url is not None:
        assert call["requestHeaders"]["x-page-url"] == case.request_url
        assert call["requestHeaders"]["x-forwarded-for"] == IP_LONDON

    decided = decide_one(case.description(reported))
    assert_sdk_matches_decide(reported, decided, f"init case {case.id}")

    variants = active(reported)
    for experience, variant in case.expect:
        assert variants.get(experience) == variant, f"experience {experience}: {variants}"
    for experience in case.expect_active:
        assert variants.get(experience) is not None, f"experience {experience} should be active: {variants}"
    if case.expect_listed is not None:
        assert [e["shortUid"] for e in reported["experiences"]] == list(case.expect_listed)


def test_set_attributes_then_new_init_sees_the_new_audience(stack: Stack, run_node: NodeRunner) -> None:
    user = "sdk-node-set-gold"
    out = run_node("attributes.mjs", stack, {"USER_ID": user, "ATTRIBUTES": VIP_ATTRIBUTES})
    before, after = out["before"], out["after"]
    patches = edge_calls(out["http"], "PATCH", "/user-attributes")
    assert [p["status"] for p in patches] == [200], out["http"]
    assert patches[0]["requestHeaders"]["x-cs-personalize-user-uid"] == user

    assert active(before).get("0") != "0", f"not VIP before set(): {active(before)}"
    assert active(after)["0"] == "0", f"VIP hero after set({VIP_ATTRIBUTES}): {active(after)}"
    ua = edge_calls(before["http"], "GET", "/manifest")[0]["requestHeaders"]["user-agent"]
    base = {"method": "GET", "userUid": user, "headers": {"User-Agent": ua}, "ip": "127.0.0.1"}
    assert_sdk_matches_decide(before, decide_one({**base, "now": before["startedAt"]}), "init before set()")
    assert_sdk_matches_decide(
        after, decide_one({**base, "now": after["startedAt"], "storedAttributes": VIP_ATTRIBUTES}), "init after set()"
    )


def test_impressions_and_event_are_stored(stack: Stack, run_node: NodeRunner) -> None:
    user = "sdk-node-events-user"
    case = InitCase("events", **_request(PRODUCT_URL, f"{UID_COOKIE}={user}"))
    started = time.time()
    out = run_node(
        "events.mjs",
        stack,
        {
            "SDK_OPTIONS": case.sdk_options(),
            "EVENT_KEY": "purchase",
            "EXTRA_ALIASES": ["cs_personalize_3_1"],
        },
    )
    finished = time.time()
    reported = out["init"]
    assert reported["userId"] == user
    posts = edge_calls(out["http"], "POST", "/events")
    assert len(posts) == 4 and all(p["status"] == 200 for p in posts), out["http"]
    assert all(p["requestHeaders"]["x-cs-personalize-user-uid"] == user for p in posts)
    assert all(p["requestHeaders"]["x-project-uid"] == PROJECT_UID for p in posts)

    # The SDK sends an impression for each experience with an active variant, plus the explicit alias.
    expected_impressions = sorted([(e, v) for e, v in active(reported).items() if v is not None] + [("3", "1")])
    rows = stack.events(user)
    impressions = sorted((r["experience_short_uid"], r["variant_short_uid"]) for r in rows if r["type"] == "IMPRESSION")
    custom = [r["event_key"] for r in rows if r["type"] == "EVENT"]
    assert impressions == expected_impressions, rows
    assert custom == ["purchase"], rows
    for row in rows:
        assert row["project_uid"] == PROJECT_UID and row["user_uid"] == user and row["source"] == "sdk", row
        assert started - 5 <= row["ts"] <= finished + 5, row
    for row in rows:
        if row["type"] == "IMPRESSION":
            assert row["event_key"] is None, row
        else:
            assert row["experience_short_uid"] is None and row["variant_short_uid"] is None, row


def test_set_user_id_preserving_attributes_merges_them(stack: Stack, run_node: NodeRunner) -> None:
    old, new, control = "sdk-node-anonymous", "sdk-node-logged-in", "sdk-node-control"
    target_before = {"tier": "silver", "visits": 12}  # the target's own values: tier is overwritten, visits kept
    out = run_node(
        "set_user_id.mjs",
        stack,
        {
            "OLD_USER_ID": old,
            "NEW_USER_ID": new,
            "CONTROL_USER_ID": control,
            "ATTRIBUTES": VIP_ATTRIBUTES,
            "TARGET_ATTRIBUTES": target_before,
        },
    )
    assert out["userIdAfterSetUserId"] == new
    merges = edge_calls(out["http"], "POST", "/user-attributes/actions/merge")
    assert [m["status"] for m in merges] == [200], out["http"]

    merged = {**target_before, **VIP_ATTRIBUTES}  # source values win, the target's other keys stay
    new_user, old_user, ctrl = out["newUser"], out["oldUser"], out["control"]
    assert active(new_user)["0"] == "0", f"the merged gold tier makes {new} VIP: {active(new_user)}"
    assert active(new_user)["6"] == "2", f"{new} keeps its own visits=12 (frequent visitor): {active(new_user)}"
    assert active(old_user)["0"] == "0", f"the source keeps its attributes: {active(old_user)}"
    assert active(ctrl).get("0") != "0", f"an unrelated user is not VIP: {active(ctrl)}"

    ua = edge_calls(new_user["http"], "GET", "/manifest")[0]["requestHeaders"]["user-agent"]

    def description(uid: str, snap: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "method": "GET",
            "userUid": uid,
            "headers": {"User-Agent": ua},
            "ip": "127.0.0.1",
            "now": snap["startedAt"],
        }
        if stored:
            d["storedAttributes"] = stored
        return d

    assert_sdk_matches_decide(new_user, decide_one(description(new, new_user, merged)), "init(newId) after merge")
    assert_sdk_matches_decide(old_user, decide_one(description(old, old_user, VIP_ATTRIBUTES)), "init(oldId)")
    assert_sdk_matches_decide(ctrl, decide_one(description(control, ctrl, None)), "init(control)")


def test_add_state_to_response_cookies_carry_the_visitor(stack: Stack, run_node: NodeRunner) -> None:
    """An edge function: init({request}) for a new visitor, addStateToResponse(response); the browser's next
    request sends those cookies back: same uid, same manifest. The proxy's own page cookies for that visitor say
    the same as the SDK's (SPEC §6)."""
    page_url = stack.url + "/?utm_campaign=bf"
    headers = {"User-Agent": UA_IPHONE, "X-Forwarded-For": IP_LONDON, "Referer": GOOGLE}
    out = run_node("add_state.mjs", stack, {"REQUEST": {"url": page_url, "headers": headers}})
    first, second = out["first"], out["second"]
    uid = first["userId"]
    assert re.match(UUID4_PATTERN, uid or ""), uid

    cookies = {c["name"]: c["value"] for c in out["cookies"]}
    assert set(cookies) == {UID_COOKIE, MANIFEST_COOKIE}, out["setCookies"]
    assert cookies[UID_COOKIE] == uid
    sdk_manifest = json.loads(cookies[MANIFEST_COOKIE])
    assert sdk_manifest == {"experiences": first["experiences"], "activeVariants": first["variants"]}

    assert second["userId"] == uid, "the uid carries over through the cookie"
    second_call = edge_calls(second["http"], "GET", "/manifest")[0]
    assert second_call["requestHeaders"]["x-cs-personalize-user-uid"] == uid
    for key in ("experiences", "variants", "aliases", "variantParam"):
        assert second[key] == first[key], key

    base: dict[str, Any] = {
        "method": "GET",
        "url": page_url,
        "ip": IP_LONDON,
        "userUid": uid,
        "headers": {"User-Agent": UA_IPHONE, "Referer": GOOGLE},
    }
    assert_sdk_matches_decide(first, decide_one({**base, "now": first["startedAt"]}), "first init({request})")
    assert_sdk_matches_decide(
        second,
        decide_one({**base, "now": second["startedAt"], "headers": {**base["headers"], "Cookie": out["cookieHeader"]}}),
        "second init({request}) with the SDK's cookies",
    )

    # The proxy, serving that page to the same visitor (with the cookies the SDK wrote), sets the same state.
    page = urllib.request.Request(page_url, headers={**headers, "Cookie": out["cookieHeader"]})
    with urllib.request.urlopen(page, timeout=10) as response:
        assert response.status == 200
        proxy_cookies = cookie_pairs(response.headers.get_all("Set-Cookie") or [])
    assert proxy_cookies[UID_COOKIE][0] == uid
    assert json.loads(proxy_cookies[MANIFEST_COOKIE][0]) == sdk_manifest
    # Same attributes as the SDK's, except Secure, which the proxy sets only for https visitors (SPEC §6, ours).
    https_page = urllib.request.Request(
        page_url, headers={**headers, "Cookie": out["cookieHeader"], "X-Forwarded-Proto": "https"}
    )
    with urllib.request.urlopen(https_page, timeout=10) as response:
        https_cookies = cookie_pairs(response.headers.get_all("Set-Cookie") or [])
    sdk_attributes = {c["name"]: c["raw"].split(";")[1:] for c in out["cookies"]}
    for name in (UID_COOKIE, MANIFEST_COOKIE):
        sdk_flags = {a.strip() for a in sdk_attributes[name]}
        assert set(proxy_cookies[name][1]) == sdk_flags - {"Secure"}, (name, proxy_cookies[name][1], sdk_flags)
        assert set(https_cookies[name][1]) == sdk_flags, (name, https_cookies[name][1], sdk_flags)
        assert https_cookies[name][0] == proxy_cookies[name][0], name


@pytest.mark.parametrize("project_uid", ["000000000000000000000000", "6565d3b1a3f0c7b2e1d4a9f1"])
def test_wrong_project_uid_rejects_init(project_uid: str, stack: Stack, run_node: NodeRunner) -> None:
    out = run_node("init.mjs", stack, {"PROJECT_UID": project_uid, "SDK_OPTIONS": {"userId": "sdk-node-wrong"}})
    assert out["rejected"], out
    assert out["error"] == f"Project not found: {project_uid}"
    assert out["initializationStatus"] == "error"
    calls = edge_calls(out["http"], "GET", "/manifest")
    assert [c["status"] for c in calls] == [404], out["http"]
