"""The aiohttp application: forward every request to the origin, personalizing the ones routes allow.

Streaming both ways (bodies never sit in memory), hop-by-hop headers removed, X-Forwarded-* appended and
trusted only from configured proxies, HEAD/204/304 without bodies, redirects passed through, WebSocket
upgrades bridged, a pool of keep-alive connections to the origin (upstream.py), 502/504 on origin failure.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edgeproxy.analytics.impressions import ImpressionRecorder
from edgeproxy.analytics.live import LiveDecisions
from edgeproxy.clock import Clock, system_clock
from edgeproxy.engine.context import GeoLookup, VisitorContext
from edgeproxy.engine.decide import CompiledSnapshot, Manifest
from edgeproxy.engine.useragent import UserAgentClassifier
from edgeproxy.exchange.routes import RouteTable
from edgeproxy.http.access_log import DECIDED_KEY
from edgeproxy.http.aiohttp_internals import GatedServer, HitLaneServer, answer_in_http11
from edgeproxy.http.errors import error_response, refusal_response
from edgeproxy.http.gate import Refusal, origin_form
from edgeproxy.http.gate import check as check_request
from edgeproxy.http.headers import UPSTREAM_OWNED, TrustedProxies, end_to_end, removal_set
from edgeproxy.http.origin import ClientBodyError, OriginPool, UpstreamResponse, pool_for_origin
from edgeproxy.http.prebuilt import prebuilt_allowed, whole_response
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.runtime.metrics import ProxyMetrics
from edgeproxy.runtime.snapshots import LoadedSnapshot, SnapshotHolder
from edgeproxy.store.base import StateStore, StoreError
from edgeproxy.visitor.personalize import (
    NO_COOKIES,
    Identities,
    Identity,
    SetCookies,
    add_upstream_headers,
    context_from_request,
)

if TYPE_CHECKING:
    from edgeproxy.cache.layer import ResponseCache
    from edgeproxy.runtime.decision_log import DecisionLog
    from edgeproxy.sync.fleet import FleetFollower
    from edgeproxy.sync.poller import SnapshotPoller

log = logging.getLogger("edgeproxy.proxy")
NO_BODY_STATUSES = frozenset({204, 304})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# 100-continue is answered here; an h2c upgrade is ignored (RFC 9110 §7.8), its settings header with it
UPSTREAM_REMOVED = removal_set(*UPSTREAM_OWNED, "host", "expect", "http2-settings")


@dataclass(slots=True)
class Counters:
    requests: int = 0
    personalized: int = 0
    passed_through: int = 0
    websockets: int = 0
    origin_errors: int = 0
    store_errors: int = 0
    edge_api: int = 0
    started: float = 0.0


class ProxyState:
    """Everything a request handler needs, built once per process."""

    def __init__(
        self,
        config: ProxyConfig,
        holder: SnapshotHolder,
        geo_lookup: GeoLookup | None,
        store: StateStore,
        clock: Clock = system_clock,
    ) -> None:
        self.config = config
        self.clock = clock  # the one clock of the process: decisions, cache ages, stored TTLs, logs
        self.store = store
        self.holder = holder
        self.geo_lookup = geo_lookup
        self.origin = URL(config.origin.rstrip("/"))
        self.origin_host = self.origin.raw_authority
        self.origin_base_path = self.origin.raw_path.rstrip("/")
        self.origin_prefix = f"{self.origin.scheme}://{self.origin.raw_authority}{self.origin_base_path}"
        self.trusted = TrustedProxies(config.trusted_proxies)
        self.routes = RouteTable(config)
        self.counters = Counters(started=clock())
        self.classifier = UserAgentClassifier()
        self._session: aiohttp.ClientSession | None = None  # WebSocket upgrades only
        self._upstream: OriginPool | None = None  # every other request to the origin
        self.poller: SnapshotPoller | None = None  # set by the server when a poller keeps the snapshot fresh
        self.cache: ResponseCache | None = None  # set by the server when the response cache is on
        self.decision_log: DecisionLog | None = None  # set by the server with --decision-log
        self.impressions: ImpressionRecorder | None = None  # set by the server unless impressions = "off"
        self.metrics = ProxyMetrics(self)
        self.live = LiveDecisions(clock)  # decision counts for the dashboard
        self.identities = Identities()  # returning visitors' uids and parsed cookies
        self.fleet: FleetFollower | None = None  # when following a fleet channel (--fleet-redis)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the origin session starts with the proxy (ProxyState.start)")
        return self._session

    @property
    def upstream(self) -> OriginPool:
        if self._upstream is None:
            raise RuntimeError("the origin pool starts with the proxy (ProxyState.start)")
        return self._upstream

    def observe_decision(self, manifest: Manifest, seconds: float) -> None:
        self.metrics.observe_decision(seconds)
        self.live.record(manifest)

    async def stored_attributes(self, project_uid: str, user_uid: str) -> dict[str, object]:
        """Stored attributes for a decision; a store outage degrades to request-local data, logged."""
        try:
            return await self.store.get_attributes(project_uid, user_uid)
        except StoreError as exc:
            self.counters.store_errors += 1
            log.warning("stored attributes unavailable for this decision: %s", exc)
            return {}

    async def start(self) -> None:
        await self.store.start()
        self._upstream = pool_for_origin(
            self.origin.scheme, self.origin.raw_host or "127.0.0.1", self.origin.port,
            limit=self.config.pool_size, connect_timeout=self.config.connect_timeout,
            read_timeout=self.config.read_timeout, keepalive=30.0,
        )  # fmt: skip
        connector = aiohttp.TCPConnector(
            limit=self.config.pool_size, ttl_dns_cache=300, keepalive_timeout=30, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.config.connect_timeout, sock_read=self.config.read_timeout
            ),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._upstream is not None:
            await self._upstream.close()
        if self.cache is not None:
            await self.cache.close()
        if self.decision_log is not None:
            self.decision_log.close()
        if self.impressions is not None:
            await self.impressions.stop()
        await self.store.close()


def peer_address(request: web.BaseRequest) -> str | None:
    transport = request.transport
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


@dataclass(slots=True)  # one per request: not frozen, whose __init__ costs a setattr call per field
class ClientView:
    """Who is asking and for which URL, believing X-Forwarded-* only from trusted proxies."""

    peer: str | None
    trusted: bool
    forwarded_for: str | None  # the incoming X-Forwarded-For, read only from a trusted peer
    client_ip: str | None
    proto: str
    host: str
    refusal: Refusal | None = None  # X-Forwarded-* from a trusted peer that are ambiguous: refuse the request


AMBIGUOUS_FORWARDING = Refusal(
    400, "ambiguous_forwarding",
    "X-Forwarded-For/-Proto/-Host from the trusted proxy are repeated, or not a valid address, scheme or host.",
)  # fmt: skip


def client_view(request: web.BaseRequest, state: ProxyState) -> ClientView:
    return view_of_client(state, peer_address(request), request.scheme, request.host, request.headers)


def view_of_client(
    state: ProxyState, peer: str | None, scheme: str, host: str, headers: CIMultiDictProxy[str]
) -> ClientView:
    """`host`: the request's Host. Used by the general path and the hit lane alike."""
    if not state.trusted.trusts(peer):  # the common case: nothing forwarded is believed
        return ClientView(peer, False, None, peer, scheme, host)
    xff = headers.getall("X-Forwarded-For", [])
    found = state.trusted.forwarded(
        peer, xff, headers.getall("X-Forwarded-Proto", []), headers.getall("X-Forwarded-Host", [])
    )
    if found is None:  # ambiguous or invalid: refused (`forwarding_refused`), believed in no part
        return ClientView(peer, True, None, peer, scheme, host, AMBIGUOUS_FORWARDING)
    client_ip, proto, forwarded_host = found
    return ClientView(peer, True, xff[0] if xff else None, client_ip, proto or scheme, forwarded_host or host)


