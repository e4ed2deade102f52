"""The variant-aware response cache end to end: real `edgeproxy serve` processes in front of the Node example origin.

`GET /cacheable?cc=<Cache-Control>&tag=<surrogate key>` answers JSON `{variants, served, at}` with an ETag (304 on
If-None-Match); `GET /_origin/hits` counts the origin's requests per path, so every test measures the traffic that
actually reached the origin. Query strings here need no percent-encoding, so a purge names exactly the URL the
visitors requested. Each test uses its own `m=` marker: its keys are its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from support.raw_http import raw_exchange

from .conftest import (
    NODE_SERVER,
    ROOT,
    TRUSTED,
    Http,
    Launcher,
    Reply,
    Service,
    Visitor,
    VisitorCatalog,
    free_port,
    parse_set_cookie,
    require_tool,
)  # fmt: skip

pytestmark = pytest.mark.e2e

TOKEN = "purge-secret-7c1f"
HOMEPAGE_UID = "blt5d2a9c1e7f0b3a64"  # examples/origin/content.json: the homepage entry ("/")
PUBLISH_HOMEPAGE = {
    "module": "entry", "event": "publish",
    "data": {"entry": {"uid": HOMEPAGE_UID}, "content_type": {"uid": "homepage"}},
}  # fmt: skip


# -- helpers ------------------------------------------------------------------------------------------------------


def cacheable(cc: str, marker: str, **params: str) -> str:
    """A /cacheable URL whose query needs no percent-encoding (Cache-Control without spaces)."""
    assert " " not in cc
    extra = "".join(f"&{name}={value}" for name, value in params.items())
    return f"/cacheable?cc={cc}&m={marker}{extra}"


def hits(http: Http, origin: Service, path: str = "/cacheable") -> int:
    counts: dict[str, int] = http.get(origin.url + "/_origin/hits").json()
    return counts.get(path, 0)


def cache_status(http: Http, proxy: Service) -> dict[str, Any]:
    status: dict[str, Any] = http.get(proxy.url + "/_edgeproxy/status").json()["cache"]
    return status


def post_json(http: Http, url: str, body: Any, token: str | None = TOKEN) -> Reply:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http.request("POST", url, headers=headers, data=json.dumps(body))


def with_uid(visitor: Visitor, uid: str) -> Visitor:
    """The same browser with a known user uid (a new visitor would be bucketed on a fresh uid every time)."""
    cookies = tuple(c for c in visitor.cookies if c[0] != "cs-personalize-user-uid")
    return replace(visitor, name=f"{visitor.name}/{uid}", cookies=(*cookies, ("cs-personalize-user-uid", uid)))


def visit(visitor: Visitor, path_qs: str) -> str:
    """The request target: `path_qs` plus the visitor's own query (a campaign link, say)."""
    if not visitor.query:
        return path_qs
    return f"{path_qs}{'&' if '?' in path_qs else '?'}{visitor.query}"


def variant_params(decide: Any, proxy: Service, requests: list[tuple[Visitor, str]]) -> list[str]:
    """The variant param `edgeproxy decide` gives each (visitor, target): the oracle for what the page shows."""
    descriptions = [replace(v, query="").description(proxy, target) for v, target in requests]
    return [str(d["variantParam"]) for d in decide(descriptions)]


def page_variant_param(body: bytes) -> str:
    """The variant param the Node origin rendered this page for (its debug footer)."""
    found = re.search(rb'id="variant-param">(?:<code>)?([^<]*)', body)
    assert found, body[-2000:]
    return found.group(1).decode()


def page_user_uid(body: bytes) -> str:
    found = re.search(rb"user uid \(x-cs-personalize-user-uid\): <code>([^<]*)</code>", body)
    assert found, body[-2000:]
    return found.group(1).decode()


