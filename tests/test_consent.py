"""Consent mode and the cookie domain (SPEC §11) through the real proxy, in front of the Node example origin, on
SQLite state: without consent no identifier or manifest cookie, nothing stored (impressions, Edge API writes,
decision log), A/B tests null, segmented experiences from request data, the cache shared; with consent a normal
visitor; `cookie_domain` only for hosts within it. The proxy's clock is fixed (T0 of test_preview_proxy).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import redis
from support.processes import redis_server
from test_preview_proxy import DESKTOP, P, Proxy, clock, origin, run, state_for  # the same in-process proxy harness

from edgeproxy.analytics.impressions import ImpressionRecorder
from edgeproxy.runtime.config import ConfigError, ProxyConfig, validate

__all__ = ["origin"]  # the module-scoped Node origin fixture, shared

AB_TESTS = ("2", "3", "7")  # the example's running A/B tests
CONSENT = "site_consent"


def _event_users(tmp: Path) -> list[str]:
    with sqlite3.connect(f"file:{tmp}/state.sqlite3?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute("SELECT user_uid FROM events")]


def _variants(seen: dict[str, object]) -> dict[str, str]:
    """experience -> variant, from the variant param the origin got."""
    headers = seen["headers"]
    assert isinstance(headers, dict)
    param = headers.get("x-cs-personalize-variants", "")
    return dict(item.split("_", 1) for item in param.split(",") if item)


def test_without_consent_nothing_identifies_or_is_stored_and_ab_tests_are_null(origin: str, tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    state = state_for(origin, tmp_path, consent_cookie=CONSENT, impressions="proxy", decision_log=str(log))
    state.impressions = ImpressionRecorder(state.store, lambda: P, clock=clock)  # as `serve` has one

    async def scenario(proxy: Proxy) -> None:
        answer, seen = await proxy.echo("/echo?utm_campaign=bf", uid="returning-visitor")
        assert answer.headers.getall("Set-Cookie", []) == []  # no identifier, no manifest cookie
        assert "x-cs-personalize-user-uid" not in seen["headers"]
        assert not set(_variants(seen)) & set(AB_TESTS), _variants(seen)
        page = await proxy.get("/", uid=None)
        assert page.status == 200 and page.headers.getall("Set-Cookie", []) == []
        # The same request with consent: a normal visitor, in the A/B tests, with the same segmented variants.
        consented, seen_consented = await proxy.echo("/echo?utm_campaign=bf", uid="returning-visitor",
                                                     cookies=(f"{CONSENT}=yes",))  # fmt: skip
        assert consented.set_cookie("cs-personalize-user-uid") is not None
        assert seen_consented["headers"]["x-cs-personalize-user-uid"] == "returning-visitor"
        consented_page = await proxy.get("/", uid="returning-visitor", cookies=(f"{CONSENT}=yes",))
        assert consented_page.status == 200  # an HTML page: one impression recorded (impressions = proxy)
        with_ab = _variants(seen_consented)
        assert set(with_ab) & set(AB_TESTS)
        assert {e: v for e, v in with_ab.items() if e not in AB_TESTS} == _variants(seen)
        # The Edge API: a manifest without a uid, A/B null; writes refused with a clear answer, nothing stored.
        manifest = await proxy.manifest("http://shop.test/?utm_campaign=bf", uid="returning-visitor")
        assert manifest.status == 200 and "X-CS-Personalize-User-Uid" not in manifest.headers
        assert all(manifest.json()["activeVariants"][e] is None for e in AB_TESTS)
        for method, path, body in (("POST", "/_personalize/events", '[{"type": "EVENT", "eventKey": "purchase"}]'),
                                   ("PATCH", "/_personalize/user-attributes", '{"tier": "gold"}')):  # fmt: skip
            refused = await proxy.request(method, path, uid=None, data=body, headers={
                "X-Project-Uid": P, "X-CS-Personalize-User-Uid": "returning-visitor",
                "Content-Type": "application/json"})  # fmt: skip
            assert refused.status == 403 and refused.json()["error"] == "personalize.CONSENT_REQUIRED", refused
            assert CONSENT in refused.json()["message"]

    run(state, origin, scenario)
    users = _event_users(tmp_path)
    assert users and set(users) == {"returning-visitor"}  # the consenting page's impressions, nothing else
    lines = log.read_text().splitlines() if log.exists() else []
    assert len(lines) == 2 and all("returning-visitor" in line for line in lines)  # only the consenting requests


def test_consent_value_must_match_when_configured(origin: str, tmp_path: Path) -> None:
    state = state_for(origin, tmp_path, consent_cookie=CONSENT, consent_value="granted")

    async def scenario(proxy: Proxy) -> None:
        refused = await proxy.get("/", cookies=(f"{CONSENT}=denied",))
        assert refused.headers.getall("Set-Cookie", []) == []
        granted = await proxy.get("/", cookies=(f"{CONSENT}=granted",))
        assert granted.set_cookie("cs-personalize-user-uid") is not None

    run(state, origin, scenario)


def test_visitors_without_consent_share_cached_pages(origin: str, tmp_path: Path) -> None:
    state = state_for(origin, tmp_path, consent_cookie=CONSENT)

    async def scenario(proxy: Proxy) -> None:
        first = await proxy.get("/", uid="visitor-a")
        hits = await proxy.origin_hits("/")
        second = await proxy.get("/", uid="visitor-b")  # another visitor, same request data: the same variant set
        assert first.headers["X-Cache"] == "MISS" and second.headers["X-Cache"] == "HIT"
        assert await proxy.origin_hits("/") == hits  # answered from the cache

    run(state, origin, scenario)


def test_the_cookie_domain_is_added_for_hosts_within_it(origin: str, tmp_path: Path) -> None:
    state = state_for(origin, tmp_path, cookie_domain="example.com")

    async def scenario(proxy: Proxy) -> None:
        for host, domain in (("shop.example.com", True), ("example.com:8080", True), ("example.com.evil.test", False),
                             ("notexample.com", False), ("[::1]:8080", False)):  # fmt: skip
            answer = await proxy.get("/", headers={"Host": host, "User-Agent": DESKTOP})
            for name in ("cs-personalize-user-uid", "cs-personalize-manifest"):
                cookie = answer.set_cookie(name)
                assert cookie is not None and ("; Domain=example.com;" in cookie) is domain, (host, cookie)

    run(state, origin, scenario)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"cookie_domain": "exa_mple.com"}, "cookie_domain"),
        ({"cookie_domain": "example.com; Secure"}, "cookie_domain"),
        ({"consent_cookie": "bad name"}, "consent_cookie"),
        ({"consent_value": "yes"}, "needs consent_cookie"),
        ({"consent_cookie": "c", "consent_value": "a;b"}, "consent_value"),
    ],
)
def test_bad_consent_and_domain_settings_are_refused(settings: dict[str, str], says: str) -> None:
    config = ProxyConfig(origin="http://127.0.0.1:9", rules="rules", **settings)
    with pytest.raises(ConfigError, match=says):
        validate(config)


def test_without_consent_nothing_is_written_to_redis(origin: str, tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        state = state_for(origin, tmp_path, consent_cookie=CONSENT, state=url, impressions="proxy")
        state.impressions = ImpressionRecorder(state.store, lambda: P, clock=clock)

        async def scenario(proxy: Proxy) -> None:
            for target in ("/", "/echo?utm_campaign=bf", "/products/storm-shell-jacket"):
                answer = await proxy.get(target, uid="redis-visitor")
                assert answer.status == 200 and answer.headers.getall("Set-Cookie", []) == []
            for method, path, body in (("POST", "/_personalize/events", '[{"type": "EVENT", "eventKey": "purchase"}]'),
                                       ("PATCH", "/_personalize/user-attributes", '{"tier": "gold"}')):  # fmt: skip
                refused = await proxy.request(method, path, uid=None, data=body, headers={
                    "X-Project-Uid": P, "X-CS-Personalize-User-Uid": "redis-visitor",
                    "Content-Type": "application/json"})  # fmt: skip
                assert refused.status == 403, refused
            consented = await proxy.get("/", uid="redis-visitor", cookies=(f"{CONSENT}=yes",))
            assert consented.status == 200

        run(state, origin, scenario)
        client = redis.Redis.from_url(url)
        keys = sorted(key.decode() for key in client.scan_iter())
        # Only the consenting page's impressions: one stream entry each, all of that visitor (and the set that names
        # the event streams for their drain, which holds no visitor data).
        assert keys == [f"edgeproxy:{P}:events", "edgeproxy:event-streams"], keys
        assert client.smembers("edgeproxy:event-streams") == {f"edgeproxy:{P}:events".encode()}
        entries = client.xrange(f"edgeproxy:{P}:events")
        assert entries and all(b"redis-visitor" in b"".join(fields.values()) for _, fields in entries)
