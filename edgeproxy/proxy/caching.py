"""The HTTP side of the response cache: serve hits, coalesce misses, revalidate, serve stale on errors.

    HIT          fresh entry for this key (method, URL, variant set, key headers)
    STALE        served stale: within stale-while-revalidate (refreshing in the background), or within
                 stale-if-error because the origin failed
    REVALIDATED  the stored entry was confirmed by the origin with a 304
    MISS         fetched from the origin (and stored when RFC 9111 allows)
    BYPASS       not a cache candidate (method, body, route with cache = false)
N concurrent misses for one key make one origin request; the others wait for it and are served its entry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from time import perf_counter

from aiohttp import web
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDict, CIMultiDictProxy

from edgeproxy.cache.layer import ResponseCache
from edgeproxy.cache.rules import parse_cache_control
from edgeproxy.cache.store import CachedResponse, MemoryCacheStore
from edgeproxy.http.access_log import access_line
from edgeproxy.http.aiohttp_internals import LaneAnswer
from edgeproxy.http.gate import check as check_request
from edgeproxy.http.headers import connection_listed, removal_set
from edgeproxy.http.prebuilt import PrebuiltResponse, date_line, head_lines, prebuilt_allowed
from edgeproxy.proxy.app import (
    LLHTTP_STRICT,
    UPSTREAM_REMOVED,
    ClientBase,
    Decided,
    ProxyState,
    ResponseHook,
    _origin_failed,
    attributes_at_hand,
    observe_served,
    personalize,
    record_personalization,
    relay,
    response_hook,
    view_of_client,
)
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.visitor.personalize import NO_COOKIES, SetCookies

CONDITIONAL_REQUEST_HEADERS = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range")


def _weak_match(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2: If-None-Match uses the weak comparison (W/ prefixes ignored)."""
    if if_none_match.strip() == "*":
        return True
    own = etag.strip().removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == own for tag in if_none_match.split(","))


# Request headers that do not reach the origin as the client sent them: removed, replaced or set by the proxy.
REWRITTEN_REQUEST_HEADERS = removal_set(
    *UPSTREAM_REMOVED, "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded",
    *CONDITIONAL_REQUEST_HEADERS,
)  # fmt: skip


class CacheView:
    """Whether a cache decision can be made on the client's own request headers: true for every header name
    that reaches the origin unchanged, which is what the key and the stored Vary values were computed from."""

    __slots__ = ("_headers", "_rewritten")

    def __init__(self, headers: CIMultiDictProxy[str]) -> None:
        self._headers = headers
        self._rewritten = (
            REWRITTEN_REQUEST_HEADERS | connection_listed(headers) if "Connection" in headers
            else REWRITTEN_REQUEST_HEADERS
        )  # fmt: skip

    def passes_unchanged(self, names: tuple[str, ...]) -> bool:
        """`names` are lower-case."""
        rewritten = self._rewritten
        return not any(name in rewritten for name in names)

    def selects(self, entry: CachedResponse) -> bool:
        """RFC 9111 §4.1 on the client's headers; False also when a Vary name is one the proxy rewrites (the
        full exchange decides those)."""
        rewritten, get = self._rewritten, self._headers.get
        for name, value in entry.vary:  # names are stored lower-case
            if name in rewritten or get(name, "") != value:
                return False
        return True


def early_key(
    headers: CIMultiDictProxy[str], raw_path: str, cache: ResponseCache, host: str, variant_param: str
) -> tuple[CacheView, str] | None:
    """The cache key computed from the client's request as it is, with the view that can tell whether an entry
    is selected by it, when the key's headers reach the origin unchanged (CacheView); None otherwise (the full
    exchange computes the key from the upstream headers)."""
    view = CacheView(headers)
    if cache.key_headers and not view.passes_unchanged(cache.key_headers):
        return None
    return view, cache.key(host, raw_path, variant_param, headers)


def fresh_selected(view: CacheView, entry: CachedResponse | None, now: float) -> CachedResponse | None:
    """`entry` when it can be served as a fresh hit on the client's own headers, else None."""
    return entry if entry is not None and entry.fresh(now) and view.selects(entry) else None