def cookie(reply: Reply, name: str) -> str | None:
    for header in reply.set_cookies:
        cookie_name, value, _ = parse_set_cookie(header)
        if cookie_name == name:
            return value
    return None


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def node_origin_with(launcher: Launcher, *args: str) -> Service:
    """The Node example origin with extra flags (e.g. --page-cache-control), started by `launcher`."""
    node = require_tool("node")
    port = free_port()
    service = Service(
        name=f"node origin :{port} {' '.join(args)}",
        argv=[node, str(NODE_SERVER.relative_to(ROOT)), "--host", "127.0.0.1", "--port", str(port), *args],
        port=port, log_path=launcher.tmp / f"node-origin-{port}.log", env=dict(os.environ),
    )  # fmt: skip
    launcher.services.append(service)
    service.start()
    service.wait_ready("/healthz")
    return service


def find_same_variant_set(decide: Any, proxy: Service, visitor: Visitor, path: str, prefix: str) -> Visitor:
    """Another user (another uid) of the same browser that lands in `visitor`'s variant set on `path`."""
    candidates = [with_uid(visitor, f"{prefix}-{i}") for i in range(200)]
    mine, *theirs = variant_params(decide, proxy, [(visitor, path)] + [(c, path) for c in candidates])
    for candidate, param in zip(candidates, theirs, strict=True):
        if param == mine:
            return candidate
    raise AssertionError(f"no uid among {len(candidates)} shares variant set {mine!r}")


def distinct_sets(decide: Any, proxy: Service, crowd: list[Visitor], target: str, want: int) -> list[Visitor]:
    """`want` visitors of `crowd` with pairwise different variant sets for `target`."""
    chosen: dict[str, Visitor] = {}
    for visitor, param in zip(crowd, variant_params(decide, proxy, [(v, target) for v in crowd]), strict=True):
        chosen.setdefault(param, visitor)
    assert len(chosen) >= want, f"only {len(chosen)} distinct variant sets among {len(crowd)} visitors"
    return list(chosen.values())[:want]


async def _concurrently(url: str, headers: dict[str, str], n: int) -> list[tuple[int, str, bytes]]:
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout, connector=connector) as s:

        async def one() -> tuple[int, str, bytes]:
            async with s.get(url, headers=headers) as r:
                return r.status, r.headers.get("X-Cache", ""), await r.read()

        return list(await asyncio.gather(*(one() for _ in range(n))))


