"""Properties of the variant-aware response cache, in-process: the real aiohttp app of `edgeproxy serve` in front
of a real in-process origin (aiohttp, on a loopback port), with the cache's clock under the test's control.

The origin writes into every body the variant param, aliases and Accept-Language it received, and counts the
requests it served per (path?query, variant param, Accept-Language). The visitors' own decisions come from the
engine, from a SPEC §9 request description of the same request (the oracle `edgeproxy decide` uses).

1. For random visitors, route rules (tags, personalize, cache) and origin policies, sent in concurrent batches:
   a visitor never receives a page rendered for another variant set, and each cacheable key costs the origin
   exactly one request while it stays fresh (uncacheable ones: one per request).
2. For random schedules on a controlled clock and random Cache-Control (s-maxage / max-age / Expires,
   stale-while-revalidate, must-revalidate, no-cache, ETag): X-Cache, Age and the origin's request count per key
   are exactly what RFC 9111 / RFC 5861 prescribe.
Then targeted cases of the same machinery (Vary, stale-if-error, background refresh, request directives).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDictProxy
from support.proxy_server import proxy_server

from edgeproxy.cache.keys import CacheQuery
from edgeproxy.engine.context import context_from_description
from edgeproxy.exchange.plan import Planner
from edgeproxy.runtime.config import DEFAULT_CACHE_IGNORED_QUERY_PARAMS, ProxyConfig, RouteRule
from edgeproxy.runtime.serve import count_cache_by_route, make_cache, make_state
from edgeproxy.runtime.state import ProxyState

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
GEOIP = ROOT / "tests" / "data" / "GeoIP2-City-Test.mmdb"
VARIANT_QUERY_PARAM = "pv"

UA_DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
UA_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)
UA_PIXEL = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.6478.122 Mobile Safari/537.36"
)
UA_BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
IP_LONDON = "81.2.69.160"
IP_US = "216.160.83.56"


# -- a clock the cache reads, moved by the test ------------------------------------------------------------------


START = 1_795_341_600.0  # 2026-11-22T10:00:00Z: the proxy's clock (decisions, freshness, ages) starts here


class Clock:
    """Whole seconds, so the origin's Date header (second resolution) is exact and ages are whole numbers."""

    def __init__(self) -> None:
        self.now = START

    def time(self) -> float:
        return self.now

    def reset(self) -> None:
        self.now = START


# -- the origin ---------------------------------------------------------------------------------------------------


@dataclass
class Policy:
    """How the origin answers one path."""

    cache_control: str | None = "public, s-maxage=300"
    expires_in: int | None = None  # send Expires = Date + this many seconds
    etag: bool = False  # an ETag per (variant param, Accept-Language, version); honours If-None-Match
    weak_etag: bool = False
    session_cookie: bool = False  # Set-Cookie a session to visitors who have none (on 200s and 304s alike)
    vary: str | None = None
    surrogate_key: str | None = None
    delay: float = 0.0  # real seconds before answering (to make concurrent misses overlap)
    status: int = 200
    drop: bool = False  # close the connection without answering (an origin that is down)
    pad: int = 0  # extra body bytes
    chunks: int = 1  # the body in this many writes, a little apart


