"""What reaches the origin (SPEC §7): the decided variant headers, for every kind of visitor, and nothing a
visitor or an untrusted peer could forge. The oracle is `edgeproxy decide` on the same visitor's request
description (SPEC §9), so no expected variant is hard-coded except where a test is about one specific rule."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from .conftest import IP_LONDON, IP_US, TRUSTED, Http, Launcher, Service, Visitor, VisitorCatalog

pytestmark = pytest.mark.e2e

PERSONALIZATION_HEADERS = ("x-cs-variant-uid", "x-cs-personalize-variants", "x-cs-personalize-user-uid")


def _echo_headers(http: Http, proxy: Service, visitor: Visitor, path: str = "/echo") -> dict[str, Any]:
    reply = http.get(proxy.url + visitor.target(path), headers=visitor.headers())
    assert reply.status == 200, reply.body[:300]
    echoed: dict[str, Any] = reply.json()
    return echoed


def _uid_for_description(visitor: Visitor, seen: dict[str, Any]) -> str | None:
    # A new visitor's uid is minted by the proxy; decide would mint another one (and bucket differently).
    return None if visitor.cookie_uid else str(seen["x-cs-personalize-user-uid"])


def _expected(manifest: dict[str, Any], cda_limit: int = 3) -> dict[str, str]:
    aliases = manifest["aliases"][:cda_limit] if cda_limit else manifest["aliases"]
    return {
        "x-cs-variant-uid": ",".join(aliases),
        "x-cs-personalize-variants": manifest["variantParam"],
        "x-cs-personalize-user-uid": manifest["userUid"],
    }


def _seen(headers: dict[str, Any]) -> dict[str, str | None]:
    return {name: headers.get(name) for name in PERSONALIZATION_HEADERS}


def test_origin_receives_exactly_the_decided_variant_headers_for_every_audience(
    proxy: Service, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    echoed = {v.name: _echo_headers(http, proxy, v) for v in visitors.all}
    manifests = decide(
        [v.description(proxy, user_uid=_uid_for_description(v, echoed[v.name]["headers"])) for v in visitors.all]
    )
    seen = {v.name: _seen(echoed[v.name]["headers"]) for v in visitors.all}
    expected = {v.name: _expected(m) for v, m in zip(visitors.all, manifests, strict=True)}
    assert seen == expected
    for v in visitors.all:
        names = [name.lower() for name, _ in echoed[v.name]["rawHeaders"]]
        for header in PERSONALIZATION_HEADERS:
            assert names.count(header) == 1, f"{v.name}: {header} sent {names.count(header)} times"
    # The suite is only meaningful if the visitors really land in different audiences.
    assert len({s["x-cs-personalize-variants"] for s in seen.values()}) >= 5, seen


@pytest.mark.parametrize(
    ("visitor_name", "variant", "rule"),
    [
        ("london", "0_1", "COUNTRY GB from the MaxMind geo of the trusted X-Forwarded-For"),
        ("us_iphone_bf", "0_2", "DEVICE_TYPE MOBILE and OPERATING_SYSTEM IOS from the User-Agent"),
        ("us_iphone_bf", "6_0", "Lytics audience high_value_shoppers from the cs-lytics-audiences cookie"),
        ("vip", "0_0", "VIP: live tier silver (X-Live-Attributes) and Lytics vip_shoppers cookie"),
        ("gb_pixel", "6_0", "Lytics flow state from the cs-lytics-flows cookie"),
        ("search_tablet", "6_1", "REFERRER contains ://www.google."),
    ],
)
def test_a_specific_rule_selects_its_variant_through_the_proxy(
    proxy: Service, visitors: VisitorCatalog, http: Http, visitor_name: str, variant: str, rule: str
) -> None:
    visitor: Visitor = getattr(visitors, visitor_name)
    variants = _echo_headers(http, proxy, visitor)["headers"]["x-cs-personalize-variants"].split(",")
    assert variant in variants, f"{visitor.name}: expected {variant} ({rule}), origin got {variants}"


def test_us_visitor_is_bucketed_into_the_us_only_ab_test_and_others_are_not(
    proxy: Service, visitors: VisitorCatalog, http: Http
) -> None:
    # Experience 3 targets US & Canada shoppers (COUNTRY from the trusted X-Forwarded-For).
    us = _echo_headers(http, proxy, visitors.googlebot)["headers"]["x-cs-personalize-variants"].split(",")
    gb = _echo_headers(http, proxy, visitors.london)["headers"]["x-cs-personalize-variants"].split(",")
    assert [v for v in us if v.startswith("3_")], us
    assert not [v for v in gb if v.startswith("3_")], gb


def test_cda_header_is_truncated_to_three_aliases_by_default_and_kept_whole_with_limit_zero(
    proxy: Service, node_origin: Service, launch: Launcher, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    unlimited = launch.proxy(node_origin, *TRUSTED, "--cda-variant-limit", "0")
    by_default = {v.name: _echo_headers(http, proxy, v)["headers"] for v in visitors.all}
    with_zero = {v.name: _echo_headers(http, unlimited, v)["headers"] for v in visitors.all}
    manifests = decide(
        [v.description(proxy, user_uid=_uid_for_description(v, by_default[v.name])) for v in visitors.all]
    )
    manifests_zero = decide(
        [v.description(unlimited, user_uid=_uid_for_description(v, with_zero[v.name])) for v in visitors.all]
    )
    assert any(len(m["aliases"]) > 3 for m in manifests), "no visitor has more than 3 variants: test is vacuous"
    for v, m, mz in zip(visitors.all, manifests, manifests_zero, strict=True):
        default_cda = by_default[v.name]["x-cs-variant-uid"]
        assert len(default_cda.split(",")) <= 3, default_cda
        assert default_cda == ",".join(m["aliases"][:3]), v.name
        assert with_zero[v.name]["x-cs-variant-uid"] == ",".join(mz["aliases"]), v.name
        # The variant param always carries the full set.
        assert by_default[v.name]["x-cs-personalize-variants"] == m["variantParam"], v.name
        assert with_zero[v.name]["x-cs-personalize-variants"] == mz["variantParam"], v.name


def test_variant_query_param_rewrite_reaches_the_origin_url(
    node_origin: Service, launch: Launcher, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    launch_style = launch.proxy(node_origin, *TRUSTED, "--variant-query-param", "personalize_variants")
    visitor = visitors.new(
        "launch-style", user_agent=visitors.us_iphone_bf.user_agent, client_ip=visitors.us_iphone_bf.client_ip,
        query="utm_campaign=bf&personalize_variants=9_9&x=1", cookies=visitors.us_iphone_bf.cookies,
    )  # fmt: skip
    echoed = _echo_headers(http, launch_style, visitor)
    (manifest,) = decide([visitor.description(launch_style)])
    url = urlsplit(echoed["url"])
    assert url.path == "/echo"
    query = parse_qs(url.query, keep_blank_values=True)
    # The visitor's own personalize_variants=9_9 is replaced, not believed; the rest of the query is kept.
    assert query["personalize_variants"] == [manifest["variantParam"]]
    assert query["utm_campaign"] == ["bf"]
    assert query["x"] == ["1"]
    assert "," in manifest["variantParam"], "the variant param travels with its commas"
    assert f"personalize_variants={manifest['variantParam']}" in url.query
    assert echoed["headers"]["x-cs-personalize-variants"] == manifest["variantParam"]


def test_client_sent_personalization_headers_are_overwritten(
    proxy: Service, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    forged = (
        ("X-CS-Variant-Uid", "cs_personalize_0_0,cs_personalize_9_9"),
        ("x-cs-personalize-variants", "0_0,9_9"),
    )
    visitor = visitors.new(
        "forger", user_agent=visitors.london.user_agent, client_ip=IP_LONDON,
        cookies=(("cs-personalize-user-uid", "e2e-forger-1"),), headers_extra=forged,
    )  # fmt: skip
    echoed = _echo_headers(http, proxy, visitor)
    (manifest,) = decide([visitor.description(proxy)])
    assert _seen(echoed["headers"]) == _expected(manifest)
    assert "cs_personalize_9_9" not in echoed["headers"]["x-cs-variant-uid"]
    assert "9_9" not in echoed["headers"]["x-cs-personalize-variants"]
    raw = [(name.lower(), value) for name, value in echoed["rawHeaders"]]
    for header in PERSONALIZATION_HEADERS:
        assert [n for n, _ in raw].count(header) == 1, raw
    assert ("x-cs-personalize-variants", "0_0,9_9") not in raw


def test_client_claimed_user_uid_reaches_the_origin_once_and_matches_the_decision_and_cookie(
    proxy: Service, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    # Whatever uid the visitor claims, the origin gets one uid: the one the decision used and the cookie carries.
    visitor = visitors.new(
        "uid-claimer", client_ip=IP_LONDON, cookies=(("cs-personalize-user-uid", "e2e-cookie-uid"),),
        headers_extra=(("X-CS-Personalize-User-Uid", "e2e-header-uid"),),
    )  # fmt: skip
    reply = http.get(proxy.url + visitor.target("/echo"), headers=visitor.headers())
    echoed = reply.json()
    (manifest,) = decide([visitor.description(proxy)])
    assert _seen(echoed["headers"]) == _expected(manifest)
    uid_cookies = [c for c in reply.set_cookies if c.startswith("cs-personalize-user-uid=")]
    assert uid_cookies and uid_cookies[0].split(";")[0] == f"cs-personalize-user-uid={manifest['userUid']}"
    raw_names = [name.lower() for name, _ in echoed["rawHeaders"]]
    assert raw_names.count("x-cs-personalize-user-uid") == 1


def test_untrusted_peer_cannot_choose_the_client_address_scheme_host_or_geo(
    proxy: Service, untrusting_proxy: Service, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    visitor = visitors.new(
        "claims-london", client_ip=IP_LONDON, cookies=(("cs-personalize-user-uid", "e2e-claims-london"),),
        headers_extra=(
            ("CF-IPCountry", "GB"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", f"for={IP_LONDON};proto=https"),
        ),
    )  # fmt: skip
    untrusted = _echo_headers(http, untrusting_proxy, visitor)["headers"]
    trusted = _echo_headers(http, proxy, visitor)["headers"]
    untrusted_manifest, trusted_manifest = decide(
        [visitor.description(untrusting_proxy, trusted=False), visitor.description(proxy)]
    )
    # Not believed: the origin hears the real peer, the real scheme and host; the geo is not London's.
    assert untrusted["x-forwarded-for"] == "127.0.0.1"
    assert untrusted["x-forwarded-proto"] == "http"
    assert untrusted["x-forwarded-host"] == f"127.0.0.1:{untrusting_proxy.port}"
    assert "forwarded" not in untrusted
    assert _seen(untrusted) == _expected(untrusted_manifest)
    assert "0_1" not in untrusted["x-cs-personalize-variants"].split(","), "GB hero from an untrusted claim"
    # Believed from the trusted CDN: the chain is extended and London's geo applies.
    assert trusted["x-forwarded-for"] == f"{IP_LONDON}, 127.0.0.1"
    assert trusted["x-forwarded-proto"] == "https"
    assert trusted["x-forwarded-host"] == "evil.example"
    assert _seen(trusted) == _expected(trusted_manifest)
    assert "0_1" in trusted["x-cs-personalize-variants"].split(",")


def test_trusted_forwarded_chain_is_read_from_the_right_so_a_forged_left_entry_is_ignored(
    proxy: Service, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    # The visitor forged "216.160.83.56" (US); the trusted CDN appended the address it saw (London).
    visitor = visitors.new(
        "forged-chain", client_ip=f"{IP_US}, {IP_LONDON}", cookies=(("cs-personalize-user-uid", "e2e-chain-1"),)
    )
    headers = _echo_headers(http, proxy, visitor)["headers"]
    (manifest,) = decide([{**visitor.description(proxy), "ip": IP_LONDON}])
    assert _seen(headers) == _expected(manifest)
    variants = headers["x-cs-personalize-variants"].split(",")
    assert "0_1" in variants, "the London address the CDN saw decides the geo"
    assert not [v for v in variants if v.startswith("3_")], "the forged US address is not believed"
    assert headers["x-forwarded-for"] == f"{IP_US}, {IP_LONDON}, 127.0.0.1"


def test_nginx_origin_receives_the_decided_personalization_headers(
    nginx_proxy: Service, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for v in visitors.all:
        reply = http.get(nginx_proxy.url + v.target("/hdr"), headers=v.headers())
        assert reply.status == 200, reply.body[:300]
        assert "nginx" in reply.headers.get("Server", "")
        seen[v.name] = reply.json()
    manifests = decide(
        [v.description(nginx_proxy, "/hdr", user_uid=_uid_for_description(v, seen[v.name])) for v in visitors.all]
    )
    for v, manifest in zip(visitors.all, manifests, strict=True):
        assert _seen(seen[v.name]) == _expected(manifest), v.name
        expected_xff = f"{v.client_ip}, 127.0.0.1" if v.client_ip else "127.0.0.1"
        assert seen[v.name]["x-forwarded-for"] == expected_xff, v.name
        assert seen[v.name]["uri"] == v.target("/hdr")


def test_nginx_static_file_is_served_unchanged_and_unpersonalized(
    nginx_proxy: Service, nginx_origin: Service, visitors: VisitorCatalog, http: Http
) -> None:
    docroot = nginx_origin.extra["docroot"]
    for name in ("font.woff2", "site.css"):
        direct = http.get(f"{nginx_origin.url}/static/{name}")
        via_proxy = http.get(f"{nginx_proxy.url}/static/{name}", headers=visitors.london.headers())
        assert via_proxy.status == 200
        assert via_proxy.body == (docroot / "static" / name).read_bytes()
        for header in ("Content-Length", "Content-Type", "ETag", "Last-Modified", "Cache-Control"):
            assert via_proxy.headers.get(header) == direct.headers.get(header), header
        assert via_proxy.headers["Cache-Control"] == "public, max-age=600"
        assert not via_proxy.set_cookies, via_proxy.set_cookies
    echoed = http.get(f"{nginx_proxy.url}/static/hdr.css", headers=visitors.london.headers()).json()
    assert _seen(echoed) == dict.fromkeys(PERSONALIZATION_HEADERS, "")