def early_hit(
    request: web.BaseRequest,
    state: ProxyState,
    view: CacheView,
    entry: CachedResponse | None,
    cookies: SetCookies,
    personalized: bool,
    impressions: ResponseHook | None,
) -> web.StreamResponse | None:
    """A fresh hit served before any upstream request is built, when the client's headers select `entry`."""
    hit = fresh_selected(view, entry, state.clock())
    if hit is not None:
        return serve_entry(request, state, hit, "HIT", cookies, personalized, impressions)
    return None


class _Prepared:
    """What serving an entry needs that is the same for every hit, derived once per entry (and configured
    applied-variants header name): the browser-facing headers, and the prebuilt head for plain GETs."""

    __slots__ = ("base", "heads")

    def __init__(self, base: ClientBase) -> None:
        self.base = base
        self.heads: dict[bool, bytes] = {}  # no-store or not -> status line and constant headers

    def head(self, entry: CachedResponse, no_store: bool) -> bytes:
        found = self.heads.get(no_store)
        if found is None:
            headers = list(self.base.headers.items())
            if no_store:  # docs/contract.md §7, as ClientBase.finish does
                headers = [(k, v) for k, v in headers if k.lower() != "cache-control"] + [("Cache-Control", "no-store")]
            names = {name.lower() for name, _ in headers}
            lines = head_lines(entry.status, entry.reason, headers, len(entry.body), names=names)
            found = self.heads[no_store] = "".join(lines).encode("utf-8", "surrogateescape")
        return found


def _prepared(entry: CachedResponse, config: ProxyConfig) -> _Prepared:
    prepared = entry.prepared
    if not isinstance(prepared, _Prepared) or prepared.base.applied_header != config.applied_variants_header:
        base = ClientBase.of(CIMultiDict(entry.headers), config)
        base.headers.popall("Content-Length", None)  # aiohttp sets it from the body (and keeps it for HEAD)
        prepared = entry.prepared = _Prepared(base)
    return prepared


def serve_entry(
    request: web.BaseRequest,
    state: ProxyState,
    entry: CachedResponse,
    label: str,
    cookies: SetCookies,
    personalized: bool,
    impressions: ResponseHook | None = None,
) -> web.StreamResponse:
    config = state.config
    prepared = _prepared(entry, config)
    base = prepared.base
    inm = request.headers.get("If-None-Match")
    not_modified = bool(entry.etag and inm and entry.status == 200 and _weak_match(inm, entry.etag))
    if not not_modified and prebuilt_allowed(request) and (impressions is None or impressions.explain is None):
        # The common case, prebuilt: constant head + this visitor's lines + body, in one write.
        parts = entry_parts(state, entry, prepared, label, cookies.lines, personalized, impressions)
        return PrebuiltResponse(entry.status, entry.reason, parts, len(entry.body), label)
    state.cache.counts[label.lower()] += 1  # type: ignore[union-attr]
    age = int(entry.age(state.clock()))
    if not_modified:
        response = web.Response(status=304, headers=base.headers)  # the browser's copy is current
    else:
        # For HEAD, aiohttp sends the headers (with this body's Content-Length) and no body.
        response = web.Response(status=entry.status, reason=entry.reason, headers=base.headers, body=entry.body)
    headers = response.headers  # aiohttp's own copy of base.headers
    base.finish(headers, cookies, personalized, config, label, impressions)
    headers["Age"] = str(age)
    return response


def entry_parts(
    state: ProxyState,
    entry: CachedResponse,
    prepared: _Prepared,
    label: str,
    cookie_lines: str,
    personalized: bool,
    impressions: ResponseHook | None,
) -> tuple[bytes, bytes, bytes]:
    """A stored entry as the bytes of a whole HTTP/1.1 keep-alive response (no debug header asked for): the
    entry's constant head, this visitor's lines (`cookie_lines`: SetCookies.lines), the body. Counts the cache
    result and the impressions."""
    base = prepared.base
    state.cache.counts[label.lower()] += 1  # type: ignore[union-attr]
    if impressions is not None:
        impressions(base.headers, base.applied)  # records; without a debug header it adds nothing
    no_store = personalized and base.html and state.config.no_store_personalized_html
    dynamic = f"{cookie_lines}X-Cache: {label}\r\nAge: {int(entry.age(state.clock()))}\r\n"
    if "Date" not in base.headers:
        dynamic += date_line()
    return prepared.head(entry, no_store), (dynamic + "\r\n").encode("utf-8", "surrogateescape"), entry.body