@dataclass
class Origin:
    clock: Clock
    policies: dict[str, Policy] = field(default_factory=dict)
    default: Policy = field(default_factory=Policy)
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    conditional: int = 0
    version: int = 0

    def reset(self) -> None:
        self.policies.clear()
        self.default = Policy()
        self.requests.clear()
        self.conditional = 0
        self.version = 0

    def count(self, path_qs: str | None = None) -> int:
        return sum(n for (p, _, _), n in self.requests.items() if path_qs is None or p == path_qs)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # What the proxy added for the Launch-style rewrite is not part of the page's identity.
        query = "&".join(p for p in request.rel_url.raw_query_string.split("&")
                         if p and not p.startswith(VARIANT_QUERY_PARAM + "="))  # fmt: skip
        path_qs = request.rel_url.raw_path + (f"?{query}" if query else "")
        variants = request.headers.get("x-cs-personalize-variants", "")
        language = request.headers.get("Accept-Language", "")
        self.requests[(path_qs, variants, language)] += 1
        policy = self.policies.get(request.rel_url.raw_path, self.default)
        if policy.delay:
            await asyncio.sleep(policy.delay)
        if policy.drop:
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("origin dropped the connection on purpose")
        headers = {"Date": formatdate(self.clock.now, usegmt=True), "Content-Type": "application/json"}
        if policy.status >= 500:
            return web.Response(status=policy.status, text="origin failing on purpose\n", headers=headers)
        if policy.cache_control is not None:
            headers["Cache-Control"] = policy.cache_control
        if policy.expires_in is not None:
            headers["Expires"] = formatdate(self.clock.now + policy.expires_in, usegmt=True)
        if policy.vary:
            headers["Vary"] = policy.vary
        if policy.surrogate_key:
            headers["Surrogate-Key"] = policy.surrogate_key
        if policy.session_cookie and "session=" not in request.headers.get("Cookie", ""):
            headers["Set-Cookie"] = f"session=for-{request.headers.get('X-Who', 'nobody')}; Path=/"
        if policy.etag:
            tag = hashlib.sha1(f"{variants}|{language}|{self.version}".encode()).hexdigest()[:16]
            headers["ETag"] = f'W/"{tag}"' if policy.weak_etag else f'"{tag}"'
            if request.headers.get("If-None-Match") == headers["ETag"]:
                self.conditional += 1
                return web.Response(status=304, headers=headers)
        body = json.dumps({
            "path": path_qs, "variants": variants, "aliases": request.headers.get("x-cs-variant-uid", ""),
            "language": language, "served": self.requests[(path_qs, variants, language)], "version": self.version,
            "pad": "x" * policy.pad,
        }).encode()  # fmt: skip
        if policy.chunks <= 1:
            return web.Response(status=policy.status, body=body, headers=headers)
        response = web.StreamResponse(status=policy.status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        step = -(-len(body) // policy.chunks)
        for start in range(0, len(body), step):
            await response.write(body[start : start + step])
            await asyncio.sleep(0.005)  # separate TCP segments: the reader sees several chunks
        await response.write_eof()
        return response


# -- visitors -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Visitor:
    user_agent: str = UA_DESKTOP
    ip: str | None = None
    uid: str | None = None  # None: a new visitor, the proxy mints a uid
    lytics: str | None = None
    live: str | None = None
    query: str = ""
    language: str = "en"

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent, "Accept-Language": self.language}
        cookies = []
        if self.uid:
            cookies.append(f"cs-personalize-user-uid={self.uid}")
        if self.lytics:
            cookies.append(f"cs-lytics-audiences={self.lytics}")
        if cookies:
            headers["Cookie"] = "; ".join(cookies)
        if self.live:
            headers["X-Live-Attributes"] = self.live
        if self.ip:
            headers["X-Forwarded-For"] = self.ip
        return headers

    def target(self, path: str) -> str:
        return f"{path}?{self.query}" if self.query else path


LIVE_ATTRIBUTES = (
    None, '{"tier": "gold", "lifetime_value": 1500}', '{"tier": "silver"}', '{"visits": 3}',
    '{"newsletter_subscriber": true}',
)  # fmt: skip
visitors_st = st.builds(
    Visitor,
    user_agent=st.sampled_from([UA_DESKTOP, UA_IPHONE, UA_PIXEL, UA_BOT]),
    ip=st.sampled_from([None, IP_LONDON, IP_US]),
    uid=st.sampled_from([None, "u-1", "u-2", "u-3", "u-4", "u-5", "u-6"]),
    lytics=st.sampled_from([None, "|vip_shoppers|", "|high_value_shoppers|"]),
    live=st.sampled_from(LIVE_ATTRIBUTES),
    query=st.sampled_from(
        ["", "utm_campaign=bf", "ref=newsletter&utm_source=email", "gclid=c1&ref=newsletter", "a=1&b=2", "b=2&a=1"]
    ),
    language=st.sampled_from(["en", "de"]),
)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def x_cache(self) -> str | None:
        return self.headers.get("X-Cache")

    def cookie(self, name: str) -> str | None:
        for value in self.headers.getall("Set-Cookie", ()):
            cookie_name, _, rest = value.partition("=")
            if cookie_name.strip() == name:
                return rest.split(";", 1)[0]
        return None


# -- the harness: one origin, one proxy app, one event loop for the whole module ---------------------------------


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = Clock()
        self.origin = Origin(self.clock)
        self.runner = asyncio.Runner()
        self.runner.run(self._start())

    async def _start(self) -> None:
        origin_app = web.Application()
        origin_app.router.add_route("*", "/{tail:.*}", self.origin.handle)
        self.origin_server = TestServer(origin_app, host="127.0.0.1")
        await self.origin_server.start_server()
        self.base_config = ProxyConfig(
            origin=f"http://127.0.0.1:{self.origin_server.port}", rules=str(RULES), geoip=str(GEOIP),
            trusted_proxies=("127.0.0.1",), state=f"sqlite:///{self.tmp}/state.sqlite3", purge_token="purge-token",
        )  # fmt: skip
        self.state: ProxyState = make_state(self.base_config, clock=self.clock.time)
        self.proxy_context = proxy_server(self.state)
        self.proxy_server = await self.proxy_context.__aenter__()
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=30),
        )  # fmt: skip

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.proxy_server.port}"

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def reset(self, **settings: Any) -> ProxyConfig:
        """A fresh, empty cache and origin, the clock at now, and these settings (routes, cache_default_ttl, ...)."""
        config = replace(self.base_config, **settings)
        old, planner = self.state.cache, self.state.planner
        cache = make_cache(config, self.clock.time, self.state.metrics)
        self.state.config, self.state.cache = config, cache
        self.state.planner = Planner(config, self.clock.time, planner.geo_lookup, self.state.store.cached_attributes,
                                     cache, planner.classifier)  # fmt: skip
        count_cache_by_route(self.state.metrics, cache, self.state.planner.routes)
        if old is not None:
            self.run(old.close())
        self.origin.reset()
        self.clock.reset()
        return config

    async def get(self, target: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
        async with self.session.request(method, self.base + target, headers=headers, allow_redirects=False) as r:
            return Reply(r.status, r.headers, await r.read())

    async def get_all(self, requests: Sequence[tuple[str, dict[str, str]]]) -> list[Reply]:
        """Sent concurrently (so misses for one key overlap)."""
        return list(await asyncio.gather(*(self.get(target, headers) for target, headers in requests)))

    async def settle(self, background_before: int, timeout: float = 5.0) -> None:
        """Wait for a background (stale-while-revalidate) refresh to be stored."""
        deadline = time.monotonic() + timeout
        while self.background_done() <= background_before:
            assert time.monotonic() < deadline, "the background refresh never finished"
            await asyncio.sleep(0.002)

    def background_done(self) -> int:
        assert self.state.cache is not None
        counts = self.state.cache.counts
        return counts["background_revalidated"] + counts["background_refreshed"]

    def decide(self, visitor: Visitor, path: str, tags: tuple[str, ...] | None, minted_uid: str | None) -> Any:
        """The visitor's own decision from the engine, for a description of the same request (SPEC §9)."""
        headers = {k: v for k, v in visitor.headers().items() if k != "X-Forwarded-For"}
        description: dict[str, Any] = {"url": self.base + visitor.target(path), "method": "GET", "headers": headers,
                                       "ip": visitor.ip or "127.0.0.1"}  # fmt: skip
        if visitor.uid is None:
            assert minted_uid, "a new visitor gets a uid cookie"
            description["userUid"] = minted_uid
        if tags is not None:
            description["tags"] = list(tags)
        loaded = self.state.holder.current
        assert loaded is not None
        described = context_from_description(
            description, clock=self.clock.time, new_uid=lambda: "unused", classifier=self.state.planner.classifier,
            geo_lookup=self.state.planner.geo_lookup,
        )  # fmt: skip
        return loaded.snapshot.decide(described.context, described.tags)

    def close(self) -> None:
        async def stop() -> None:
            await self.session.close()
            await self.proxy_context.__aexit__(None, None, None)
            await self.origin_server.close()

        self.run(stop())
        self.runner.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("cache-properties"))
    yield h
    h.close()


