"""Consent mode (SPEC §11) end to end: `edgeproxy serve --consent-cookie site_consent` in front of the Node example
origin, with SQLite state; a real headless Chromium visiting pages through it with the official SDK browser bundle
loaded into each page (tests/sdk/preview.mjs), and the official SDK in Node (tests/sdk/*.mjs).

A visitor without the consent cookie gets no identifier or manifest cookie from the proxy, nothing of theirs is
stored (the SDK's impressions, conversion and attributes are refused), the A/B tests (experiences 2, 3 and 7 of the
example rules) are null for them while the segmented experiences decide as for anyone with the same request; the
same browser with consent given is then a normal visitor with a new identity. The judgement is date-independent:
the anonymous visit is compared with the consenting visit of the same request, not with fixed variants.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    IP_LONDON,
    MANIFEST_COOKIE,
    UA_WINDOWS_CHROME,
    UID_COOKIE,
    UUID4_PATTERN,
    VIP_ATTRIBUTES,
    Launcher,
    NodeRunner,
    Stack,
    active,
    browse,
    edge_calls,
    parse_set_cookie,
)

pytestmark = pytest.mark.e2e_sdk

CONSENT = "site_consent"
AB_TESTS = ("2", "3", "7")  # the example's running A/B tests
OURS = (UID_COOKIE, MANIFEST_COOKIE)


@pytest.fixture(scope="module")
def consent_stack(launcher: Launcher, node_bin: str) -> Stack:
    """The Node example origin behind a proxy in consent mode; every alias reaches the origin (no CDA limit), so the
    page shows the whole decision."""
    origin = launcher.node_origin(node_bin)
    state_db = launcher.tmp / "consent-state.db"
    proxy = launcher.proxy(origin, state_db, "--consent-cookie", CONSENT, "--cda-variant-limit", "0")
    return Stack(origin=origin, proxy=proxy, state_db=state_db)


# -- what is stored --------------------------------------------------------------------------------------------------


def _rows(stack: Stack, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{stack.state_db}?mode=ro", uri=True, timeout=10) as db:
        return list(db.execute(f"SELECT * FROM {table}"))  # one of two fixed table names


def stored(stack: Stack) -> dict[str, list[tuple[Any, ...]]]:
    return {table: _rows(stack, table) for table in ("events", "user_attributes")}


# -- the browser -----------------------------------------------------------------------------------------------------


def set_cookies(visit: dict[str, Any]) -> dict[str, str]:
    """The cookies the document's response set: name -> value."""
    headers = [h["value"] for h in visit["document"]["headers"] if h["name"].lower() == "set-cookie"]
    # Playwright may join several Set-Cookie headers with newlines in one entry.
    return {parse_set_cookie(line)[0]: parse_set_cookie(line)[1] for h in headers for line in h.split("\n") if line}


def aliases(visit: dict[str, Any], source: str) -> list[str]:
    """The variant aliases the origin received (x-cs-variant-uid, its debug panel) or applied (its meta)."""
    return [a for a in (visit[source] or "").split(",") if a]


def is_ab(alias: str) -> bool:
    return any(alias.startswith(f"cs_personalize_{e}_") for e in AB_TESTS)


def cookie_jar(visit: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["value"] for c in visit["cookies"]}


def test_without_consent_the_browser_is_nobody_and_with_consent_a_normal_visitor(
    consent_stack: Stack, node_bin: str, chromium_bin: str, sdk_installed: Path
) -> None:
    stack = consent_stack
    url = stack.url + "/"
    before = stored(stack)

    # 1. No consent: the page, then the SDK in it (init from the cookie, init fetched, impressions, a conversion).
    anonymous = browse(node_bin, chromium_bin, stack, [
        {"name": "consent-none", "url": url, "fresh": True, "event": "purchase"},
    ])["consent-none"]  # fmt: skip
    assert not set(set_cookies(anonymous)) & set(OURS), anonymous["document"]["headers"]
    sent = aliases(anonymous, "variantUidHeader")
    assert not [a for a in sent if is_ab(a)], sent  # the origin got no A/B alias
    assert not [a for a in aliases(anonymous, "applied") if is_ab(a)], anonymous["applied"]
    fetched = dict(anonymous["sdk"]["fetched"])  # what the proxy's /manifest says for this visitor
    assert all(fetched[e] is None for e in AB_TESTS), fetched
    assert stored(stack) == before, "the SDK's events of a visitor without consent were stored"

    # 2. The same browser, consent given: a normal visitor with a new identity, whose events are stored.
    jar = [{"name": name, "value": value} for name, value in cookie_jar(anonymous).items()]
    jar.append({"name": CONSENT, "value": "yes"})
    consented = browse(node_bin, chromium_bin, stack, [
        {"name": "consent-given", "url": url, "fresh": True, "cookies": jar, "event": "purchase"},
    ])["consent-given"]  # fmt: skip
    given = set_cookies(consented)
    assert set(OURS) <= set(given), consented["document"]["headers"]
    uid = given[UID_COOKIE]
    assert re.match(UUID4_PATTERN, uid), (
        f"consent given later must start a new identity (SPEC §11); the proxy answered uid {uid!r}, "
        f"the browser sent cookies {cookie_jar(anonymous)}"
    )
    assert cookie_jar(consented)[UID_COOKIE] == uid
    rows = stack.events(uid)
    assert [r["event_key"] for r in rows if r["type"] == "EVENT"] == ["purchase"], rows
    assert [r for r in rows if r["type"] == "IMPRESSION"], rows
    assert {r["user_uid"] for r in _rows_since(stack, before)} == {uid}  # everything new is the consenting visitor's

    # The same request with consent: in the A/B tests, and the segmented experiences decided the same.
    with_consent = aliases(consented, "variantUidHeader")
    assert [a for a in with_consent if is_ab(a)], with_consent
    assert [a for a in with_consent if not is_ab(a)] == sent, (with_consent, sent)
    full = dict(consented["sdk"]["fetched"])
    assert {e: v for e, v in full.items() if e not in AB_TESTS} == {
        e: v for e, v in fetched.items() if e not in AB_TESTS
    }, (full, fetched)
    assert any(v is not None for e, v in fetched.items() if e not in AB_TESTS), fetched  # something segmented shows