@dataclass(slots=True)
class Personalization:
    """What a personalized request decided, before anything about it is recorded (`record_personalization`)."""

    loaded: LoadedSnapshot
    ctx: VisitorContext
    manifest: Manifest
    tags: tuple[str, ...] | None
    cookies: SetCookies  # for the visitor's scheme (Secure on https)
    decide_seconds: float


def attributes_at_hand(
    state: ProxyState, loaded: LoadedSnapshot, identity: Identity
) -> tuple[bool, Mapping[str, object] | None]:
    """(known, stored): the stored attributes a decision reads, when they are known without I/O (none needed,
    or cached by the store); (False, None) when they must be fetched (`ProxyState.stored_attributes`)."""
    if identity.is_new or not loaded.snapshot.reads_custom_attributes:
        return True, None
    stored = state.store.cached_attributes(loaded.snapshot.project.uid, identity.user_uid)
    return stored is not None, stored


def personalize(
    state: ProxyState,
    loaded: LoadedSnapshot,
    tags: tuple[str, ...] | None,
    headers: CIMultiDictProxy[str],
    raw_path: str,
    query: str,
    where: ClientView,
    identity: Identity,
    stored: Mapping[str, object] | None,
) -> Personalization:
    """The visitor's decision for this request: nothing is counted or recorded yet."""
    secure = where.proto == "https"
    ctx = context_from_request(
        headers,
        page_url=f"{where.proto}://{where.host}{raw_path}",
        now=state.clock(),
        query=query,
        client_ip=where.client_ip,
        trust_geo_headers=where.trusted,
        geo_lookup=state.geo_lookup,
        classifier=state.classifier,
        identity=identity,
        stored=stored,
    )
    started = time.perf_counter()
    manifest = loaded.decider.decide(ctx, tags)
    seconds = time.perf_counter() - started
    return Personalization(loaded, ctx, manifest, tags, loaded.cookies.of(manifest, secure), seconds)