# -- property 1: no cross-variant leaks; one origin request per fresh key ------------------------------------------

PATHS = ("/", "/products/p1", "/checkout", "/plain", "/assets/app.css")
TAGS = ("section:homepage", "section:checkout", "section:product", "section:cart", "campaign:black-friday")
STORED_POLICIES = ("public, s-maxage=300", "max-age=300", "public, max-age=300, stale-while-revalidate=60",
                   "s-maxage=300, must-revalidate")  # fmt: skip
UNSTORED_POLICIES = ("no-store", "private, max-age=300", None)  # None: no freshness and no default TTL

route_st = st.builds(
    lambda path, personalize, tags, cache: RouteRule(path=path, personalize=personalize, tags=tags, cache=cache),
    path=st.just(""), personalize=st.booleans(),
    tags=st.none() | st.lists(st.sampled_from(TAGS), min_size=1, max_size=3, unique=True).map(tuple),
    cache=st.booleans(),
)  # fmt: skip


@st.composite
def scenario_st(draw: st.DrawFn) -> dict[str, Any]:
    routes = []
    for path in PATHS[:4]:
        if draw(st.booleans()):
            routes.append(replace(draw(route_st), path=path))
    policies = {path: draw(st.sampled_from(STORED_POLICIES + UNSTORED_POLICIES)) for path in PATHS}
    visitors = draw(st.lists(visitors_st, min_size=1, max_size=6))
    batches = draw(st.lists(
        st.lists(st.tuples(st.integers(0, len(visitors) - 1), st.sampled_from(PATHS)), min_size=1, max_size=6),
        min_size=1, max_size=5,
    ))  # fmt: skip
    settings = {
        "routes": tuple(routes),
        "cda_variant_limit": draw(st.integers(0, 3)),
        "variant_query_param": draw(st.sampled_from(["", VARIANT_QUERY_PARAM])),
        "cache_key_headers": draw(st.sampled_from([(), ("accept-language",)])),
        "cache_ignored_query_params": draw(st.sampled_from([(), DEFAULT_CACHE_IGNORED_QUERY_PARAMS])),
        "cache_sort_query": draw(st.booleans()),
    }
    return {"settings": settings, "policies": policies, "visitors": visitors, "batches": batches}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario=scenario_st())