def concurrently(url: str, headers: dict[str, str], n: int) -> list[tuple[int, str, bytes]]:
    return asyncio.run(_concurrently(url, headers, n))


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("e2e-cache"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def shop(cache_launcher: Launcher) -> Service:
    """The Node origin of this module (its hit counters are this module's alone)."""
    return cache_launcher.node_origin()


@pytest.fixture(scope="module")
def cached(cache_launcher: Launcher, shop: Service) -> Service:
    """The proxy with the cache on: a purge token, a 30 s default TTL, objects over 100 kB pass uncached."""
    return cache_launcher.proxy(shop, *TRUSTED, "--purge-token", TOKEN, "--cache-default-ttl", "30",
                                "--cache-max-object-bytes", "100000")  # fmt: skip


@pytest.fixture(scope="module")
def page_shop(cache_launcher: Launcher) -> Service:
    """The Node origin telling shared caches to keep its pages 5 minutes (pages carry Surrogate-Key)."""
    return node_origin_with(cache_launcher, "--page-cache-control", "public, s-maxage=300")


@pytest.fixture(scope="module")
def page_cached(cache_launcher: Launcher, page_shop: Service) -> Service:
    return cache_launcher.proxy(page_shop, *TRUSTED, "--purge-token", TOKEN)


@pytest.fixture(scope="module")
def crowd(visitors: VisitorCatalog) -> list[Visitor]:
    """The sample visitors, each with a known user uid."""
    return [with_uid(v, v.cookie_uid or f"cache-{v.name}") for v in visitors.all]


# -- hit ratio, X-Cache, Age ----------------------------------------------------------------------------------------


def test_hit_ratio_over_a_stream_of_visitors_of_few_variant_sets(
    launch: Launcher, shop: Service, visitors: VisitorCatalog, http: Http, decide: Any
) -> None:
    # Product pages decide two segmented experiences: many visitors, few variant sets.
    tags = ["section:product", "campaign:black-friday"]
    config = launch.tmp / "routes.toml"
    config.write_text(f'[[routes]]\npath = "/cacheable"\ntags = {json.dumps(tags)}\n')
    proxy = launch.proxy(shop, *TRUSTED, "--config", str(config))
    crowd = [with_uid(v, f"ratio-{v.name}-{i}") for i in range(6) for v in visitors.all]
    base = cacheable("public,s-maxage=300", "ratio")
    targets = {v.name: visit(v, base) for v in crowd}
    descriptions = [replace(v, query="").description(proxy, targets[v.name], tags=tags) for v in crowd]
    expected = {v.name: d["variantParam"] for v, d in zip(crowd, decide(descriptions), strict=True)}
    keys = {(targets[name], param) for name, param in expected.items()}
    stream = [crowd[(i * 5) % len(crowd)] for i in range(5 * len(crowd))]  # each visitor 5 times, interleaved
    assert len(keys) <= len(stream) / 10
    before = hits(http, shop)
    labels: Counter[str] = Counter()
    for visitor in stream:
        reply = http.get(proxy.url + targets[visitor.name], headers=visitor.headers())
        assert reply.status == 200
        assert reply.json()["variants"] == expected[visitor.name], visitor.name  # rendered for this visitor's set
        labels[reply.headers["X-Cache"]] += 1
    assert hits(http, shop) - before == len(keys)  # one origin request per (URL, variant set)
    assert labels == {"MISS": len(keys), "HIT": len(stream) - len(keys)}
    assert labels["HIT"] / len(stream) >= 0.9
    status = cache_status(http, proxy)
    assert status["results"]["hit"] == labels["HIT"] and status["store"]["entries"] == len(keys)


def test_hits_carry_x_cache_and_a_growing_age(cached: Service, shop: Service, crowd: list[Visitor], http: Http) -> None:
    target, headers = cacheable("public,max-age=300", "age"), crowd[0].headers()
    first = http.get(cached.url + target, headers=headers)
    assert first.headers["X-Cache"] == "MISS"
    again = http.get(cached.url + target, headers=headers)
    assert again.headers["X-Cache"] == "HIT" and again.body == first.body
    age = int(again.headers["Age"])
    assert 0 <= age <= 1  # the origin's Date has whole seconds
    time.sleep(2.1)
    later = http.get(cached.url + target, headers=headers)
    assert later.headers["X-Cache"] == "HIT" and int(later.headers["Age"]) >= age + 2
    assert later.headers["ETag"] == first.headers["ETag"] and later.headers["Cache-Control"] == "public,max-age=300"


def test_uncacheable_responses_reach_the_origin_every_time(
    cached: Service, shop: Service, crowd: list[Visitor], http: Http
) -> None:
    headers = crowd[0].headers()
    for cc in ("no-store", "private,max-age=300"):
        target = cacheable(cc, "uncacheable")
        before = hits(http, shop)
        labels = [http.get(cached.url + target, headers=headers).headers["X-Cache"] for _ in range(3)]
        assert labels == ["MISS"] * 3 and hits(http, shop) - before == 3, cc
    # An origin error is not stored either (even with the proxy's default TTL).
    failing = cacheable("public,max-age=300", "uncacheable", fail="1")
    before = hits(http, shop)
    assert [http.get(cached.url + failing, headers=headers).status for _ in range(2)] == [503, 503]
    assert hits(http, shop) - before == 2
    # A response setting a cookie belongs to one visitor: passed on, never stored (the default TTL would apply).
    before = hits(http, shop, "/set-cookie")
    for _ in range(2):
        reply = http.get(cached.url + "/set-cookie?m=uncacheable", headers=headers)
        assert reply.headers["X-Cache"] == "MISS" and cookie(reply, "origin_session") == "abc"
    assert hits(http, shop, "/set-cookie") - before == 2


def test_authorization_requests_are_cached_only_when_the_origin_says_public(
    cached: Service, shop: Service, crowd: list[Visitor], http: Http
) -> None:
    headers = {**crowd[0].headers(), "Authorization": "Bearer someone"}
    private = cacheable("max-age=300", "auth")
    assert [http.get(cached.url + private, headers=headers).headers["X-Cache"] for _ in range(2)] == ["MISS", "MISS"]
    public = cacheable("public,max-age=300", "auth")
    assert [http.get(cached.url + public, headers=headers).headers["X-Cache"] for _ in range(2)] == ["MISS", "HIT"]


# -- stale-while-revalidate ----------------------------------------------------------------------------------------


def test_stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background(
    cached: Service, shop: Service, crowd: list[Visitor], http: Http
) -> None:
    # max-age=2: the origin's Date has whole seconds, so a response may arrive up to a second old already.
    target, headers = cacheable("public,max-age=2,stale-while-revalidate=30", "swr"), crowd[0].headers()
    first = http.get(cached.url + target, headers=headers)
    assert first.headers["X-Cache"] == "MISS"
    primed = hits(http, shop)
    time.sleep(3.1)  # past max-age, well within stale-while-revalidate
    revalidated_before = cache_status(http, cached)["results"].get("background_revalidated", 0)
    replies = concurrently(cached.url + target, headers, 20)
    assert {status for status, _, _ in replies} == {200}
    assert {body for _, _, body in replies} == {first.body}  # the stale copy, served at once
    assert "STALE" in {label for _, label, _ in replies}
    assert {label for _, label, _ in replies} <= {"STALE", "HIT"}  # HIT: arrived after the refresh was stored
    wait_until(lambda: cache_status(http, cached)["results"].get("background_revalidated", 0) > revalidated_before,
               what="the background revalidation")  # fmt: skip
    assert hits(http, shop) - primed == 1  # one background request for twenty stale hits
    after = http.get(cached.url + target, headers=headers)
    assert after.headers["X-Cache"] == "HIT" and int(after.headers["Age"]) <= 1  # fresh again: the 304 refreshed it
    assert hits(http, shop) - primed == 1


def test_stale_while_revalidate_page_is_replaced_by_the_refreshed_content(
    launch: Launcher, crowd: list[Visitor], http: Http, decide: Any
) -> None:
    origin = node_origin_with(launch, "--page-cache-control", "public, max-age=2, stale-while-revalidate=30")
    proxy = launch.proxy(origin, *TRUSTED)
    alice = crowd[0]
    bob = find_same_variant_set(decide, proxy, alice, "/", "swr-bob")
    first = http.get(proxy.url + "/", headers=alice.headers())
    assert first.headers["X-Cache"] == "MISS" and page_user_uid(first.body) == alice.cookie_uid
    time.sleep(3.1)
    stale = http.get(proxy.url + "/", headers=bob.headers())
    assert stale.headers["X-Cache"] == "STALE" and stale.body == first.body
    # The background refresh went to the origin with bob's request: the new page names him (the footer shows
    # the user uid the origin received).
    wait_until(lambda: cache_status(http, proxy)["results"].get("background_refreshed", 0) == 1,
               what="the background refresh")  # fmt: skip
    refreshed = http.get(proxy.url + "/", headers=alice.headers())
    assert refreshed.headers["X-Cache"] == "HIT" and int(refreshed.headers["Age"]) <= 1
    assert page_user_uid(refreshed.body) == bob.cookie_uid  # new content
    assert page_variant_param(refreshed.body) == page_variant_param(first.body)  # for the same variant set
    assert cookie(refreshed, "cs-personalize-user-uid") == alice.cookie_uid
    assert hits(http, origin, "/") == 2


# -- stale-if-error ------------------------------------------------------------------------------------------------


def test_stale_if_error_serves_the_stale_copy_while_the_origin_is_stopped(
    launch: Launcher, crowd: list[Visitor], http: Http
) -> None:
    origin = launch.node_origin()
    proxy = launch.proxy(origin, *TRUSTED, "--connect-timeout", "2")
    headers = crowd[0].headers()
    tolerant = cacheable("public,max-age=2,stale-if-error=60", "sie")
    brief = cacheable("public,max-age=2,stale-if-error=1", "sie")
    strict = cacheable("public,max-age=2,stale-if-error=60,must-revalidate", "sie")
    primed = {t: http.get(proxy.url + t, headers=headers) for t in (tolerant, brief, strict)}
    assert {r.headers["X-Cache"] for r in primed.values()} == {"MISS"}

    origin.stop()
    time.sleep(3.1)  # every entry is stale; `brief` is past its stale-if-error window too
    stale = http.get(proxy.url + tolerant, headers=headers)
    assert (stale.status, stale.headers["X-Cache"], stale.body) == (200, "STALE", primed[tolerant].body)
    assert int(stale.headers["Age"]) >= 3
    assert http.get(proxy.url + brief, headers=headers).status == 502
    assert http.get(proxy.url + strict, headers=headers).status == 502  # must-revalidate: never stale
    assert http.get(proxy.url + cacheable("public,max-age=60", "sie-never-cached"), headers=headers).status == 502

    launch.restart(origin, "/healthz")
    back = http.get(proxy.url + tolerant, headers=headers)
    assert back.status == 200 and back.body == primed[tolerant].body
    assert back.headers["X-Cache"] == "REVALIDATED"  # a conditional request, answered 304 by the origin
    assert hits(http, origin) == 1  # the restarted origin counts from zero


def test_stale_if_error_serves_the_stale_copy_when_the_origin_answers_5xx(
    launch: Launcher, crowd: list[Visitor], http: Http
) -> None:
    # The origin answering 5xx for the very URL that was cached: a cache-less edgeproxy between the cache and the
    # Node origin turns the stopped origin into real HTTP 502 responses.
    origin = launch.node_origin()
    middle = launch.proxy(origin, *TRUSTED, "--no-cache", "--skip-paths", "/cacheable")  # no cookies of its own
    proxy = launch.proxy(middle, *TRUSTED)
    headers = crowd[0].headers()
    tolerant = cacheable("public,max-age=2,stale-if-error=60", "sie5xx")
    strict = cacheable("public,max-age=2,stale-if-error=60,must-revalidate", "sie5xx")
    primed = {t: http.get(proxy.url + t, headers=headers) for t in (tolerant, strict)}
    assert [http.get(proxy.url + t, headers=headers).headers["X-Cache"] for t in primed] == ["HIT", "HIT"]
    origin.stop()
    time.sleep(3.1)
    assert http.get(middle.url + tolerant, headers=headers).status == 502  # what the cache now gets
    stale = http.get(proxy.url + tolerant, headers=headers)
    assert (stale.status, stale.headers["X-Cache"], stale.body) == (200, "STALE", primed[tolerant].body)
    assert http.get(proxy.url + strict, headers=headers).status == 502


# -- coalescing ---------------------------------------------------------------------------------------------------


def test_100_concurrent_misses_for_one_key_make_one_origin_request(
    cached: Service, shop: Service, crowd: list[Visitor], http: Http
) -> None:
    headers = crowd[0].headers()
    # A slow origin (cached through the default TTL): all hundred requests arrive while the first is in flight.
    before, coalesced = hits(http, shop, "/slow"), cache_status(http, cached)["results"].get("coalesced", 0)
    replies = concurrently(cached.url + "/slow?ms=400&m=coalesce", headers, 100)
    assert {(status, body) for status, _, body in replies} == {(200, b"waited 400 ms\n")}
    assert hits(http, shop, "/slow") - before == 1
    assert Counter(label for _, label, _ in replies) == {"MISS": 1, "HIT": 99}
    assert cache_status(http, cached)["results"]["coalesced"] - coalesced == 99
    # And the fast /cacheable: whatever overlaps, one origin request.
    before = hits(http, shop)
    replies = concurrently(cached.url + cacheable("public,s-maxage=300", "coalesce"), headers, 100)
    assert len({body for _, _, body in replies}) == 1 and {s for s, _, _ in replies} == {200}
    assert hits(http, shop) - before == 1


# -- purge ----------------------------------------------------------------------------------------------------------


def test_purge_by_url_drops_every_variant_of_that_url_only(
    cached: Service, shop: Service, crowd: list[Visitor], http: Http, decide: Any
) -> None:
    target, other = cacheable("public,s-maxage=300", "purge-url"), cacheable("public,s-maxage=300", "purge-url-other")
    two = distinct_sets(decide, cached, [v for v in crowd if not v.query], target, 2)
    for visitor in two:
        for url in (target, other):
            http.get(cached.url + url, headers=visitor.headers())
            assert http.get(cached.url + url, headers=visitor.headers()).headers["X-Cache"] == "HIT"
    purged = post_json(http, cached.url + "/_edgeproxy/purge", {"urls": [target]})
    assert purged.status == 200 and purged.json()["purged"] == 2  # both variant sets
    for visitor in two:
        assert http.get(cached.url + target, headers=visitor.headers()).headers["X-Cache"] == "MISS"
        assert http.get(cached.url + other, headers=visitor.headers()).headers["X-Cache"] == "HIT"
    # An absolute URL names the same entries.
    assert post_json(http, cached.url + "/_edgeproxy/purge", {"urls": [cached.url + target]}).json()["purged"] == 2


def test_purge_by_prefix(cached: Service, shop: Service, crowd: list[Visitor], http: Http) -> None:
    headers = crowd[0].headers()
    pages = ["/products/storm-shell-jacket", "/products/alpine-down-jacket", "/cart"]  # cached by the default TTL
    for page in pages:
        http.get(cached.url + page, headers=headers)
        assert http.get(cached.url + page, headers=headers).headers["X-Cache"] == "HIT"
    purged = post_json(http, cached.url + "/_edgeproxy/purge", {"prefixes": ["/products/"]})
    assert purged.status == 200 and purged.json()["purged"] == 2
    labels = [http.get(cached.url + page, headers=headers).headers["X-Cache"] for page in pages]
    assert labels == ["MISS", "MISS", "HIT"]


def test_purge_by_surrogate_key(cached: Service, shop: Service, crowd: list[Visitor], http: Http) -> None:
    headers = crowd[0].headers()
    tagged = [cacheable("public,s-maxage=300", f"purge-tag-{i}", tag=tag) for i, tag in enumerate("aab")]
    for url in tagged:
        first = http.get(cached.url + url, headers=headers)
        assert "Surrogate-Key" not in first.headers  # for caches, not for browsers
        assert http.get(cached.url + url, headers=headers).headers["X-Cache"] == "HIT"
    purged = post_json(http, cached.url + "/_edgeproxy/purge", {"tags": ["a"]})
    assert purged.status == 200 and purged.json()["purged"] == 2
    assert [http.get(cached.url + url, headers=headers).headers["X-Cache"] for url in tagged] == ["MISS", "MISS", "HIT"]


@pytest.mark.parametrize("token", [None, "wrong-token"], ids=["no token", "wrong token"])
def test_purge_and_webhook_need_the_token(cached: Service, crowd: list[Visitor], http: Http, token: str | None) -> None:
    target, headers = cacheable("public,s-maxage=300", "purge-token", tag="guarded"), crowd[0].headers()
    http.get(cached.url + target, headers=headers)
    assert post_json(http, cached.url + "/_edgeproxy/purge", {"tags": ["guarded"]}, token=token).status == 401
    webhook = {"module": "entry", "event": "publish", "data": {"entry": {"uid": "guarded"}}}
    assert post_json(http, cached.url + "/_edgeproxy/webhooks/contentstack", webhook, token=token).status == 401
    assert http.get(cached.url + "/_edgeproxy/purge", headers={"Authorization": f"Bearer {TOKEN}"}).status == 405
    assert http.get(cached.url + target, headers=headers).headers["X-Cache"] == "HIT"


def test_contentstack_publish_webhook_purges_the_pages_tagged_with_the_entry(
    page_cached: Service, page_shop: Service, crowd: list[Visitor], http: Http, decide: Any
) -> None:
    product = "/products/storm-shell-jacket"
    two = distinct_sets(decide, page_cached, [v for v in crowd if not v.query], "/", 2)
    for visitor in two:
        for page in ("/", product):
            first = http.get(page_cached.url + page, headers=visitor.headers())
            assert "Surrogate-Key" not in first.headers
            assert http.get(page_cached.url + page, headers=visitor.headers()).headers["X-Cache"] == "HIT"
    before = hits(http, page_shop, "/")
    reply = post_json(http, page_cached.url + "/_edgeproxy/webhooks/contentstack", PUBLISH_HOMEPAGE)
    assert reply.status == 200
    assert reply.json()["purged"] == 2 and reply.json()["tags"] == [HOMEPAGE_UID]  # the homepage, both variant sets
    for visitor in two:
        home = http.get(page_cached.url + "/", headers=visitor.headers())
        assert home.headers["X-Cache"] == "MISS" and HOMEPAGE_UID.encode() in home.body
        assert http.get(page_cached.url + product, headers=visitor.headers()).headers["X-Cache"] == "HIT"
    assert hits(http, page_shop, "/") - before == 2
    # A content type change purges every page of that type.
    changed = {"module": "content_type", "event": "update", "data": {"content_type": {"uid": "product"}}}
    reply = post_json(http, page_cached.url + "/_edgeproxy/webhooks/contentstack", changed)
    assert reply.status == 200 and reply.json()["purged"] >= 2
    assert http.get(page_cached.url + product, headers=two[0].headers()).headers["X-Cache"] == "MISS"


def test_personalized_html_hit_still_carries_the_visitors_own_cookies_and_no_store(
    page_cached: Service, crowd: list[Visitor], http: Http, decide: Any
) -> None:
    alice = crowd[0]
    bob = find_same_variant_set(decide, page_cached, alice, "/", "html-bob")
    http.get(page_cached.url + "/", headers=alice.headers())
    reply = http.get(page_cached.url + "/", headers=bob.headers())
    assert reply.headers["X-Cache"] == "HIT"
    assert reply.headers.getall("Cache-Control") == ["no-store"]  # the origin's public, s-maxage=300 is for us
    assert "Surrogate-Key" not in reply.headers and "Surrogate-Control" not in reply.headers
    assert cookie(reply, "cs-personalize-user-uid") == bob.cookie_uid
    (decided,) = decide([bob.description(page_cached, "/")])
    manifest = json.loads(cookie(reply, "cs-personalize-manifest") or "null")
    assert manifest == {"experiences": decided["experiences"], "activeVariants": decided["activeVariants"]}
    assert page_variant_param(reply.body) == decided["variantParam"]


# -- object size limit, status ---------------------------------------------------------------------------------------


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_responses_over_the_object_limit_pass_uncached(
    cached: Service, shop: Service, crowd: list[Visitor], http: Http, chunked: bool
) -> None:
    headers, flag = crowd[0].headers(), "&chunked=1" if chunked else ""
    not_stored = cache_status(http, cached)["notStored"].get("too large", 0)
    small, big = f"/download?bytes=60000{flag}&m=limit", f"/download?bytes=250000{flag}&m=limit"
    before = hits(http, shop, "/download")
    replies = [http.get(cached.url + url, headers=headers) for url in (small, small, big, big)]
    assert [r.headers["X-Cache"] for r in replies] == ["MISS", "HIT", "MISS", "MISS"]
    assert [r.body == pattern(n) for r, n in zip(replies, (60000, 60000, 250000, 250000), strict=True)] == [True] * 4
    assert hits(http, shop, "/download") - before == 3
    # The first big response is too large to store; its key then passes straight to the origin for a while
    # (hit-for-pass), so the second one is not even offered to the cache.
    assert cache_status(http, cached)["notStored"]["too large"] - not_stored == 1


def test_status_shows_cache_counters_and_variant_keys_per_path(
    launch: Launcher, shop: Service, crowd: list[Visitor], http: Http, decide: Any
) -> None:
    proxy = launch.proxy(shop, *TRUSTED)
    target = cacheable("public,s-maxage=300", "status")
    three = distinct_sets(decide, proxy, [v for v in crowd if not v.query], target, 3)
    for visitor in three:
        for _ in range(2):
            http.get(proxy.url + target, headers=visitor.headers())
    status = cache_status(http, proxy)
    assert status["results"]["miss"] == 3 and status["results"]["hit"] == 3
    assert status["store"]["entries"] == 3 and status["store"]["bytes"] > 0
    assert {"path": target, "keys": 3} in status["store"]["variantKeysPerPath"]


# -- prebuilt hits ------------------------------------------------------------------------------------------------


def test_prebuilt_hits_send_what_the_general_response_path_sends(cached: Service, crowd: list[Visitor]) -> None:
    """Plain HTTP/1.1 GET hits are written from a prebuilt head (prebuilt.py); HEAD, HTTP/1.0 and conditional
    requests take aiohttp's response path. Both must send the same status, headers and body, and pipelined hits
    on one keep-alive connection must come back whole and in order."""
    visitor = crowd[0]
    target = cacheable("public,max-age=300", "prebuilt")
    cookie = "; ".join(f"{k}={v}" for k, v in visitor.cookies)
    host = f"127.0.0.1:{cached.port}"
    common = f"Host: {host}\r\nUser-Agent: {visitor.user_agent}\r\nCookie: {cookie}\r\n"
    (miss,) = raw_exchange(cached.port, f"GET {target} HTTP/1.1\r\n{common}\r\n".encode(), 1)
    assert miss[1]["x-cache"] == ["MISS"]
    get = f"GET {target} HTTP/1.1\r\n{common}\r\n".encode()
    pipelined = raw_exchange(cached.port, get * 5, 5)
    (http10,) = raw_exchange(cached.port, f"GET {target} HTTP/1.0\r\n{common}\r\n".encode(), 1)
    (head,) = raw_exchange(cached.port, f"HEAD {target} HTTP/1.1\r\n{common}\r\n".encode(), 1)
    (other_etag,) = raw_exchange(
        cached.port, f'GET {target} HTTP/1.1\r\n{common}If-None-Match: "x"\r\n\r\n'.encode(), 1
    )

    def comparable(headers: dict[str, list[str]]) -> dict[str, list[str]]:
        return {name: values for name, values in headers.items() if name not in ("date", "age", "connection")}

    status, headers, body = pipelined[0]
    assert status == "HTTP/1.1 200 OK" and headers["x-cache"] == ["HIT"] and body == miss[2]
    assert len(headers["set-cookie"]) == 2 and int(headers["content-length"][0]) == len(body)
    for other_status, other_headers, other_body in [*pipelined[1:], http10, other_etag]:
        assert other_status.split(" ", 1)[1] == "200 OK" and other_body == body
        assert comparable(other_headers) == comparable(headers)
    assert comparable(head[1]) == comparable(headers) and head[2] == b""
    assert all(int(h["age"][0]) >= 0 and h["date"] for _, h, _ in [*pipelined, http10, head])