def lane_answer(state: ProxyState, access_log: logging.Logger | None) -> LaneAnswer:
    """The hit lane's question (hitlane.py): is this parsed GET a fresh hit of the in-memory cache whose
    response can be sent whole? Then its bytes, with everything the general path records for a hit (counters,
    decision metrics and live counts, impressions, cache and request metrics, decision and access logs);
    otherwise None, having recorded nothing, and the general path handles the request from the start.
    The same functions decide and record here as there (view_of_client, personalize, early_key, fresh_selected,
    entry_parts, record_personalization, observe_served)."""

    def answer(message: RawRequestMessage, peer: str | None, scheme: str) -> Sequence[bytes] | None:
        started = perf_counter()
        raw_path = message.path
        headers = message.headers
        cache = state.cache
        if cache is None:
            return None
        store = cache.store
        if not isinstance(store, MemoryCacheStore) or not store.holds_path(raw_path):
            return None  # the cheap no: nothing is stored for this URL
        if check_request("GET", raw_path, message.version, message.raw_headers, values_checked=LLHTTP_STRICT):
            return None  # the general path asks the gate again and answers its refusal
        config = state.config
        host = headers.get("Host")
        url = message.url
        if host is None or url.absolute or "Upgrade" in headers:
            return None  # absolute-form targets and upgrades: the general path
        if config.ops_token and "X-Edgeproxy-Explain" in headers:
            return None  # a debug explanation: the general path adds it
        # Not a reserved path (ops, Edge API) either: those never reach the proxy, so nothing is ever stored
        # for them (holds_path above), and their prefixes are fixed for the life of the process.
        route = state.routes.decide(url.path)
        if not route.cache or "If-None-Match" in headers:
            return None  # not cached here / answered with a 304 by the general path
        where = view_of_client(state, peer, scheme, host, headers)
        if where.refusal is not None:
            return None  # refused by the general path
        loaded = state.holder.current
        decision = None
        variant_param = ""
        if route.personalize and loaded is not None:
            identity = state.identities.of(headers)
            known, stored = attributes_at_hand(state, loaded, identity)
            if not known:
                return None  # the stored attributes need a store round trip
            decision = personalize(state, loaded, route.tags, headers, raw_path, raw_path.partition("?")[2], where,
                                   identity, stored)  # fmt: skip
            variant_param = decision.manifest.variant_param
        early = early_key(headers, raw_path, cache, where.host, variant_param)
        if early is None:
            return None
        view, key = early
        now = state.clock()
        if cache.passes(key, now):
            return None
        entry = fresh_selected(view, store.get_now(key), now)
        if entry is None:
            return None
        # A fresh hit: from here on it is answered, and counted as the general path counts one.
        state.counters.requests += 1
        decided = Decided()
        impressions = None
        cookies = NO_COOKIES
        if decision is not None:
            record_personalization(state, decision, decided)
            impressions = response_hook(state, decision.manifest)
            cookies = decision.cookies
        else:
            state.counters.passed_through += 1
        parts = entry_parts(state, entry, _prepared(entry, config), "HIT", cookies.lines, decision is not None,
                            impressions)  # fmt: skip
        seconds = observe_served(state, started, "GET", raw_path, entry.status, "HIT", decided)
        if access_log is not None and access_log.isEnabledFor(logging.INFO):
            access_log.info(access_line(
                remote=peer, method="GET", raw_path=raw_path, status=entry.status, body_bytes=len(entry.body),
                seconds=seconds, manifest=decided.manifest, snapshot=decided.snapshot or None, cache="HIT",
            ))  # fmt: skip
        return parts

    return answer