def record_personalization(state: ProxyState, decision: Personalization, decided: Decided) -> None:
    """Count a decision whose response is being sent (metrics, live counts) and note it for the logs."""
    state.observe_decision(decision.manifest, decision.decide_seconds)
    state.counters.personalized += 1
    decided.ctx, decided.manifest = decision.ctx, decision.manifest
    decided.snapshot, decided.tags = decision.loaded.snapshot.version, decision.tags


@dataclass(slots=True)
class Decided:
    """What a proxied request decided, for metrics and the decision log after the response."""

    ctx: VisitorContext | None = None
    manifest: Manifest | None = None
    snapshot: str = ""
    tags: tuple[str, ...] | None = None


async def proxy_handler(request: web.BaseRequest, state: ProxyState) -> web.StreamResponse:
    started = time.perf_counter()
    decided = Decided()
    if state.config.access_log:
        request[DECIDED_KEY] = decided  # for the JSON access log
    response = await _proxy(request, state, decided)
    x_cache = response.headers.get("X-Cache")
    observe_served(state, started, request.method, request.raw_path, response.status, x_cache, decided)
    if state.cache is not None and request.method in UNSAFE_METHODS and response.status < 400:
        # RFC 9111 §4.4: a successful unsafe request invalidates the stored responses for its URI.
        try:
            await state.cache.store.purge(paths=[request.raw_path], prefixes=[], tags=[])
        except Exception as exc:  # a shared cache being away must not fail the request that already succeeded
            log.warning("cache invalidation after %s %s failed: %s", request.method, request.raw_path, exc)
    return response


def observe_served(
    state: ProxyState, started: float, method: str, raw_path: str, status: int, x_cache: str | None, decided: Decided
) -> float:
    """What every proxied request records once answered (the general path and the hit lane alike): request and
    cache metrics, and the decision log line. Returns the seconds it took."""
    seconds = time.perf_counter() - started
    state.metrics.observe_request("page" if decided.manifest is not None else "passthrough", status, seconds)
    if x_cache is not None:
        state.metrics.cache_result(x_cache)
    if state.decision_log is not None and decided.manifest is not None and decided.ctx is not None:
        state.decision_log.write(
            ctx=decided.ctx, manifest=decided.manifest, snapshot=decided.snapshot, method=method, path=raw_path,
            tags=decided.tags, status=status, cache=x_cache, started=started,
        )  # fmt: skip
    return seconds