def test_no_visitor_gets_another_variant_sets_page_and_each_fresh_key_costs_one_origin_request(
    harness: Harness, scenario: dict[str, Any]
) -> None:
    config = harness.reset(**scenario["settings"])
    for path, cc in scenario["policies"].items():
        harness.origin.policies[path] = Policy(cache_control=cc)
    visitors: list[Visitor] = scenario["visitors"]
    key_language = bool(config.cache_key_headers)
    keyed = CacheQuery(config.cache_ignored_query_params, sort=config.cache_sort_query).target
    sent: Counter[tuple[str, str, str]] = Counter()  # origin-side key -> requests the visitors made for it
    cacheable: dict[tuple[str, str, str], bool] = {}

    for batch in scenario["batches"]:
        requests = [(visitors[i], path) for i, path in batch]
        replies = harness.run(harness.get_all([(v.target(path), v.headers()) for v, path in requests]))
        for (visitor, path), reply in zip(requests, replies, strict=True):
            assert reply.status == 200, reply.body
            route = harness.state.planner.routes.decide(path)
            personalized = route.personalize
            expected_variants, expected_aliases = "", ""
            if personalized:
                manifest = harness.decide(visitor, path, route.tags, reply.cookie("cs-personalize-user-uid"))
                expected_variants = manifest.variant_param
                limit = config.cda_variant_limit
                expected_aliases = ",".join(manifest.aliases[:limit] if limit else manifest.aliases)
                assert json.loads(reply.cookie("cs-personalize-manifest") or "null") == manifest.edge_body()
            body = reply.json()
            # The page was rendered for this visitor's own variant set, whoever filled the cache.
            assert body["variants"] == expected_variants, (visitor, path, reply.x_cache)
            assert body["aliases"] == expected_aliases, (visitor, path, reply.x_cache)
            if key_language:
                assert body["language"] == visitor.language
            assert reply.x_cache in (("HIT", "MISS") if route.cache else ("BYPASS",))
            event(f"X-Cache: {reply.x_cache}, personalized: {personalized}")
            key = (keyed(visitor.target(path)), expected_variants, visitor.language)
            sent[key] += 1
            cacheable[key] = route.cache and scenario["policies"][path] in STORED_POLICIES

    # The origin's view: one request per cacheable key (fresh for the whole run), one per request otherwise; URLs
    # that differ only in ignored (or, sorted, in the order of) query parameters are one key.
    origin: Counter[tuple[str, str, str]] = Counter()
    for (path_qs, variants, language), n in harness.origin.requests.items():
        origin[(keyed(path_qs), variants, language)] += n
    if not key_language:  # without Accept-Language in the key, languages share an entry
        origin = _merge_languages(origin)
        sent = _merge_languages(sent)
        cacheable = {(p, v, ""): c for (p, v, _), c in cacheable.items()}
    for key, requested in sent.items():
        expected = 1 if cacheable[key] else requested
        assert origin[key] == expected, (key, dict(origin), requested)
    assert set(origin) == set(sent)


