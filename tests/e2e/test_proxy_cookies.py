"""The cookies the Personalize SDK reads (SPEC §6): user uid and raw-JSON manifest, Secure only over https."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from .conftest import IP_LONDON, Http, Reply, Service, VisitorCatalog, parse_set_cookie

pytestmark = pytest.mark.e2e

UID_COOKIE = "cs-personalize-user-uid"
MANIFEST_COOKIE = "cs-personalize-manifest"


def _ours(reply: Reply) -> dict[str, tuple[str, list[str]]]:
    found: dict[str, tuple[str, list[str]]] = {}
    for header in reply.set_cookies:
        name, value, attributes = parse_set_cookie(header)
        if name in (UID_COOKIE, MANIFEST_COOKIE):
            assert name not in found, f"{name} set twice: {reply.set_cookies}"
            found[name] = (value, attributes)
    assert set(found) == {UID_COOKIE, MANIFEST_COOKIE}, reply.set_cookies
    return found


def test_first_visit_gets_a_uuid4_uid_cookie_and_the_decided_manifest_as_raw_json(
    proxy: Service, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    visitor = visitors.us_iphone_bf
    newcomer = visitors.new(
        "cookie-newcomer", user_agent=visitor.user_agent, client_ip=visitor.client_ip, query=visitor.query,
        cookies=(("cs-lytics-audiences", "|high_value_shoppers|"),),
    )  # fmt: skip
    reply = http.get(proxy.url + newcomer.target("/"), headers=newcomer.headers())
    assert reply.status == 200
    cookies = _ours(reply)

    uid, uid_attributes = cookies[UID_COOKIE]
    parsed = uuid.UUID(uid)
    assert parsed.version == 4 and str(parsed) == uid, uid
    assert uid_attributes == ["Max-Age=31536000", "Path=/", "SameSite=Lax"]  # no Secure over plain http

    raw_manifest, manifest_attributes = cookies[MANIFEST_COOKIE]
    assert manifest_attributes == ["Path=/", "SameSite=Lax"]
    assert raw_manifest.startswith("{"), "raw JSON, neither quoted nor URL-encoded"
    (decided,) = decide([newcomer.description(proxy, "/", user_uid=uid)])
    assert json.loads(raw_manifest) == {
        "experiences": decided["experiences"],
        "activeVariants": decided["activeVariants"],
    }


def test_returning_visitor_keeps_the_uid_from_the_cookie(proxy: Service, visitors: VisitorCatalog, http: Http) -> None:
    first = http.get(proxy.url + "/", headers=visitors.london.headers())
    uid, _ = _ours(first)[UID_COOKIE]
    manifest, _ = _ours(first)[MANIFEST_COOKIE]
    returning = {**visitors.london.headers(), "Cookie": f"{UID_COOKIE}={uid}; {MANIFEST_COOKIE}={manifest}"}
    for _ in range(3):
        again = http.get(proxy.url + "/echo", headers=returning)
        assert _ours(again)[UID_COOKIE][0] == uid
        assert again.json()["headers"]["x-cs-personalize-user-uid"] == uid
        # Same uid, same rules: the same manifest (A/B buckets are stable per user).
        assert json.loads(_ours(again)[MANIFEST_COOKIE][0]) == json.loads(manifest)


def test_https_seen_by_a_trusted_proxy_marks_both_cookies_secure(
    proxy: Service, untrusting_proxy: Service, http: Http
) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": IP_LONDON}
    secure = _ours(http.get(proxy.url + "/", headers=headers))
    for name, (_, attributes) in secure.items():
        assert "Secure" in attributes, (name, attributes)
        assert "SameSite=Lax" in attributes and "Path=/" in attributes
    # The same claim from a peer that is not a trusted proxy is not believed.
    plain = _ours(http.get(untrusting_proxy.url + "/", headers=headers))
    for name, (_, attributes) in plain.items():
        assert "Secure" not in attributes, (name, attributes)


def test_origin_set_cookie_headers_pass_through_next_to_ours(proxy: Service, http: Http) -> None:
    reply = http.get(proxy.url + "/set-cookie?extra=1")
    assert reply.status == 200
    assert "origin_session=abc; Path=/" in reply.set_cookies
    assert "origin_pref=dark; Path=/; Max-Age=3600; HttpOnly" in reply.set_cookies
    assert set(_ours(reply)) == {UID_COOKIE, MANIFEST_COOKIE}
    assert len(reply.set_cookies) == 4, reply.set_cookies
