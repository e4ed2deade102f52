"""Hit ratio on real traffic, in-process, for the memory and the Redis store alike: tracking parameters left out of
the cache key (and the query optionally sorted) while the origin gets the URL as sent; soft purges that serve the
purged entry STALE while one request refreshes it; Vary variants of one URL kept side by side (bounded); cache
results per route and variant sets per URL in the metrics.

The proxy, its clock and an aiohttp origin are test_cache_properties.py's harness; the Redis cases use a real
redis-server (emptied before each case).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from support.processes import node_origin, redis_server
from support.proxy_server import proxy_server
from support.raw_http import raw_exchange
from test_cache_properties import UA_IPHONE, VISITOR, Harness, Policy, Reply, Visitor, fetch

from edgeproxy.cache import store as cache_store
from edgeproxy.cache.keys import CacheQuery, request_variant_key, variant_key
from edgeproxy.cache.layer import ResponseCache
from edgeproxy.cache.policy import soft_purged
from edgeproxy.cache.store import CachedResponse, RedisCacheStore
from edgeproxy.http.aiohttp_internals import HitLaneServer
from edgeproxy.http.dataplane import DataPlaneServer
from edgeproxy.runtime.config import DEFAULT_CACHE_IGNORED_QUERY_PARAMS, ConfigError, ProxyConfig, RouteRule, validate
from edgeproxy.runtime.serve import make_state

PURGE_TOKEN = "purge-token"  # the harness's
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-hit-ratio")) as url:
        yield url


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("cache-hit-ratio"))
    yield h
    h.close()


Reset = Callable[..., ProxyConfig]


@pytest.fixture(params=["memory", "redis"])
def reset(request: pytest.FixtureRequest, harness: Harness, redis_url: str) -> Reset:
    """`reset(**settings)`: an empty cache in this store, the origin and the clock as new, these settings."""
    store = "memory" if request.param == "memory" else redis_url

    def fresh(**settings: Any) -> ProxyConfig:
        if store != "memory":
            client = redis.Redis.from_url(store)
            client.flushdb()
            client.close()
        return harness.reset(cache_store=store, **settings)

    return fresh


def purge(harness: Harness, body: Any, path: str = "/_edgeproxy/purge") -> tuple[int, Any]:
    async def post() -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {PURGE_TOKEN}", "Content-Type": "application/json"}
        async with harness.session.post(harness.base + path, data=json.dumps(body), headers=headers) as r:
            return r.status, await r.json()

    result: tuple[int, Any] = harness.run(post())
    return result


def origin_targets(harness: Harness) -> list[str]:
    return sorted(path_qs for path_qs, _, _ in harness.origin.requests)


def stale_then_refreshed(harness: Harness, target: str = "/t") -> tuple[Reply, Reply]:
    """The first request after a soft purge (answered at once, refreshing in the background) and the next one."""
    background = harness.background_done()
    stale = fetch(harness, target)
    harness.run(harness.settle(background))
    return stale, fetch(harness, target)


# -- cache key normalisation -----------------------------------------------------------------------------------


def test_tracking_parameters_are_left_out_of_the_key_and_the_origin_gets_the_url_as_sent(
    harness: Harness, reset: Reset
) -> None:
    reset()
    first = fetch(harness, "/n?utm_source=mail&x=1&gclid=Cj0KCQ")
    assert first.x_cache == "MISS"
    assert first.json()["path"] == "/n?utm_source=mail&x=1&gclid=Cj0KCQ"  # as sent, parameters and order
    for target in ("/n?x=1", "/n?x=1&fbclid=IwAR2&utm_medium=cpc", "/n?msclkid=5&x=1&utm_id=9&_gl=1*abc",
                   "/n?x=1&utm%5Fterm=shoes"):  # fmt: skip
        again = fetch(harness, target)
        assert (again.x_cache, again.body) == ("HIT", first.body), target
    assert fetch(harness, "/n?x=2&gclid=other").x_cache == "MISS"  # the parameters that count still do
    assert origin_targets(harness) == ["/n?utm_source=mail&x=1&gclid=Cj0KCQ", "/n?x=2&gclid=other"]


def test_a_decision_that_reads_a_campaign_parameter_is_in_the_key_as_its_variant_set(
    harness: Harness, reset: Reset
) -> None:
    # The example rules put utm_campaign=bf visitors in the Black Friday audience: dropping the parameter from
    # the key never serves them the page of visitors without it, because their variant set differs.
    reset()
    plain = fetch(harness, "/bf?x=1")
    campaign = fetch(harness, "/bf?x=1&utm_campaign=bf")
    assert (plain.x_cache, campaign.x_cache) == ("MISS", "MISS")
    assert campaign.json()["variants"] != plain.json()["variants"]
    assert campaign.json()["variants"] == harness.decide(replace(VISITOR, query="x=1&utm_campaign=bf"), "/bf", None,
                                                         None).variant_param  # fmt: skip
    again = fetch(harness, "/bf?utm_campaign=bf&x=1&gclid=7")
    assert (again.x_cache, again.body) == ("HIT", campaign.body)


def test_sorting_the_query_is_a_setting(harness: Harness, reset: Reset) -> None:
    reset()
    assert [fetch(harness, t).x_cache for t in ("/s?b=2&a=1", "/s?a=1&b=2")] == ["MISS", "MISS"]  # default: off
    reset(cache_sort_query=True)
    first = fetch(harness, "/s?b=2&a=1&utm_source=x")
    assert first.x_cache == "MISS"
    assert [fetch(harness, t).x_cache for t in ("/s?a=1&b=2", "/s?b=2&gclid=1&a=1")] == ["HIT", "HIT"]
    # Repeated names keep their order (a list to many applications): a=0&a=1 is not a=1&a=0.
    repeated = ("/s?a=0&a=1", "/s?a=1&a=0", "/s?a=0&utm_source=z&a=1")
    assert [fetch(harness, t).x_cache for t in repeated] == ["MISS", "MISS", "HIT"]
    assert origin_targets(harness) == ["/s?a=0&a=1", "/s?a=1&a=0", "/s?b=2&a=1&utm_source=x"]


def test_the_ignored_parameters_are_configurable_with_prefix_patterns(harness: Harness, reset: Reset) -> None:
    reset(cache_ignored_query_params=("ref", "session_*"))
    assert fetch(harness, "/c?ref=home&session_id=1&q=1&session_=2").x_cache == "MISS"
    assert fetch(harness, "/c?q=1").x_cache == "HIT"
    assert fetch(harness, "/c?q=1&utm_source=x").x_cache == "MISS"  # not in this list: a key of its own
    reset(cache_ignored_query_params=())
    assert [fetch(harness, t).x_cache for t in ("/e?gclid=1", "/e?gclid=2", "/e?gclid=1")] == ["MISS", "MISS", "HIT"]


def test_a_purge_names_a_url_as_the_key_holds_it(harness: Harness, reset: Reset) -> None:
    reset()
    assert fetch(harness, "/p?x=1&utm_source=a").x_cache == "MISS"
    assert purge(harness, {"urls": ["/p?x=1&gclid=b"]}) == (
        200, {"purged": 1, "soft": False, "urls": ["/p?x=1&gclid=b"], "prefixes": [], "tags": []}
    )  # fmt: skip
    assert fetch(harness, "/p?x=1").x_cache == "MISS"


CACHE_QUERY_CASES = [
    ("no query", (), False, "/a", "/a"),
    ("nothing to leave out", DEFAULT_CACHE_IGNORED_QUERY_PARAMS, False, "/a?b=1&c=2", "/a?b=1&c=2"),
    ("only tracking parameters", DEFAULT_CACHE_IGNORED_QUERY_PARAMS, False, "/a?utm_source=x&gclid=y", "/a"),
    ("prefix pattern", ("utm_*",), False, "/a?utm_=1&utm_x=2&utmx=3", "/a?utmx=3"),
    ("names compared decoded", ("utm_*", "a b"), False, "/a?utm%5Fsource=1&a+b=2&a%20b=3&k=%75", "/a?k=%75"),
    ("empty parameters dropped", ("gclid",), False, "/a?&x=1&&gclid=2&", "/a?x=1"),
    ("sorted stably by name", (), True, "/a?b=2&a=2&c&a=1", "/a?a=2&a=1&b=2&c"),
    ("a bare * leaves the whole query out", ("*",), False, "/a?x=1&y=2", "/a"),
    ("values are kept byte for byte", ("gclid",), True, "/a?q=%C3%A9+x&gclid=1", "/a?q=%C3%A9+x"),
]  # fmt: skip


@pytest.mark.parametrize(("ignored", "sort", "target", "keyed"), [c[1:] for c in CACHE_QUERY_CASES],
                         ids=[c[0] for c in CACHE_QUERY_CASES])  # fmt: skip
def test_cache_query_target(ignored: tuple[str, ...], sort: bool, target: str, keyed: str) -> None:
    assert CacheQuery(ignored, sort=sort).target(target) == keyed


@pytest.mark.parametrize(("pattern", "problem"), [("utm_*x", "only at its end"), ("a=b", "not a parameter name"),
                                                  ("a%5F", "not a parameter name")])  # fmt: skip
def test_an_ignored_parameter_pattern_is_checked(pattern: str, problem: str) -> None:
    config = ProxyConfig(origin="http://127.0.0.1:1", rules="rules", cache_ignored_query_params=(pattern,))
    with pytest.raises(ConfigError, match=problem) as raised:
        validate(config)
    assert "cache_ignored_query_params" in str(raised.value)


# -- Vary: variants side by side -------------------------------------------------------------------------------


def speaking(language: str) -> Visitor:
    return replace(VISITOR, language=language)


def test_vary_variants_of_one_url_are_kept_side_by_side(harness: Harness, reset: Reset) -> None:
    reset()
    harness.origin.default = Policy(cache_control="public, s-maxage=300", vary="Accept-Language")
    seen = []
    for language in ("en", "de", "en", "de", "fr", "en", "fr"):
        reply = fetch(harness, visitor=speaking(language))
        assert reply.json()["language"] == language
        seen.append(reply.x_cache)
    assert seen == ["MISS", "MISS", "HIT", "HIT", "MISS", "HIT", "HIT"]
    assert harness.origin.count() == 3
    # A purge of the URL takes every variant.
    assert purge(harness, {"urls": ["/t"]})[1]["purged"] == 3
    assert [fetch(harness, visitor=speaking(lang)).x_cache for lang in ("en", "de")] == ["MISS", "MISS"]


def test_vary_variants_per_url_are_bounded_the_least_recently_stored_dropped_first(
    harness: Harness, reset: Reset
) -> None:
    reset()
    harness.origin.default = Policy(cache_control="public, s-maxage=300", vary="Accept-Language")
    limit = cache_store.MAX_VARIANTS
    languages = [f"l{i}" for i in range(limit + 2)]
    assert {fetch(harness, visitor=speaking(lang)).x_cache for lang in languages} == {"MISS"}
    assert [fetch(harness, visitor=speaking(lang)).x_cache for lang in languages[2:]] == ["HIT"] * limit
    assert fetch(harness, visitor=speaking(languages[1])).x_cache == "MISS"  # dropped; stored again, dropping l2
    assert fetch(harness, visitor=speaking(languages[2])).x_cache == "MISS"
    assert fetch(harness, visitor=speaking(languages[-1])).x_cache == "HIT"


def test_concurrent_misses_of_a_varying_url_coalesce_per_variant(harness: Harness, reset: Reset) -> None:
    # Once the URL is known to vary, misses wait only for a request of their own variant: every language is
    # fetched once, in parallel, and stored.
    reset()
    harness.origin.default = Policy(cache_control="public, s-maxage=300", vary="Accept-Language", delay=0.2)
    assert fetch(harness, visitor=speaking("en")).x_cache == "MISS"
    languages = ["de", "fr", "de", "fr", "es", "es"]
    replies = harness.run(harness.get_all([("/t", speaking(lang).headers()) for lang in languages]))
    assert [r.json()["language"] for r in replies] == languages
    assert sorted(r.x_cache for r in replies) == ["HIT"] * 3 + ["MISS"] * 3  # one miss per language, shared
    assert harness.origin.count() == 4
    assert [fetch(harness, visitor=speaking(lang)).x_cache for lang in ("en", "de", "fr", "es")] == ["HIT"] * 4


def test_a_response_without_vary_replaces_the_variants_and_the_other_way_round(harness: Harness, reset: Reset) -> None:
    reset()
    harness.origin.default = Policy(cache_control="public, max-age=2", vary="Accept-Language")
    assert [fetch(harness, visitor=speaking(lang)).x_cache for lang in ("en", "de")] == ["MISS", "MISS"]
    harness.clock.now += 3
    harness.origin.default = Policy(cache_control="public, max-age=2")  # the origin stopped varying
    assert fetch(harness, visitor=speaking("en")).x_cache == "MISS"
    shared = fetch(harness, visitor=speaking("de"))
    assert (shared.x_cache, shared.json()["language"]) == ("HIT", "en")  # one response for every language now
    harness.clock.now += 3
    harness.origin.default = Policy(cache_control="public, max-age=2", vary="Accept-Language")  # ...and varies again
    assert fetch(harness, visitor=speaking("en")).x_cache == "MISS"
    own = fetch(harness, visitor=speaking("de"))
    assert (own.x_cache, own.json()["language"]) == ("MISS", "de")
    assert [fetch(harness, visitor=speaking(lang)).x_cache for lang in ("en", "de")] == ["HIT", "HIT"]


def test_a_vary_on_a_header_the_proxy_sets_selects_by_the_upstream_request(harness: Harness, reset: Reset) -> None:
    # x-cs-personalize-variants is the proxy's (upstream): its variants are found by the upstream headers, on the
    # full exchange, never by what the visitor sent.
    reset()
    harness.origin.default = Policy(cache_control="public, s-maxage=300", vary="x-cs-personalize-variants")
    first = fetch(harness)
    assert first.x_cache == "MISS"
    again = fetch(harness, **{"x-cs-personalize-variants": "forged"})
    assert (again.x_cache, again.body) == ("HIT", first.body)


def test_the_hit_lane_answers_urls_with_tracking_parameters_and_vary_variants(tmp_path: Path) -> None:
    """With the memory store, fresh hits are answered as they are parsed (the hit lane): those of a URL with
    tracking parameters and those of a Vary variant too, the same bytes as the general path would send."""

    def request(target: str, language: str) -> bytes:
        return (f"GET {target} HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: {UA_IPHONE}\r\nAccept-Language: "
                f"{language}\r\nCookie: cs-personalize-user-uid=lane-1\r\n\r\n").encode()  # fmt: skip

    async def scenario(origin: str) -> None:
        config = ProxyConfig(origin=origin, rules=str(ROOT / "rules"), state=f"sqlite:///{tmp_path}/lane.sqlite3")
        async with proxy_server(make_state(config)) as server:
            lane = server.proxy
            assert isinstance(lane, HitLaneServer | DataPlaneServer)
            base = "/cacheable?cc=public,%20s-maxage=600&vary=Accept-Language"
            stored = {}
            for language in ("en", "de"):
                ((_, headers, body),) = await asyncio.to_thread(
                    raw_exchange, server.port, request(f"{base}&utm_source=a", language), 1
                )
                assert headers["x-cache"] == ["MISS"] and json.loads(body)["language"] == language
                stored[language] = body
            before = lane.answered
            for target, language in ((base, "en"), (f"{base}&gclid=x", "de"), (f"{base}&fbclid=y", "en")):
                ((_, headers, body),) = await asyncio.to_thread(raw_exchange, server.port, request(target, language), 1)
                assert (headers["x-cache"], body) == (["HIT"], stored[language]), (target, language)
            assert lane.answered - before == 3

    with node_origin() as origin:
        asyncio.run(scenario(origin))


def test_the_memory_store_keeps_its_vary_bookkeeping_through_evictions_and_purges() -> None:
    async def scenario() -> None:
        size = varied("en", "/v").size
        store = cache_store.MemoryCacheStore(max_bytes=3 * size, clock=lambda: 1000.0)
        for language in ("en", "de", "fr"):
            await store.put("K", varied(language, "/v"))
        found = store.get_now("K")
        assert isinstance(found, cache_store.Varies) and found.names == ("accept-language",)
        assert found.variants == [variant_key("K", [("accept-language", lang)]) for lang in ("en", "de", "fr")]
        await store.put("P", entry(300))  # over the byte bound: the least recently used variant goes
        assert found.variants == [variant_key("K", [("accept-language", lang)]) for lang in ("de", "fr")]
        assert store.get_now(variant_key("K", [("accept-language", "en")])) is None
        assert (await store.stats())["varyingUrls"] == 1 and store.bytes == 3 * size
        assert await store.purge(paths=["/v"], prefixes=[], tags=[]) == 2
        assert store.get_now("K") is None and (await store.stats())["varyingUrls"] == 0 and store.bytes == size

    asyncio.run(scenario())


def varied(language: str, path: str) -> CachedResponse:
    return replace(entry(300), path=path, vary=(("accept-language", language),))


def test_variant_keys() -> None:
    assert variant_key("K", [("accept-language", "de"), ("x", "")]) == "K\naccept-language:de\nx:"
    values = {"accept-language": "de", "x": ""}
    assert request_variant_key("K", ("accept-language", "x"), values.get) == variant_key("K", values.items())
    assert request_variant_key("K", ("accept-language", "rewritten"), values.get) is None


# -- soft purge ------------------------------------------------------------------------------------------------


def test_a_soft_purge_serves_the_purged_entry_stale_while_one_request_refreshes_it(
    harness: Harness, reset: Reset
) -> None:
    reset()
    harness.origin.default = Policy(cache_control="public, s-maxage=300", etag=True)
    assert fetch(harness).x_cache == "MISS"
    harness.clock.now += 10
    harness.origin.version = 1  # published: the origin's page changed
    assert purge(harness, {"urls": ["/t"], "soft": True}) == (
        200, {"purged": 1, "soft": True, "urls": ["/t"], "prefixes": [], "tags": []}
    )  # fmt: skip
    stale, refreshed = stale_then_refreshed(harness)
    assert (stale.x_cache, stale.json()["version"]) == ("STALE", 0)
    assert (refreshed.x_cache, refreshed.json()["version"], refreshed.headers["Age"]) == ("HIT", 1, "0")
    assert harness.origin.count() == 2  # the first fetch and the one refresh


def test_many_requests_after_a_soft_purge_make_one_origin_request(harness: Harness, reset: Reset) -> None:
    reset()
    harness.origin.default = Policy(cache_control="public, s-maxage=300", delay=0.05)
    fetch(harness)
    harness.origin.version = 1
    assert purge(harness, {"urls": ["/t"], "soft": True})[1]["purged"] == 1
    background = harness.background_done()
    replies = harness.run(harness.get_all([("/t", VISITOR.headers())] * 10))
    assert {r.x_cache for r in replies} == {"STALE"} and {r.json()["version"] for r in replies} == {0}
    harness.run(harness.settle(background))
    assert harness.origin.count() == 2
    assert (fetch(harness).x_cache, fetch(harness).json()["version"]) == ("HIT", 1)


def test_after_the_grace_a_soft_purged_entry_is_revalidated(harness: Harness, reset: Reset) -> None:
    reset(cache_soft_purge_grace=30)
    harness.origin.default = Policy(cache_control="public, s-maxage=300", etag=True)
    fetch(harness)
    assert purge(harness, {"tags": [], "urls": ["/t"], "soft": True})[1]["purged"] == 1
    harness.clock.now += 31  # nobody asked within the grace: the entry is not served as it is any more
    revalidated = fetch(harness)
    assert (revalidated.x_cache, revalidated.json()["version"]) == ("REVALIDATED", 0)  # unchanged: a 304
    assert harness.origin.conditional == 1
    assert fetch(harness).x_cache == "HIT"


def test_a_soft_purge_never_serves_an_entry_past_its_own_freshness(harness: Harness, reset: Reset) -> None:
    reset()
    harness.origin.default = Policy(cache_control="public, s-maxage=5", etag=True)
    fetch(harness)
    harness.clock.now += 3
    assert purge(harness, {"urls": ["/t"], "soft": True})[1]["purged"] == 1
    harness.clock.now += 3  # within the 60 s grace, but past the 5 s the origin allowed
    assert fetch(harness).x_cache == "REVALIDATED"


def test_a_hard_purge_still_drops_and_soft_must_be_a_boolean(harness: Harness, reset: Reset) -> None:
    reset()
    fetch(harness)
    assert purge(harness, {"urls": ["/t"], "soft": False})[1] == {"purged": 1, "soft": False, "urls": ["/t"],
                                                                  "prefixes": [], "tags": []}  # fmt: skip
    assert fetch(harness).x_cache == "MISS"
    status, body = purge(harness, {"urls": ["/t"], "soft": "yes"})
    assert status == 400 and body["error"] == "invalid_purge" and '"soft"' in body["message"]
    assert fetch(harness).x_cache == "HIT"


def test_soft_purge_by_tag_and_prefix(harness: Harness, reset: Reset) -> None:
    reset()
    harness.origin.policies["/tagged"] = Policy(cache_control="public, s-maxage=300", surrogate_key="blt1 product")
    for target in ("/tagged", "/shop/a", "/shop/b", "/other"):
        assert fetch(harness, target).x_cache == "MISS"
    assert purge(harness, {"tags": ["blt1"], "prefixes": ["/shop/"], "soft": True})[1]["purged"] == 3
    assert [fetch(harness, t).x_cache for t in ("/tagged", "/shop/a", "/shop/b", "/other")] == ["STALE"] * 3 + ["HIT"]


PUBLISH = {"module": "entry", "event": "publish", "data": {"entry": {"uid": "blt1"}}}


PUBLISH_CASES = [("soft", "publish", "STALE"), ("hard", "publish", "MISS"), ("soft", "unpublish", "MISS"),
                 ("soft", "delete", "MISS")]  # fmt: skip


@pytest.mark.parametrize(("mode", "event", "expected"), PUBLISH_CASES)
def test_the_publish_webhook_purges_as_purge_on_publish_says(
    harness: Harness, reset: Reset, mode: str, event: str, expected: str
) -> None:
    reset(purge_on_publish=mode)
    harness.origin.policies["/tagged"] = Policy(cache_control="public, s-maxage=300", surrogate_key="blt1 product")
    fetch(harness, "/tagged")
    status, body = purge(harness, {**PUBLISH, "event": event}, "/_edgeproxy/webhooks/contentstack")
    assert status == 200 and body["purged"] == 1 and body["soft"] == (expected == "STALE")
    assert fetch(harness, "/tagged").x_cache == expected


def test_purge_on_publish_is_checked() -> None:
    config = ProxyConfig(origin="http://127.0.0.1:1", rules="rules", purge_on_publish="later")
    with pytest.raises(ConfigError, match=r"purge_on_publish.*not hard or soft"):
        validate(config)


def entry(lifetime: float, swr: float = 0.0, sie: float = 0.0) -> CachedResponse:
    return CachedResponse(status=200, reason="OK", headers=[], body=b"x", path="/", tags=(), stored_at=1000.0,
                          initial_age=0.0, lifetime=lifetime, swr=swr, sie=sie, no_cache=False)  # fmt: skip


SOFT_CASES = [
    # id, (lifetime, swr, sie), purged at age, grace -> servable stale until age, on errors until age (its end kept:
    # within its freshness it was the origin's to serve anyway)
    ("fresh: stale for the grace", (300, 0, 0), 10, 60, 70, 300),
    ("grace capped by the freshness left", (30, 0, 0), 10, 60, 30, 30),
    ("and by stale-while-revalidate", (30, 20, 0), 10, 60, 50, 30),
    ("stale-if-error keeps its end", (30, 0, 100), 10, 60, 30, 130),
    ("already stale: nothing moves", (30, 10, 0), 35, 60, 40, 30),
    ("grace 0: revalidate now", (300, 0, 0), 10, 0, 10, 300),
]  # fmt: skip


@pytest.mark.parametrize(("windows", "age", "grace", "stale_until", "error_until"), [c[1:] for c in SOFT_CASES],
                         ids=[c[0] for c in SOFT_CASES])  # fmt: skip
def test_soft_purged_windows(
    windows: tuple[float, float, float], age: float, grace: float, stale_until: float, error_until: float
) -> None:
    original = entry(*windows)
    purged = soft_purged(original, 1000.0 + age, grace)
    assert not purged.fresh(1000.0 + age)
    assert purged.lifetime + purged.swr == stale_until and purged.lifetime + purged.sie == error_until
    assert purged.keep_for() <= original.keep_for()  # never outlives the original (Redis keeps its TTL)


# -- metrics per route -----------------------------------------------------------------------------------------


def scrape(harness: Harness) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    async def get() -> str:
        async with harness.session.get(harness.base + "/_edgeproxy/metrics") as r:
            return await r.text()

    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(harness.run(get())):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def route_results(harness: Harness) -> dict[tuple[str, str], float]:
    found = scrape(harness).get("edgeproxy_cache_route_results_total", {})
    return {(dict(labels)["route"], dict(labels)["result"]): value for labels, value in found.items()}


def test_cache_results_per_route_and_variant_sets_per_url(harness: Harness, reset: Reset) -> None:
    routes = (RouteRule(path="/products/*", name="products"), RouteRule(path="/checkout", cache=False),
              RouteRule(path="/static/*", personalize=False))  # fmt: skip
    config = reset(routes=routes)
    before = route_results(harness)
    for route in ("products", "/checkout", "/static/*", "default", "skip_paths", "static"):
        assert (route, "HIT") in before, route  # every route is there from the start, at zero
    iphone = Visitor(UA_IPHONE, "216.160.83.56", "metrics-2")
    requests = [("/products/a", VISITOR), ("/products/a", VISITOR), ("/products/a", iphone),
                ("/products/a", iphone), ("/products/a?utm_source=x", iphone), ("/products/b", VISITOR),
                ("/checkout", VISITOR), ("/static/app.js", VISITOR), ("/static/app.js", VISITOR), ("/", VISITOR),
                ("/img.png", VISITOR)]  # fmt: skip
    for target, visitor in requests:
        fetch(harness, target, visitor)
    after = route_results(harness)
    delta = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert delta == {
        ("products", "MISS"): 3, ("products", "HIT"): 3, ("/checkout", "BYPASS"): 1, ("/static/*", "MISS"): 1,
        ("/static/*", "HIT"): 1, ("default", "MISS"): 1, ("static", "MISS"): 1,
    }  # fmt: skip
    assert iphone_and_desktop_differ(harness, iphone)
    sets = {dict(labels)["route"]: value for labels, value in
            scrape(harness).get("edgeproxy_cache_variant_sets_per_url_count", {}).items()}  # fmt: skip
    buckets = scrape(harness).get("edgeproxy_cache_variant_sets_per_url_bucket", {})
    if config.cache_store != "memory":
        assert sets == {} and buckets == {}  # not counted for a shared store (a round trip per URL per scrape)
        return
    assert sets == {"products": 2, "/static/*": 1, "default": 1, "static": 1}  # URLs per route
    one = {dict(labels)["route"]: value for labels, value in buckets.items() if dict(labels)["le"] == "1.0"}
    two = {dict(labels)["route"]: value for labels, value in buckets.items() if dict(labels)["le"] == "2.0"}
    assert (one["products"], two["products"]) == (1, 2)  # /products/b: one set; /products/a: two


def iphone_and_desktop_differ(harness: Harness, iphone: Visitor) -> bool:
    ours = harness.decide(VISITOR, "/products/a", None, None).variant_param
    theirs = harness.decide(iphone, "/products/a", None, None).variant_param
    return bool(ours != theirs)


def test_a_fill_made_while_a_redis_lookup_is_under_way_reaches_that_lookup(redis_url: str) -> None:
    """The window that made concurrent misses on Redis fetch twice: a request's lookup reads the store before a
    leader stores the entry, and resumes after the leader has left `inflight`. The fill reaches it, and only it."""

    async def scenario() -> None:
        cache = ResponseCache(
            RedisCacheStore(redis_url), key_headers=(), default_ttl=60, max_object_bytes=1 << 20,
            events=Counter(), not_stored=Counter(),
        )  # fmt: skip
        key = "GET||shop.test|/window|"
        entry = CachedResponse(status=200, reason="OK", headers=[("Cache-Control", "max-age=60")], body=b"filled",
                               path="/window", tags=(), stored_at=0.0, initial_age=0.0, lifetime=60.0, swr=0.0,
                               sie=0.0, no_cache=False)  # fmt: skip
        looking = asyncio.ensure_future(cache.lookup(key))  # reads Redis: nothing stored yet
        await asyncio.sleep(0)  # the lookup is under way
        cache.filled(key, (entry, "MISS"))  # the leader stored it and left meanwhile
        found, fill = await looking
        assert found is None and fill == (entry, "MISS")
        assert await cache.lookup(key) == (None, None), "kept only for the lookups that were under way"
        cache.filled(key, (entry, "MISS"))  # nobody looking: nothing kept
        assert await cache.lookup(key) == (None, None)

    asyncio.run(scenario())