async def _proxy(request: web.BaseRequest, state: ProxyState, decided: Decided) -> web.StreamResponse:
    config = state.config
    state.counters.requests += 1
    where = client_view(request, state)
    if where.refusal is not None:
        return refuse(request, where.refusal)
    host = where.host
    upgrade = request.headers.get("Upgrade")
    if (
        upgrade is not None and upgrade.lower() == "websocket" and request.method == "GET"
        and "Sec-WebSocket-Key" in request.headers
    ):  # fmt: skip
        bridged = await _websocket(request, state, upstream_request_headers(request, state, where))
        if bridged is not None:
            return bridged
        # The origin declined the upgrade (RFC 9110 §7.8 lets it ignore Upgrade): its plain answer goes through,
        # fetched below as an ordinary request. Without a Sec-WebSocket-Key it is no handshake at all: the same.

    route = state.routes.decide(request.path)
    loaded = state.holder.current
    cookies = NO_COOKIES
    manifest = None
    impressions = None
    personalized = route.personalize and loaded is not None
    raw_path, _, query = request.raw_path.partition("?")
    if personalized:
        assert loaded is not None
        identity = state.identities.of(request.headers)
        known, stored = attributes_at_hand(state, loaded, identity)
        if not known:
            stored = await state.stored_attributes(loaded.snapshot.project.uid, identity.user_uid)
        decision = personalize(state, loaded, route.tags, request.headers, request.raw_path, query, where,
                               identity, stored)  # fmt: skip
        record_personalization(state, decision, decided)
        manifest, cookies = decision.manifest, decision.cookies
        if config.variant_query_param:
            query = _with_param(query, config.variant_query_param, manifest.variant_param)
        explain_header = (
            _debug_explanation(request, state, loaded.snapshot, decision.ctx, route.tags)
            if config.ops_token and "X-Edgeproxy-Explain" in request.headers
            else None
        )
        impressions = response_hook(state, manifest, explain_header)
    else:
        state.counters.passed_through += 1

    has_body = request.body_exists
    variant_param = manifest.variant_param if manifest is not None else ""
    x_cache = None
    cache = state.cache
    cache_key = ""
    fetched = None
    if cache is not None and request.method in ("GET", "HEAD") and not has_body and route.cache and upgrade is None:
        # A fresh hit is served from the client's request as it is, before any upstream request is built.
        early = caching.early_key(request.headers, request.raw_path, cache, host, variant_param)
        if early is not None:
            view, cache_key = early
            if not cache.passes(cache_key, state.clock()):
                get_now = cache.get_now  # a memory store answers without a coroutine
                entry = get_now(cache_key) if get_now is not None else await cache.fetch(cache_key)
                hit = caching.early_hit(request, state, view, entry, cookies, personalized, impressions)
                if hit is not None:
                    return hit
                fetched = (entry,)

    target = f"{state.origin_base_path}{raw_path}{'?' + query if query else ''}"
    upstream_headers = upstream_request_headers(request, state, where)
    if manifest is not None:
        assert loaded is not None
        add_upstream_headers(upstream_headers, manifest, config.cda_variant_limit, loaded.snapshot.version)
    if cache is not None:
        if not cache_key and request.method in ("GET", "HEAD") and not has_body and route.cache:
            cache_key = cache.key(host, request.raw_path, variant_param, upstream_headers)
        if cache_key and cache.passes(cache_key, state.clock()):
            # Hit-for-pass: this key's responses are not storable; forward directly, like an uncached route.
            x_cache = "MISS"
            cache.counts["miss"] += 1
        elif cache_key:
            return await caching.cached_exchange(
                request, state, cache_key, request.raw_path, target, upstream_headers, cookies, personalized,
                impressions, fetched,
            )  # fmt: skip
        else:
            x_cache = "BYPASS"
    try:
        upstream = await state.upstream.request(
            request.method, target, upstream_headers, request.content if has_body else None
        )
    except ClientBodyError as exc:  # the client's body broke its framing, stalled, or the client went away
        log.info("%s request from %s: request body refused: %s", request.method, where.peer, exc)
        return client_body_failed(request, exc.status)
    except TimeoutError as exc:
        return _origin_failed(request, state, 504, "origin_timeout", "The origin did not answer in time.", exc)
    except OSError as exc:
        return _origin_failed(request, state, 502, "origin_unreachable", "The origin could not be reached.", exc)

    try:
        response, _ = await relay(
            request, upstream, cookies, personalized, config, x_cache=x_cache, impressions=impressions
        )
        return response
    finally:
        upstream.release()