async def cached_exchange(
    request: web.BaseRequest,
    state: ProxyState,
    key: str,
    path: str,
    target: str,
    upstream_headers: CIMultiDict[str],
    cookies: SetCookies,
    personalized: bool,
    impressions: ResponseHook | None = None,
    fetched: tuple[CachedResponse | None] | None = None,
) -> web.StreamResponse:
    """`fetched`: the store's answer for `key` when the caller asked already (one store round trip a request)."""
    cache = state.cache
    assert cache is not None
    for name in CONDITIONAL_REQUEST_HEADERS:  # the cache fetches for everyone; it answers conditionals itself
        upstream_headers.popall(name, None)
    entry = cache.selected(fetched[0] if fetched is not None else await cache.fetch(key), upstream_headers)
    now = state.clock()
    if entry is not None:
        if entry.fresh(now):
            return serve_entry(request, state, entry, "HIT", cookies, personalized, impressions)
        if entry.within_swr(now):
            stale = entry
            cache.revalidate_in_background(key, lambda: _refresh(state, key, path, target, upstream_headers, stale))
            return serve_entry(request, state, entry, "STALE", cookies, personalized, impressions)
    if request.method == "HEAD" or (entry is None and cache.passes(key, now)):
        return await _forward(request, state, target, upstream_headers, cookies, personalized, "MISS", impressions)

    leader = cache.inflight.get(key)
    if leader is not None:
        # Coalesced: wait for the request already on its way to the origin for this key.
        cache.counts["coalesced"] += 1
        try:
            result = await asyncio.wait_for(asyncio.shield(leader), timeout=state.config.read_timeout)
        except TimeoutError:
            result = None
        if result is not None:
            shared, label = result
            if all(upstream_headers.get(name, "") == value for name, value in shared.vary):  # RFC 9111 §4.1
                return serve_entry(request, state, shared, label, cookies, personalized, impressions)
        return await _forward(request, state, target, upstream_headers, cookies, personalized, "MISS", impressions)

    future: asyncio.Future[tuple[CachedResponse, str] | None] = asyncio.get_running_loop().create_future()
    cache.inflight[key] = future
    try:
        return await _lead(
            request, state, key, path, target, upstream_headers, cookies, personalized, entry, future, impressions
        )
    finally:
        cache.inflight.pop(key, None)
        if not future.done():
            future.set_result(None)


async def _lead(
    request: web.BaseRequest,
    state: ProxyState,
    key: str,
    path: str,
    target: str,
    upstream_headers: CIMultiDict[str],
    cookies: SetCookies,
    personalized: bool,
    entry: CachedResponse | None,
    future: asyncio.Future[tuple[CachedResponse, str] | None],
    impressions: ResponseHook | None,
) -> web.StreamResponse:
    cache = state.cache
    assert cache is not None
    headers = CIMultiDict(upstream_headers)
    if entry is not None:  # RFC 9111 §4.3.1: validate what we have
        if entry.etag:
            headers["If-None-Match"] = entry.etag
        if entry.last_modified:
            headers["If-Modified-Since"] = entry.last_modified
    request_time = state.clock()
    try:
        upstream = await state.upstream.request("GET", target, headers)
    except OSError as exc:  # TimeoutError, UpstreamError
        if entry is not None and entry.within_sie(state.clock()):
            future.set_result((entry, "STALE"))  # requests waiting on this fetch get the stale copy too
            return serve_entry(request, state, entry, "STALE", cookies, personalized, impressions)  # RFC 5861 §4
        if isinstance(exc, TimeoutError):
            return _origin_failed(request, state, 504, "origin_timeout", "The origin did not answer in time.", exc)
        return _origin_failed(request, state, 502, "origin_unreachable", "The origin could not be reached.", exc)
    try:
        response_time = state.clock()
        if upstream.status == 304 and entry is not None:
            refreshed = cache.refreshed(entry, list(upstream.headers.items()), request_time, response_time)
            await cache.put(key, refreshed)
            future.set_result((refreshed, "REVALIDATED"))
            return serve_entry(request, state, refreshed, "REVALIDATED", cookies, personalized, impressions)
        if upstream.status >= 500 and entry is not None and entry.within_sie(response_time):
            future.set_result((entry, "STALE"))
            return serve_entry(request, state, entry, "STALE", cookies, personalized, impressions)
        candidate = cache.build_entry(
            status=upstream.status, reason=upstream.reason or "", headers=list(upstream.headers.items()), body=b"",
            path=path, upstream_headers=headers, request_time=request_time, response_time=response_time,
        )  # fmt: skip
        if candidate is not None and "no-store" in parse_cache_control(request.headers.getall("Cache-Control", [])):
            cache.not_stored["request no-store"] += 1  # RFC 9111 §5.2.1.5
            candidate = None
        length = upstream.headers.get("Content-Length")
        if candidate is not None and length is not None and int(length) > cache.max_object_bytes:
            cache.not_stored["too large"] += 1
            candidate = None
        buffer = bytearray() if candidate is not None else None
        limit = cache.max_object_bytes

        def keep(chunk: bytes) -> None:
            nonlocal buffer
            if buffer is not None:
                buffer += chunk
                if len(buffer) > limit:  # streamed on, but not stored
                    cache.not_stored["too large"] += 1
                    buffer = None

        cache.counts["miss"] += 1
        response, complete = await relay(
            request,
            upstream,
            cookies,
            personalized,
            state.config,
            x_cache="MISS",
            on_chunk=keep,
            impressions=impressions,
        )
        if candidate is not None and buffer is not None and complete:
            candidate.body = bytes(buffer)
            await cache.put(key, candidate)
            future.set_result((candidate, "HIT"))
        else:
            cache.remember_uncacheable(key, state.clock())
        return response
    finally:
        upstream.release()