def _merge_languages(counts: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str, str]]:
    merged: Counter[tuple[str, str, str]] = Counter()
    for (path_qs, variants, _), n in counts.items():
        merged[(path_qs, variants, "")] += n
    return merged


# -- property 2: freshness on a controlled clock --------------------------------------------------------------------

FIXED_VISITORS = (
    Visitor(UA_DESKTOP, IP_LONDON, "clock-1"),
    Visitor(UA_IPHONE, IP_US, "clock-2", query="utm_campaign=bf"),
    Visitor(UA_DESKTOP, IP_LONDON, "clock-3"),
    Visitor(UA_BOT, IP_US, "clock-4", live='{"tier": "gold", "lifetime_value": 1500}'),
)


@dataclass(frozen=True)
class Freshness:
    lifetime: int
    how: str  # s-maxage | max-age | Expires
    swr: int
    sie: int
    must_revalidate: bool
    no_cache: bool
    etag: bool

    def policy(self) -> Policy:
        directives = ["public"] if self.how == "Expires" else [f"{self.how}={self.lifetime}"]
        if self.swr:
            directives.append(f"stale-while-revalidate={self.swr}")
        if self.sie:
            directives.append(f"stale-if-error={self.sie}")
        if self.must_revalidate:
            directives.append("must-revalidate")
        if self.no_cache:
            directives.append("no-cache")
        return Policy(cache_control=", ".join(directives), etag=self.etag,
                      expires_in=self.lifetime if self.how == "Expires" else None)  # fmt: skip

    @property
    def stale_allowed(self) -> bool:
        return not (self.must_revalidate or self.no_cache)

    def keep_for(self) -> int:
        windows = (self.swr, self.sie) if self.stale_allowed else (0, 0)
        return self.lifetime + max(*windows, 60 if self.etag else 0)