def client_body_failed(request: web.BaseRequest, status: int) -> web.Response:
    """The answer when the client's side of a relayed body failed (the origin's connection is dropped)."""
    if status == 408:
        bad = error_response(408, "body_timeout", "The request body did not arrive in time.",
                             request.headers.get("Accept"))  # fmt: skip
    else:
        bad = error_response(400, "bad_body", "The request body is not framed correctly.",
                             request.headers.get("Accept"))  # fmt: skip
    bad.force_close()
    return bad


def upstream_request_headers(request: web.BaseRequest, state: ProxyState, where: ClientView) -> CIMultiDict[str]:
    """The client's end-to-end headers for the origin, with Host and X-Forwarded-* set."""
    headers = end_to_end(request.headers, UPSTREAM_REMOVED)
    # X-Forwarded-*: a trusted peer's chain is kept and extended; an untrusted one is replaced, not believed.
    peer = where.peer
    chain = f"{where.forwarded_for}, {peer}" if where.trusted and where.forwarded_for else (peer or "")
    if chain:
        headers["X-Forwarded-For"] = chain
    headers["X-Forwarded-Proto"] = where.proto
    headers["X-Forwarded-Host"] = where.host
    if not where.trusted:
        headers.popall("Forwarded", None)
    headers["Host"] = request.host if state.config.preserve_host else state.origin_host
    return headers


def _debug_explanation(
    request: web.BaseRequest, state: ProxyState, snapshot: CompiledSnapshot, ctx: VisitorContext,
    tags: tuple[str, ...] | None,
) -> str | None:  # fmt: skip
    """`X-Edgeproxy-Explain: <ops_token>` on a request -> a compact why-this-variant header on the response."""
    asked = request.headers.get("X-Edgeproxy-Explain")
    token = state.config.ops_token
    if not asked or not same_token(asked, token):
        return None
    from edgeproxy.engine.explain import explain

    trace = explain(snapshot, ctx, tags)
    summary = "; ".join(f"{e['shortUid']}={e['activeVariantShortUid']} ({e['reason']})" for e in trace["experiences"])
    return f"snapshot={snapshot.version} user={ctx.user_uid}; {summary}"[:8000]


def same_token(given: str, token: str) -> bool:
    """Whether a client-sent token (a header or query value) is `token`, in constant time. Header values hold
    obs-text bytes as surrogate escapes, which plain `.encode()` refuses: they are compared as the bytes sent."""
    return bool(token) and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
    )


def _with_param(query: str, name: str, value: str) -> str:
    from urllib.parse import quote

    kept = [part for part in query.split("&") if part and part.split("=", 1)[0] != name]
    kept.append(f"{quote(name, safe='')}={quote(value, safe=',_')}")
    return "&".join(kept)


def _origin_failed(
    request: web.BaseRequest, state: ProxyState, status: int, code: str, message: str, exc: BaseException
) -> web.Response:
    state.counters.origin_errors += 1
    state.metrics.origin_error(status)
    log.warning("%s %s -> %d %s: %r", request.method, request.path_qs, status, code, exc)
    return error_response(status, code, message, request.headers.get("Accept"))


# Response headers meant for caches like us, not for browsers (Fastly semantics).
SURROGATE_HEADERS = frozenset({"surrogate-key", "surrogate-control"})


