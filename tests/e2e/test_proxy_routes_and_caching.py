"""Which responses are personalized and how they may be cached (SPEC §7), and the ways to configure it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, TRUSTED, Http, Launcher, Service, VisitorCatalog, parse_set_cookie

pytestmark = pytest.mark.e2e


def _manifest_cookie(set_cookies: list[str]) -> str | None:
    for header in set_cookies:
        name, value, _ = parse_set_cookie(header)
        if name == "cs-personalize-manifest":
            return value
    return None


@pytest.mark.parametrize("path", ["/", "/products/storm-shell-jacket", "/checkout", "/cart"])
def test_personalized_html_is_sent_with_cache_control_no_store(
    proxy: Service, visitors: VisitorCatalog, http: Http, path: str
) -> None:
    reply = http.get(proxy.url + path, headers=visitors.london.headers())
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    assert reply.headers.getall("Cache-Control") == ["no-store"]
    assert _manifest_cookie(reply.set_cookies) is not None


def test_origin_cache_control_on_personalized_html_is_replaced_by_no_store(
    nginx_proxy: Service, nginx_origin: Service, visitors: VisitorCatalog, http: Http
) -> None:
    direct = http.get(nginx_origin.url + "/")
    assert direct.headers["Cache-Control"] == "public, max-age=300"  # what a shared cache would otherwise keep
    reply = http.get(nginx_proxy.url + "/", headers=visitors.london.headers())
    assert reply.status == 200 and reply.body == direct.body
    assert reply.headers["Content-Type"].startswith("text/html")
    assert reply.headers.getall("Cache-Control") == ["no-store"]


def test_static_asset_from_node_keeps_its_cache_control_and_gets_no_personalization(
    proxy: Service, node_origin: Service, visitors: VisitorCatalog, http: Http
) -> None:
    direct = http.get(node_origin.url + "/static/site.css")
    reply = http.get(proxy.url + "/static/site.css", headers=visitors.london.headers())
    assert reply.status == 200
    assert reply.body == (ROOT / "examples" / "origin" / "static" / "site.css").read_bytes()
    assert reply.headers["Cache-Control"] == "public, max-age=3600"
    assert reply.headers["ETag"] == direct.headers["ETag"]
    assert not reply.set_cookies


def test_static_asset_path_reaches_nginx_without_variant_headers(
    nginx_proxy: Service, nginx_origin: Service, visitors: VisitorCatalog, http: Http
) -> None:
    access_log: Path = nginx_origin.extra["access_log"]
    marker = f"marker-{time.monotonic_ns()}"
    forger = visitors.new(
        "static-forger", client_ip=visitors.london.client_ip,
        headers_extra=(("x-cs-variant-uid", "cs_personalize_0_0"), ("x-cs-personalize-variants", "0_0"),
                       ("x-cs-personalize-user-uid", "forged")),
    )  # fmt: skip
    for visitor in (*visitors.all, forger):
        reply = http.get(f"{nginx_proxy.url}/static/hdr.css?{marker}", headers=visitor.headers())
        assert reply.status == 200
        echoed = reply.json()
        assert echoed["x-cs-variant-uid"] == ""
        assert echoed["x-cs-personalize-variants"] == ""
        assert echoed["x-cs-personalize-user-uid"] == ""
        assert not reply.set_cookies
    # Not even forged ones: the proxy owns these headers on every path. nginx's own access log agrees
    # (it logs "-" for a header that was not sent).
    lines = [line for line in access_log.read_text().splitlines() if marker in line]
    assert len(lines) == len(visitors.all) + 1, lines
    for line in lines:
        assert 'vu="-" pv="-" uid="-"' in line, line


def test_config_file_route_decides_only_the_checkout_experience_on_checkout(
    nginx_origin: Service, launch: Launcher, tmp_path: Path, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    config = tmp_path / "edgeproxy.toml"
    config.write_text(
        'trusted_proxies = ["127.0.0.1"]\n\n[[routes]]\npath = "/checkout"\ntags = ["section:checkout"]\n'
    )
    routed = launch.proxy(nginx_origin, "--config", str(config))
    visitor = visitors.us_iphone_bf
    checkout = http.get(routed.url + visitor.target("/checkout"), headers=visitor.headers())
    home = http.get(routed.url + visitor.target("/hdr"), headers=visitor.headers())
    on_checkout, everywhere = decide(
        [visitor.description(routed, "/checkout", tags=["section:checkout"]), visitor.description(routed, "/hdr")]
    )
    assert {e["shortUid"] for e in on_checkout["experiences"]} == {"2"}, "only the checkout button test is tagged"
    assert checkout.json()["x-cs-personalize-variants"] == on_checkout["variantParam"]
    assert checkout.json()["x-cs-variant-uid"] == ",".join(on_checkout["aliases"])
    cookie_manifest = json.loads(_manifest_cookie(checkout.set_cookies) or "{}")
    assert cookie_manifest == {
        "experiences": on_checkout["experiences"],
        "activeVariants": on_checkout["activeVariants"],
    }
    # Other paths are not filtered: every live experience is decided (the file's trusted_proxies applied too).
    assert len(everywhere["experiences"]) > 1
    assert home.json()["x-cs-personalize-variants"] == everywhere["variantParam"]
    assert home.json()["x-forwarded-for"] == f"{visitor.client_ip}, 127.0.0.1"


def test_environment_variable_sets_the_cda_variant_limit(
    node_origin: Service, launch: Launcher, visitors: VisitorCatalog, decide: Any, http: Http
) -> None:
    limited = launch.proxy(node_origin, *TRUSTED, env={"EDGEPROXY_CDA_VARIANT_LIMIT": "1"})
    visitor = visitors.us_iphone_bf
    headers = http.get(limited.url + visitor.target("/echo"), headers=visitor.headers()).json()["headers"]
    (manifest,) = decide([visitor.description(limited)])
    assert len(manifest["aliases"]) > 1
    assert headers["x-cs-variant-uid"] == manifest["aliases"][0]
    assert headers["x-cs-personalize-variants"] == manifest["variantParam"]