freshness_st = st.builds(
    Freshness, lifetime=st.integers(1, 5), how=st.sampled_from(["s-maxage", "max-age", "Expires"]),
    swr=st.sampled_from([0, 0, 2, 4]), sie=st.sampled_from([0, 3]), must_revalidate=st.booleans(),
    no_cache=st.sampled_from([False, False, False, True]), etag=st.booleans(),
)  # fmt: skip
schedule_st = st.lists(
    st.tuples(st.sampled_from([0, 0, 1, 1, 2, 3, 7]), st.integers(0, len(FIXED_VISITORS) - 1),
              st.sampled_from(["/a", "/b"])),
    min_size=4, max_size=30,
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(freshness=freshness_st, schedule=schedule_st)
def test_x_cache_age_and_origin_requests_follow_the_freshness_rules(
    harness: Harness, freshness: Freshness, schedule: list[tuple[int, int, str]]
) -> None:
    harness.reset()
    harness.origin.default = freshness.policy()
    stored_at: dict[tuple[str, str], float] = {}  # the model: (path, variant param) -> when stored/validated
    expected_origin: Counter[tuple[str, str]] = Counter()
    swr = freshness.swr if freshness.stale_allowed else 0

    for advance, who, path in schedule:
        harness.clock.now += advance
        now = harness.clock.now
        visitor = FIXED_VISITORS[who]
        background = harness.background_done()
        reply: Reply = harness.run(harness.get(visitor.target(path), visitor.headers()))
        variants = reply.json()["variants"]
        assert variants == harness.decide(visitor, path, None, None).variant_param
        key = (visitor.target(path), variants)
        since = stored_at.get(key)
        if since is not None and now - since >= freshness.keep_for():
            since = None  # evicted: nothing left to serve or revalidate
        if since is None:
            expected = "MISS"
        elif not freshness.no_cache and now - since < freshness.lifetime:
            expected = "HIT"
        elif not freshness.no_cache and now - since < freshness.lifetime + swr:
            expected = "STALE"
        else:
            expected = "REVALIDATED" if freshness.etag else "MISS"
        assert reply.x_cache == expected, (freshness, key, now - since if since is not None else None)
        event(f"X-Cache: {expected}")
        if expected in ("HIT", "STALE"):
            assert since is not None and reply.headers["Age"] == str(int(now - since))
        if expected != "HIT":
            expected_origin[key] += 1
            stored_at[key] = now  # fetched, revalidated, or (STALE) refreshed in the background
        if expected == "STALE":
            harness.run(harness.settle(background))
        got = Counter({(p, v): n for (p, v, _), n in harness.origin.requests.items()})
        assert got == expected_origin, (freshness, schedule)


# -- targeted cases -------------------------------------------------------------------------------------------------

VISITOR = Visitor(UA_DESKTOP, IP_LONDON, "targeted-1")


def fetch(harness: Harness, target: str = "/t", visitor: Visitor = VISITOR, **extra: str) -> Reply:
    reply: Reply = harness.run(harness.get(target, {**visitor.headers(), **extra}))
    return reply


def test_vary_on_a_request_header_selects_the_stored_response(harness: Harness) -> None:
    harness.reset()
    harness.origin.default = Policy(cache_control="public, s-maxage=300", vary="Accept-Language")
    seen = []
    for language in ("en", "en", "de", "de"):
        reply = fetch(harness, visitor=replace(VISITOR, language=language))
        assert reply.json()["language"] == language
        seen.append(reply.x_cache)
    assert seen[1] == "HIT" and seen[2] != "HIT" and seen[3] == "HIT"


def test_concurrent_misses_that_differ_in_a_vary_header_each_get_their_own_response(harness: Harness) -> None:
    harness.reset()
    harness.origin.default = Policy(cache_control="public, s-maxage=300", vary="Accept-Language", delay=0.2)
    languages = ["en", "de", "fr", "es"]
    replies = harness.run(harness.get_all([("/t", replace(VISITOR, language=lang).headers()) for lang in languages]))
    assert [r.json()["language"] for r in replies] == languages


def test_stale_while_revalidate_refreshes_once_for_many_concurrent_stale_hits(harness: Harness) -> None:
    harness.reset()
    harness.origin.default = Policy(cache_control="public, max-age=2, stale-while-revalidate=60", delay=0.05)
    assert fetch(harness).x_cache == "MISS"
    harness.origin.version = 1  # the origin's content changes
    harness.clock.now += 3
    background = harness.background_done()
    replies = harness.run(harness.get_all([("/t", VISITOR.headers())] * 10))
    assert {r.x_cache for r in replies} == {"STALE"} and {r.json()["version"] for r in replies} == {0}
    harness.run(harness.settle(background))
    assert harness.origin.count() == 2  # the first fetch and one background refresh
    after = fetch(harness)
    assert (after.x_cache, after.json()["version"], after.headers["Age"]) == ("HIT", 1, "0")


def test_background_refresh_stores_the_whole_body(harness: Harness) -> None:
    harness.reset()
    harness.origin.default = Policy(cache_control="public, max-age=2, stale-while-revalidate=60", pad=300_000,
                                    chunks=6)  # fmt: skip
    first = fetch(harness)
    full = len(first.body)  # (lengths, not bodies, in assertions: a 300 kB diff is slow to render)
    assert first.x_cache == "MISS" and full > 300_000
    harness.origin.version = 1
    harness.clock.now += 3
    background = harness.background_done()
    assert fetch(harness).x_cache == "STALE"
    harness.run(harness.settle(background))
    after = fetch(harness)
    stored = len(after.body)
    assert after.x_cache == "HIT"
    assert stored == full
    assert after.json()["version"] == 1


@pytest.mark.parametrize("failure", ["5xx", "down"])
def test_stale_if_error_serves_the_stale_copy_while_the_origin_fails_and_only_within_its_window(
    harness: Harness, failure: str
) -> None:
    harness.reset()
    harness.origin.default = Policy(cache_control="public, max-age=2, stale-if-error=30", etag=True)
    first = fetch(harness)
    assert first.x_cache == "MISS"
    harness.origin.default = replace(harness.origin.default, status=503 if failure == "5xx" else 200,
                                     drop=failure == "down")  # fmt: skip
    harness.clock.now += 5
    stale = fetch(harness)
    assert (stale.status, stale.x_cache, stale.body, stale.headers["Age"]) == (200, "STALE", first.body, "5")
    harness.clock.now += 30  # age 35: past max-age + stale-if-error
    late = fetch(harness)
    assert late.status == (503 if failure == "5xx" else 502)
    assert late.x_cache != "STALE"


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate"])
def test_must_revalidate_never_serves_stale_even_when_the_origin_fails(harness: Harness, directive: str) -> None:
    harness.reset()
    cc = f"public, max-age=2, stale-if-error=60, stale-while-revalidate=60, {directive}"
    harness.origin.default = Policy(cache_control=cc, etag=True)
    assert fetch(harness).x_cache == "MISS"
    harness.clock.now += 3
    assert fetch(harness).x_cache == "REVALIDATED"  # no stale-while-revalidate either
    harness.origin.default = replace(harness.origin.default, status=503)
    harness.clock.now += 3
    assert fetch(harness).status == 503


@pytest.mark.parametrize("failure", ["5xx", "down"])
def test_no_cache_entry_is_never_served_unvalidated_when_the_origin_fails(harness: Harness, failure: str) -> None:
    harness.reset()
    harness.origin.default = Policy(cache_control="no-cache, max-age=60", etag=True)
    assert fetch(harness).x_cache == "MISS"
    assert fetch(harness).x_cache == "REVALIDATED"
    harness.origin.default = replace(harness.origin.default, status=503 if failure == "5xx" else 200,
                                     drop=failure == "down")  # fmt: skip
    harness.clock.now += 1
    reply = fetch(harness)
    assert reply.status == (503 if failure == "5xx" else 502), reply.x_cache


def test_stale_if_error_also_serves_requests_coalesced_on_the_failed_revalidation(harness: Harness) -> None:
    harness.reset()
    harness.origin.default = Policy(cache_control="public, max-age=2, stale-if-error=60")
    first = fetch(harness)
    harness.origin.default = Policy(status=503, delay=0.2)
    harness.clock.now += 5
    before = harness.origin.count()
    replies = harness.run(harness.get_all([("/t", VISITOR.headers())] * 5))
    assert [(r.status, r.x_cache) for r in replies] == [(200, "STALE")] * 5
    assert {r.body for r in replies} == {first.body}
    assert harness.origin.count() - before == 1


def test_a_request_with_no_store_is_not_stored(harness: Harness) -> None:
    harness.reset()
    assert fetch(harness, **{"Cache-Control": "no-store"}).x_cache == "MISS"
    assert fetch(harness).x_cache == "MISS"


def test_default_ttl_applies_only_when_the_origin_gives_no_freshness(harness: Harness) -> None:
    harness.reset(cache_default_ttl=5.0)
    harness.origin.default = Policy(cache_control=None)
    assert [fetch(harness).x_cache for _ in range(2)] == ["MISS", "HIT"]
    harness.clock.now += 5
    assert fetch(harness).x_cache == "MISS"
    harness.origin.policies["/explicit"] = Policy(cache_control="max-age=1")
    assert [fetch(harness, "/explicit").x_cache for _ in range(2)] == ["MISS", "HIT"]
    harness.clock.now += 1
    assert fetch(harness, "/explicit").x_cache == "MISS"  # the origin's 1 s, not the default 5 s
    harness.reset(cache_default_ttl=0.0)
    harness.origin.default = Policy(cache_control=None)
    assert [fetch(harness).x_cache for _ in range(2)] == ["MISS", "MISS"]


def test_authorization_requests_are_stored_only_when_the_response_allows_a_shared_cache(harness: Harness) -> None:
    harness.reset()
    harness.origin.policies["/mine"] = Policy(cache_control="max-age=300")
    harness.origin.policies["/shared"] = Policy(cache_control="public, max-age=300")
    auth = {"Authorization": "Bearer secret"}
    assert [fetch(harness, "/mine", **auth).x_cache for _ in range(2)] == ["MISS", "MISS"]
    assert [fetch(harness, "/shared", **auth).x_cache for _ in range(2)] == ["MISS", "HIT"]


def test_head_and_if_none_match_are_answered_from_a_stored_get(harness: Harness) -> None:
    harness.reset()
    harness.origin.default = Policy(cache_control="public, max-age=300", etag=True)
    first = fetch(harness)
    head: Reply = harness.run(harness.get("/t", VISITOR.headers(), method="HEAD"))
    assert (head.status, head.x_cache, head.body) == (200, "HIT", b"")
    assert head.headers["Content-Length"] == str(len(first.body))
    assert harness.origin.count() == 1


@pytest.mark.parametrize(
    ("weak_stored", "if_none_match"),
    [
        pytest.param(False, "{etag}", id="the same tag"),
        pytest.param(False, '"other", {etag}', id="in a list"),
        pytest.param(False, "*", id="any"),
        pytest.param(True, "{etag}", id="the same weak tag"),
        pytest.param(False, "W/{etag}", id="weak request, strong stored"),
        pytest.param(True, "{strong}", id="strong request, weak stored"),
    ],
)
def test_if_none_match_is_answered_from_the_entry_with_a_304(
    harness: Harness, weak_stored: bool, if_none_match: str
) -> None:
    harness.reset()
    harness.origin.default = Policy(cache_control="public, max-age=300", etag=True, weak_etag=weak_stored)
    etag = fetch(harness).headers["ETag"]
    value = if_none_match.format(etag=etag, strong=etag.removeprefix("W/"))
    conditional = fetch(harness, **{"If-None-Match": value})
    assert (conditional.status, conditional.x_cache, conditional.body) == (304, "HIT", b"")
    assert conditional.headers["ETag"] == etag
    assert conditional.cookie("cs-personalize-user-uid") == VISITOR.uid  # still the visitor's own cookies
    assert harness.origin.count() == 1 and harness.origin.conditional == 0
    other = fetch(harness, **{"If-None-Match": '"something-else"'})
    assert (other.status, other.x_cache) == (200, "HIT")


@pytest.mark.parametrize("revalidation", ["on the request", "in the background"])
def test_a_cookie_the_origin_sets_on_a_304_is_never_stored_for_other_visitors(
    harness: Harness, revalidation: str
) -> None:
    harness.reset()
    swr = ", stale-while-revalidate=60" if revalidation == "in the background" else ""
    harness.origin.default = Policy(cache_control=f"public, max-age=2{swr}", etag=True, session_cookie=True)
    alice = {**VISITOR.headers(), "Cookie": f"cs-personalize-user-uid={VISITOR.uid}; session=alice", "X-Who": "alice"}
    bob = {**VISITOR.headers(), "Cookie": f"cs-personalize-user-uid={VISITOR.uid}", "X-Who": "bob"}  # no session
    assert fetch(harness, **alice).x_cache == "MISS"  # a 200 without Set-Cookie: stored
    harness.clock.now += 3
    background = harness.background_done()
    bobs = fetch(harness, **bob)  # the revalidation: 304 with a Set-Cookie meant for bob
    if revalidation == "in the background":
        assert bobs.x_cache == "STALE"
        harness.run(harness.settle(background))
    else:
        assert bobs.x_cache == "REVALIDATED"
    later = fetch(harness, **alice)
    assert later.x_cache == "HIT"
    assert later.cookie("session") is None  # not "for-bob": the cookie the origin set for bob


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_an_unsafe_request_invalidates_the_stored_responses_for_its_url(harness: Harness, method: str) -> None:
    harness.reset()
    harness.origin.default = Policy(cache_control="public, max-age=300")
    assert [fetch(harness).x_cache for _ in range(2)] == ["MISS", "HIT"]
    changed: Reply = harness.run(harness.get("/t", VISITOR.headers(), method=method))
    assert (changed.status, changed.x_cache) == (200, "BYPASS")
    assert fetch(harness).x_cache == "MISS"