@dataclass(slots=True)
class ResponseHook:
    """Runs as a personalized response's headers go out: records its impressions (see impressions.py) and
    adds the token-protected `X-Edgeproxy-Explain` debug header when it was asked for."""

    recorder: ImpressionRecorder | None
    manifest: Manifest
    server_side: bool
    explain: str | None = None

    def __call__(self, headers: CIMultiDict[str], applied: str | None) -> None:
        if self.recorder is not None:
            if applied:
                self.recorder.confirmed(self.manifest.user_uid, applied)
            if self.server_side and headers.get("Content-Type", "").lower().startswith("text/html"):
                self.recorder.served(self.manifest)
        if self.explain is not None:
            headers["X-Edgeproxy-Explain"] = self.explain


def response_hook(state: ProxyState, manifest: Manifest, explain: str | None = None) -> ResponseHook | None:
    if state.impressions is None and explain is None:
        return None
    return ResponseHook(state.impressions, manifest, state.config.impressions == "proxy", explain)


@functools.cache
def _response_removed(applied_variants_header: str) -> frozenset[str]:
    return removal_set(*SURROGATE_HEADERS, applied_variants_header)  # a pure function: computed once per name


@dataclass(frozen=True, slots=True)
class ClientBase:
    """An origin response's headers as every browser gets them; the per-request part is added by `finish`.
    The response cache keeps one per stored entry, so a hit copies it instead of rebuilding it."""

    headers: CIMultiDict[str]  # end-to-end, without surrogate headers and the applied-variants report
    applied: str | None  # the origin's applied-variants report (origin-confirmed impressions)
    html: bool
    applied_header: str  # the configured name it was read from

    @classmethod
    def of(cls, origin_headers: CIMultiDict[str] | CIMultiDictProxy[str], config: ProxyConfig) -> ClientBase:
        name = config.applied_variants_header
        headers = end_to_end(origin_headers, _response_removed(name))
        html = headers.get("Content-Type", "").lower().startswith("text/html")
        return cls(headers, origin_headers.get(name), html, name)

    def finish(
        self,
        headers: CIMultiDict[str],
        cookies: SetCookies,
        personalized: bool,
        config: ProxyConfig,
        x_cache: str | None = None,
        impressions: ResponseHook | None = None,
    ) -> None:
        """Add this request's part to `headers` (a copy of `self.headers`): impressions and the debug header,
        our cookies, no-store on personalized HTML, X-Cache."""
        if impressions is not None:
            impressions(headers, self.applied)
        for value in cookies.values:
            headers.add("Set-Cookie", value)
        if personalized and self.html and config.no_store_personalized_html:
            headers["Cache-Control"] = "no-store"  # contract §7: personalized HTML is never cached downstream
        if x_cache is not None:
            headers["X-Cache"] = x_cache


def client_headers(
    origin_headers: CIMultiDict[str] | CIMultiDictProxy[str],
    cookies: SetCookies,
    personalized: bool,
    config: ProxyConfig,
    x_cache: str | None = None,
    impressions: ResponseHook | None = None,
) -> CIMultiDict[str]:
    """What the browser gets: end-to-end origin headers, our cookies, no-store on personalized HTML.
    The origin's applied-variants report is recorded (origin-confirmed impressions) and stripped."""
    base = ClientBase.of(origin_headers, config)
    base.finish(base.headers, cookies, personalized, config, x_cache, impressions)
    return base.headers