async def _forward(
    request: web.BaseRequest,
    state: ProxyState,
    target: str,
    headers: CIMultiDict[str],
    cookies: SetCookies,
    personalized: bool,
    label: str,
    impressions: ResponseHook | None = None,
) -> web.StreamResponse:
    try:
        upstream = await state.upstream.request(request.method, target, headers)
    except TimeoutError as exc:
        return _origin_failed(request, state, 504, "origin_timeout", "The origin did not answer in time.", exc)
    except OSError as exc:
        return _origin_failed(request, state, 502, "origin_unreachable", "The origin could not be reached.", exc)
    try:
        state.cache.counts[label.lower()] += 1  # type: ignore[union-attr]
        response, _ = await relay(
            request, upstream, cookies, personalized, state.config, x_cache=label, impressions=impressions
        )
        return response
    finally:
        upstream.release()


async def _refresh(
    state: ProxyState, key: str, path: str, target: str, upstream_headers: CIMultiDict[str], entry: CachedResponse
) -> None:
    """Background revalidation for stale-while-revalidate: conditional GET, store the result."""
    cache = state.cache
    assert cache is not None
    headers = CIMultiDict(upstream_headers)
    if entry.etag:
        headers["If-None-Match"] = entry.etag
    if entry.last_modified:
        headers["If-Modified-Since"] = entry.last_modified
    request_time = state.clock()
    up = await state.upstream.request("GET", target, headers)
    try:
        response_time = state.clock()
        if up.status == 304:
            await cache.put(key, cache.refreshed(entry, list(up.headers.items()), request_time, response_time))
            cache.counts["background_revalidated"] += 1
            return
        if up.status >= 500:
            return  # keep serving stale within its windows
        length = up.headers.get("Content-Length")
        if length is not None and int(length) > cache.max_object_bytes:
            return
        collected = bytearray()
        async for chunk in up.iter_chunks():  # the whole body, however it is chunked
            collected += chunk
            if len(collected) > cache.max_object_bytes:
                return
        body = bytes(collected)
        fresh = cache.build_entry(
            status=up.status, reason=up.reason or "", headers=list(up.headers.items()), body=body, path=path,
            upstream_headers=headers, request_time=request_time, response_time=response_time,
        )  # fmt: skip
        if fresh is not None:
            await cache.put(key, fresh)
            cache.counts["background_refreshed"] += 1
    finally:
        up.release()