def _rows_since(stack: Stack, before: dict[str, list[tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """The event rows added since `before` (the table only grows in this module), as dicts."""
    known = set(before["events"])
    with sqlite3.connect(f"file:{stack.state_db}?mode=ro", uri=True, timeout=10) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM events").fetchall()
    return [dict(row) for row in rows if tuple(row) not in known]


# -- the SDK in Node -------------------------------------------------------------------------------------------------

LONDON_REQUEST = {"url": "https://shop.example/", "headers": {"X-Forwarded-For": IP_LONDON,
                                                              "User-Agent": UA_WINDOWS_CHROME}}  # fmt: skip


def test_node_sdk_init_gets_a_manifest_without_identity_and_ab_tests_null(
    consent_stack: Stack, run_node: NodeRunner
) -> None:
    before = stored(consent_stack)
    for options in ({}, {"request": LONDON_REQUEST}, {"userId": "node-consent-visitor", "request": LONDON_REQUEST}):
        out = run_node("init.mjs", consent_stack, {"SDK_OPTIONS": options})
        assert out["rejected"] is False, out
        init = out["init"]
        manifests = edge_calls(init["http"], "GET", "/manifest")
        assert [m["status"] for m in manifests] == [200], init["http"]
        headers = {k.lower(): v for k, v in (manifests[0]["responseHeaders"] or {}).items()}
        assert "x-cs-personalize-user-uid" not in headers, headers  # no identity minted or echoed
        assert "set-cookie" not in headers, headers
        assert init["userId"] in (None, options.get("userId")), init["userId"]  # the SDK keeps what it was given
        assert all(active(init)[e] is None for e in AB_TESTS), active(init)
        assert [a for a in init["aliases"] if is_ab(a)] == [], init["aliases"]
    assert active(init)["0"] is not None, active(init)  # the London visitor's segmented hero still decides
    assert stored(consent_stack) == before


def test_node_sdk_writes_are_refused_and_nothing_is_stored(consent_stack: Stack, run_node: NodeRunner) -> None:
    user = "node-consent-writer"
    before = stored(consent_stack)

    out = run_node("attributes.mjs", consent_stack, {"USER_ID": user, "ATTRIBUTES": VIP_ATTRIBUTES,
                                                     "SDK_OPTIONS": {"request": LONDON_REQUEST}})  # fmt: skip
    patches = edge_calls(out["http"], "PATCH", "/user-attributes")
    assert [p["status"] for p in patches] == [403], out["http"]  # the SDK ignores the status: the log has it
    # The SDK takes its uid from the manifest's X-CS-Personalize-User-Uid, which an anonymous manifest lacks: from
    # then on it sends the text "null" (its own cookie too, in a browser). Refused either way.
    assert patches[0]["requestHeaders"]["x-cs-personalize-user-uid"] in (user, "null")
    assert active(out["after"])["0"] != "0", active(out["after"])  # not VIP: nothing was stored

    sdk_options = {"userId": user, "request": LONDON_REQUEST}
    out = run_node("events.mjs", consent_stack, {"SDK_OPTIONS": sdk_options, "EVENT_KEY": "purchase",
                                                 "EXTRA_ALIASES": ["cs_personalize_3_1"]})  # fmt: skip
    posts = edge_calls(out["http"], "POST", "/events")
    assert len(posts) == 4 and all(p["status"] == 403 for p in posts), out["http"]

    assert stored(consent_stack) == before
    assert consent_stack.events(user) == []