async def relay(
    request: web.BaseRequest,
    upstream: UpstreamResponse,
    cookies: SetCookies,
    personalized: bool,
    config: ProxyConfig,
    *,
    x_cache: str | None = None,
    on_chunk: Callable[[bytes], None] | None = None,
    impressions: ResponseHook | None = None,
) -> tuple[web.StreamResponse, bool]:
    """Stream the origin's response to the client. Returns (response, the body arrived complete)."""
    headers = client_headers(upstream.headers, cookies, personalized, config, x_cache, impressions)
    length = upstream.headers.get("Content-Length")
    no_body = request.method == "HEAD" or upstream.status in NO_BODY_STATUSES or upstream.status < 200
    if no_body:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None and request.method == "HEAD":
            response.headers["Content-Length"] = length
        await response.prepare(request)
        await response.write_eof()
        return response, True
    if upstream.body_complete:
        # The whole body came with the headers (most pages): one write of headers and body to the client.
        body = upstream.take_body()
        if on_chunk is not None:
            on_chunk(body)
        if prebuilt_allowed(request):
            return whole_response(upstream.status, upstream.reason, headers, body), True
        headers.popall("Content-Length", None)
        return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body), True
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if length is not None:
        response.content_length = int(length)
    await response.prepare(request)
    try:
        async for chunk in upstream.iter_chunks():
            if on_chunk is not None:
                on_chunk(chunk)
            await response.write(chunk)
    except OSError as exc:  # UpstreamError, TimeoutError: the origin failed mid-body
        # Headers are gone already: the only honest signal left is to cut the connection.
        log.warning("%s %s: origin body failed mid-stream: %r", request.method, request.path_qs, exc)
        if request.transport is not None:
            request.transport.close()
        return response, False
    await response.write_eof()
    return response, True


async def _websocket(
    request: web.BaseRequest, state: ProxyState, headers: CIMultiDict[str]
) -> web.StreamResponse | None:
    """Bridge a WebSocket; None when the origin answered the handshake with something else than 101."""
    state.counters.websockets += 1
    for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept"):
        headers.popall(name, None)
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    headers.popall("Sec-WebSocket-Protocol", None)
    target = state.origin.with_path(state.origin_base_path + request.path).with_query(request.query)
    target = target.with_scheme("wss" if state.origin.scheme == "https" else "ws")
    try:
        upstream = await state.session.ws_connect(
            target, headers=headers, protocols=protocols, autoping=False, max_msg_size=0
        )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status != 101:
            state.counters.websockets -= 1
            return None
        return _origin_failed(request, state, 502, "origin_websocket_refused", "The origin refused the WebSocket.", exc)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return _origin_failed(request, state, 502, "origin_unreachable", "The origin could not be reached.", exc)
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (), autoping=False, max_msg_size=0
    )
    await client.prepare(request)

    async def pump(
        source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
        sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    ) -> None:
        async for message in source:
            if message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.PING:
                await sink.ping(message.data)
            elif message.type == aiohttp.WSMsgType.PONG:
                await sink.pong(message.data)
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                break
        if not sink.closed:
            await sink.close(code=source.close_code or aiohttp.WSCloseCode.OK)

    tasks = [asyncio.ensure_future(pump(client, upstream)), asyncio.ensure_future(pump(upstream, client))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not upstream.closed:
            await upstream.close()
        if not client.closed:
            await client.close()
    return client


RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# Ops and the Edge API: handlers of (request, state) under a reserved prefix.
ReservedHandler = Callable[[web.BaseRequest, ProxyState], Awaitable[web.StreamResponse]]


def build_handler(state: ProxyState, reserved: dict[str, tuple[str, ReservedHandler]]) -> RequestHandler:
    """The one handler every request goes to. `reserved` maps path prefixes to (metrics kind, handler): ops and
    the Edge API, never forwarded; everything else is proxied."""
    # Lower-cased prefixes, with their slash-less spelling: the prefix itself without the trailing slash is ours too.
    prefixes = tuple(
        (prefix.lower(), prefix.lower().rstrip("/"), kind, handler) for prefix, (kind, handler) in reserved.items()
    )

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        # The gate first, for every request (hitlane.py's lane asks it too, before it answers).
        refusal = check_request(
            request.method, request.raw_path, request.version, request.raw_headers, values_checked=LLHTTP_STRICT
        )
        if refusal is not None:
            return refuse(request, refusal)
        if request.raw_path[:1] != "/":  # absolute-form or `OPTIONS *`, as the gate let through
            if request.raw_path == "*":
                return web.Response(status=200, headers={"Allow": ALLOWED_METHODS, "Content-Length": "0"})
            request = _in_origin_form(request)
        if "Expect" in request.headers:
            expected = await _expect(request)
            if expected is not None:
                return expected
        # Reserved prefixes: matched on the decoded, dot-segment-resolved and raw path, case-insensitively,
        # so an encoded or re-cased spelling cannot slip a proxy-internal path through to the origin.
        path = _normalized(request.path).lower()
        raw = request.raw_path.lower()
        for prefix, bare, kind, handler in prefixes:
            if path.startswith(prefix) or raw.startswith(prefix) or path.rstrip("/") == bare:
                started = time.perf_counter()
                response = await handler(request, state)
                state.metrics.observe_request(kind, response.status, time.perf_counter() - started)
                return response
        return await proxy_handler(request, state)

    return dispatch


ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# aiohttp's C request parser is llhttp in strict mode: it refuses control characters in header values itself
# (tests/e2e/test_gate_hostile.py holds it to that), so the gate need not scan every value byte again.
# The pure-Python fallback parser does not: then the gate does.
LLHTTP_STRICT = HttpRequestParser is not HttpRequestParserPy


def refuse(request: web.BaseRequest, refusal: Refusal) -> web.Response:
    """The gate's answer: a short page (JSON when Accept asks for it), logged in one line, connection closed
    (after a refused head nothing else on the connection can be trusted to be framed as its sender meant)."""
    log.info("refused request from %s: %d %s", peer_address(request), refusal.status, refusal.code)
    response = refusal_response(refusal, request.headers.get("Accept"))
    if refusal.status == 405:
        response.headers["Allow"] = ALLOWED_METHODS
    response.force_close()
    if request.version != HttpVersion11 and request.version != HttpVersion10:
        answer_in_http11(request)  # not `HTTP/2.0 400` or `HTTP/0.9 400`, which no HTTP/1.x client reads
    return response


def _in_origin_form(request: web.BaseRequest) -> web.BaseRequest:
    """RFC 9112 §3.2.2: an absolute-form target is forwarded in origin-form, its authority replacing Host."""
    path, authority = origin_form(request.raw_path)
    headers = request.headers.copy()
    headers["Host"] = authority
    return request.clone(rel_url=URL(path, encoded=True), headers=headers)


async def _expect(request: web.BaseRequest) -> web.StreamResponse | None:
    """RFC 9110 §10.1.1, as aiohttp's router does it: `100 Continue` before the body is read (and streamed on)."""
    if request.headers["Expect"].lower() != "100-continue":
        return web.Response(status=417, text="Only Expect: 100-continue is supported.\n")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    return None


def build_server(state: ProxyState, reserved: dict[str, tuple[str, ReservedHandler]], **kwargs: Any) -> web.Server:
    """aiohttp's low-level server around `build_handler`: no router, middleware chain or Application
    signals, which one catch-all route would not use anyway (about 30 µs less CPU per request, measured with
    wrk on a minimal handler). With the response cache on, fresh hits of the in-memory store are
    answered as they are parsed (hitlane.py, caching.lane_answer).
    The caller starts and stops `state` (see server.serve)."""
    handler = build_handler(state, reserved)
    # Request bodies are relayed as the exact bytes the client framed: never inflated (a gzip body could
    # otherwise carry a request of its own past the gate). The Edge API decodes what it reads itself.
    kwargs["auto_decompress"] = False
    if state.cache is not None:
        access_log = kwargs.get("access_log")
        answer = caching.lane_answer(state, access_log if state.config.access_log else None)
        return HitLaneServer(handler, answer, **kwargs)
    return GatedServer(handler, **kwargs)


def _normalized(path: str) -> str:
    """Resolve `.`/`..` segments and empty segments, as an origin would before routing."""
    if "/." not in path and "//" not in path:
        return path
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    return "/" + "/".join(parts) + ("/" if path.endswith("/") and parts else "")


# The cache's HTTP side builds on this module (relay, ClientBase, ...); imported last, so either can load first.
from edgeproxy.proxy import caching  # noqa: E402
