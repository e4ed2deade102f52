"""Carrying out a proxied request's plan on sockets: stored attributes fetched when the plan asks, the cache's
steps (cache/policy.py) run against the store and the origin, the response relayed and decorated, and what
happened counted once (runtime/metrics.py) and logged.

N concurrent misses for one key make one origin request; the others wait for it and are served its entry.
The hit lane (`lane_answer`) asks the same planner and the same policy, and answers only what needs no I/O.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from types import MappingProxyType
from typing import Any

from aiohttp import HttpVersion10, HttpVersion11, web
from multidict import CIMultiDict, CIMultiDictProxy

from edgeproxy.cache import policy
from edgeproxy.cache.keys import variant_key
from edgeproxy.cache.layer import ResponseCache
from edgeproxy.cache.store import CachedResponse, MemoryCacheStore, Varies
from edgeproxy.engine.context import VisitorContext
from edgeproxy.engine.decide import Forcing, Manifest
from edgeproxy.engine.explain import explain
from edgeproxy.exchange.decorate import ClientBase, ResponseHook, response_hook
from edgeproxy.exchange.plan import Decision, NeedStored, Plan
from edgeproxy.exchange.routes import DEFAULT_ROUTE
from edgeproxy.http.access_log import DECIDED_KEY, access_line
from edgeproxy.http.aiohttp_internals import LaneAnswer, ParsedRequest, answer_in_http11
from edgeproxy.http.errors import error_response, refusal_response
from edgeproxy.http.gate import Refusal
from edgeproxy.http.gate import check as check_request
from edgeproxy.http.origin import ClientBodyError
from edgeproxy.http.prebuilt import PrebuiltResponse, date_line_bytes, head_lines, prebuilt_allowed
from edgeproxy.http.relay import bridge_websocket, relay
from edgeproxy.http.wire import Sent, WireRequest
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.runtime.snapshots import LoadedSnapshot
from edgeproxy.runtime.state import ProxyState
from edgeproxy.visitor.forwarded import ClientView
from edgeproxy.visitor.identity import Identity, SetCookies
from edgeproxy.visitor.preview import Preview

log = logging.getLogger("edgeproxy.proxy")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# A proxied request as either server parsed it: aiohttp's (requests handed to it, dataplane.py) or the data
# plane's own; and what answering it gave: a response for aiohttp (or for the data plane to write), or what the
# data plane wrote already.
Incoming = web.BaseRequest | WireRequest
Looked = tuple[CachedResponse | Varies | None, tuple[CachedResponse, str] | None]  # ResponseCache.lookup
Answer = web.StreamResponse | Sent


@dataclass(slots=True)
class Decided:
    """What a proxied request decided, for metrics and the decision log after the response."""

    ctx: VisitorContext | None = None
    manifest: Manifest | None = None
    snapshot: str = ""
    tags: tuple[str, ...] | None = None
    route: str = DEFAULT_ROUTE  # the route's name, for the per-route cache metrics


def record_decision(state: ProxyState, plan: Plan, decided: Decided) -> ResponseHook | None:
    """Count a decision whose response is being sent (metrics, live counts), note it for the logs, and return
    what records its impressions as the response goes out."""
    decision = plan.decision
    if decision is None:
        return None
    explained = _explanation(plan) if plan.explain else None
    asked = plan.preview
    if asked is None:
        headers: tuple[tuple[str, str], ...] = ()
    else:
        headers = asked.response_headers
        if asked.refused is not None:
            log.info("preview token refused (%s); decided as a normal visit: %s", asked.refused, plan.raw)
        if decision.preview is not None:  # SPEC §10: a preview records nothing (counts, logs, impressions)
            return response_hook(None, state.config, decision.manifest, explained, headers)
    if not decision.manifest.user_uid:  # no consent (SPEC §11): counted, never stored (impressions, decision log)
        state.count_decision(decision)
        return response_hook(None, state.config, decision.manifest, explained, headers)
    state.count_decision(decision)
    decided.ctx, decided.manifest = decision.ctx, decision.manifest
    decided.snapshot, decided.tags = decision.loaded.snapshot.version, decision.tags
    return response_hook(state.impressions, state.config, decision.manifest, explained, headers)


def observe_served(
    state: ProxyState, started: float, method: str, raw_path: str, status: int, x_cache: str | None, decided: Decided
) -> float:
    """What every proxied request records once answered (the general path and the hit lane alike): request and
    cache metrics, and the decision log line. Returns the seconds it took."""
    seconds = perf_counter() - started
    state.metrics.observe_request("page" if decided.manifest is not None else "passthrough", status, seconds)
    if x_cache is not None:
        state.metrics.cache_result(decided.route, x_cache)
    if state.decision_log is not None and decided.manifest is not None and decided.ctx is not None:
        state.decision_log.write(
            ctx=decided.ctx, manifest=decided.manifest, snapshot=decided.snapshot, method=method, path=raw_path,
            tags=decided.tags, status=status, cache=x_cache, started=started,
        )  # fmt: skip
    return seconds


async def proxy_handler(request: web.BaseRequest, state: ProxyState) -> web.StreamResponse:
    """A proxied request aiohttp's server parsed."""
    decided = Decided()
    if state.config.access_log:
        request[DECIDED_KEY] = decided  # for the JSON access log
    response = await handle_proxied(request, state, decided)
    assert isinstance(response, web.StreamResponse)  # only the data plane's own requests are written as Sent
    return response


async def handle_proxied(request: Incoming, state: ProxyState, decided: Decided) -> Answer:
    """A proxied request, by either server: carried out, then counted and logged (`observe_served`)."""
    started = perf_counter()
    response = await _execute(request, state, decided)
    x_cache = response.x_cache if isinstance(response, Sent) else response.headers.get("X-Cache")
    observe_served(state, started, request.method, request.raw_path, response.status, x_cache, decided)
    if state.cache is not None and request.method in UNSAFE_METHODS and response.status < 400:
        # RFC 9111 §4.4: a successful unsafe request invalidates the stored responses for its URI.
        try:
            await state.cache.purge(paths=[request.raw_path], prefixes=[], tags=[])
        except Exception as exc:  # a shared cache being away must not fail the request that already succeeded
            log.warning("cache invalidation after %s %s failed: %s", request.method, request.raw_path, exc)
    return response


def peer_address(request: Incoming) -> str | None:
    if isinstance(request, WireRequest):
        return request.peer
    transport = request.transport
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


async def _execute(request: Incoming, state: ProxyState, decided: Decided) -> Answer:
    planner = state.planner
    headers = request.headers
    where = planner.client(peer_address(request), request.scheme, request.host, headers)
    if where.refusal is not None:
        return refuse(request, where.refusal)
    upgrade = headers.get("Upgrade")
    if (
        isinstance(request, web.BaseRequest)  # the data plane hands upgrades to aiohttp
        and upgrade is not None and upgrade.lower() == "websocket" and request.method == "GET"
        and "Sec-WebSocket-Key" in headers
    ):  # fmt: skip
        bridged = await _websocket(request, state, where)
        if bridged is not None:
            return bridged
        # The origin declined the upgrade (RFC 9110 §7.8 lets it ignore Upgrade): its plain answer goes through,
        # fetched below as an ordinary request. Without a Sec-WebSocket-Key it is no handshake at all: the same.
    loaded = state.holder.current
    has_body = request.body_exists
    raw_path = request.raw_path
    plan = planner.plan(loaded, request.method, raw_path, request.path, headers, where,
                        has_body=has_body, upgrade=upgrade is not None)  # fmt: skip
    if isinstance(plan, NeedStored):
        stored = await state.stored_attributes(plan.project_uid, plan.user_uid)
        plan = planner.plan(loaded, request.method, raw_path, request.path, headers, where,
                            has_body=has_body, upgrade=upgrade is not None, stored=stored)  # fmt: skip
        assert isinstance(plan, Plan)
    decided.route = plan.route.name
    impressions = record_decision(state, plan, decided)
    cookies, personalized = plan.cookies, plan.decision is not None
    cache = state.cache
    fetched = None
    if cache is not None and plan.cache_view is not None and not cache.passes(plan.cache_key, state.clock()):
        # A fresh hit is served from the client's request as it is, before any upstream request is built.
        get_now = cache.get_now  # a memory store answers without a coroutine
        fetched = (get_now(plan.cache_key), None) if get_now is not None else await cache.lookup(plan.cache_key)
        found = fetched[0]
        entry = (
            await cache.variant(plan.cache_key, found, plan.cache_view.value) if isinstance(found, Varies) else found
        )  # fmt: skip
        hit = plan.cache_view.fresh_hit(entry, state.clock())
        if hit is not None:
            return serve_entry(request, state, hit, policy.HIT, cookies, personalized, impressions)

    upstream_headers = planner.upstream_headers(plan.where, plan.decision, headers, request.host)
    x_cache = None
    if cache is not None:
        if not plan.cacheable:
            x_cache = policy.BYPASS
        else:
            key = plan.cache_key or cache.key(plan.where.host, raw_path, _variant_param(plan), upstream_headers)
            if cache.passes(key, state.clock()):
                # Hit-for-pass: this key's responses are not storable; forward directly, like an uncached route.
                x_cache = policy.MISS
            else:
                exchange = CacheExchange(request, state, cache, key, plan, upstream_headers, impressions)
                return await exchange.run(fetched)
    try:
        upstream = await state.upstream.request(
            request.method, plan.target, upstream_headers, request.content if has_body else None
        )
    except ClientBodyError as exc:  # the client's body broke its framing, stalled, or the client went away
        log.info("%s request from %s: request body refused: %s", request.method, where.peer, exc)
        return client_body_failed(request, exc.status)
    except OSError as exc:  # TimeoutError, UpstreamError
        return origin_unavailable(request, state, exc)
    try:
        response, _ = await _relay(request)(
            upstream, cookies, personalized, state.config, x_cache=x_cache, impressions=impressions
        )
        return response
    finally:
        upstream.release()


async def decision_for(
    request: web.BaseRequest,
    state: ProxyState,
    loaded: LoadedSnapshot,
    where: ClientView,
    *,
    page_url: str,
    tags: tuple[str, ...] | None,
    live: Mapping[str, object] | None = None,
    preview: Preview | None = None,
) -> Decision:
    """The visitor's decision at a door that answers by itself (the Edge API, ops explain): the planner's, with
    the stored attributes fetched when they are not at hand."""
    planner = state.planner
    identity = planner.identity_of(request.headers)
    stored = planner.stored_at_hand(loaded, identity)
    if isinstance(stored, NeedStored):
        stored = await state.stored_attributes(stored.project_uid, stored.user_uid)
    return planner.decide(loaded, request.headers, where, identity, stored, page_url=page_url, query=None,
                          tags=tags, live=live, preview=preview)  # fmt: skip


def _relay(request: Incoming) -> Callable[..., Awaitable[tuple[Answer, bool]]]:
    """How the origin's response is relayed to the client: by the server that parsed the request (relay.relay
    on aiohttp, WireRequest.relay on the data plane), with the same arguments."""
    if isinstance(request, WireRequest):
        return request.relay
    return functools.partial(relay, request)


def _variant_param(plan: Plan) -> str:
    return plan.decision.manifest.variant_param if plan.decision is not None else ""


def _explanation(plan: Plan) -> str:
    """The compact why-this-variant header a request with `X-Edgeproxy-Explain: <ops_token>` gets."""
    decision = plan.decision
    assert decision is not None
    snapshot = decision.loaded.snapshot
    preview = decision.preview
    forcing = None if preview is None else Forcing(preview.forced, preview.draft)
    trace = explain(snapshot, decision.ctx, decision.tags, forcing)
    summary = "; ".join(f"{e['shortUid']}={e['activeVariantShortUid']} ({e['reason']})" for e in trace["experiences"])
    return f"snapshot={snapshot.version} user={decision.ctx.user_uid}; {summary}"[:8000]


async def _websocket(request: web.BaseRequest, state: ProxyState, where: ClientView) -> web.StreamResponse | None:
    planner = state.planner
    headers = planner.upstream_headers(where, None, request.headers, request.host)
    origin = state.origin
    target = origin.with_path(planner.origin_base_path + request.path).with_query(request.query)
    target = target.with_scheme("wss" if origin.scheme == "https" else "ws")

    def failed(request: web.BaseRequest, status: int, code: str, message: str, exc: BaseException) -> web.Response:
        return origin_failed(request, state, status, code, message, exc)

    bridged = await bridge_websocket(request, state.session, target, headers, failed)
    if bridged is not None:
        state.metrics.websockets += 1
    return bridged


def refuse(request: Incoming, refusal: Refusal) -> web.Response:
    """The gate's answer: a short page (JSON when Accept asks for it), logged in one line, connection closed
    (after a refused head nothing else on the connection can be trusted to be framed as its sender meant)."""
    log.info("refused request from %s: %d %s", peer_address(request), refusal.status, refusal.code)
    response = refusal_response(refusal, request.headers.get("Accept"))
    if refusal.status == 405:
        response.headers["Allow"] = ALLOWED_METHODS
    response.force_close()
    if isinstance(request, web.BaseRequest) and request.version != HttpVersion11 and request.version != HttpVersion10:
        answer_in_http11(request)  # not `HTTP/2.0 400` or `HTTP/0.9 400`, which no HTTP/1.x client reads
    return response


def client_body_failed(request: Incoming, status: int) -> web.Response:
    """The answer when the client's side of a relayed body failed (the origin's connection is dropped)."""
    if status == 408:
        bad = error_response(408, "body_timeout", "The request body did not arrive in time.",
                             request.headers.get("Accept"))  # fmt: skip
    else:
        bad = error_response(400, "bad_body", "The request body is not framed correctly.",
                             request.headers.get("Accept"))  # fmt: skip
    bad.force_close()
    return bad


def origin_unavailable(request: Incoming, state: ProxyState, exc: OSError) -> web.Response:
    """The origin timed out (504) or could not be reached (502)."""
    if isinstance(exc, TimeoutError):
        return origin_failed(request, state, 504, "origin_timeout", "The origin did not answer in time.", exc)
    return origin_failed(request, state, 502, "origin_unreachable", "The origin could not be reached.", exc)


def origin_failed(
    request: Incoming, state: ProxyState, status: int, code: str, message: str, exc: BaseException
) -> web.Response:
    state.metrics.origin_error(status)
    log.warning("%s %s -> %d %s: %r", request.method, request.path_qs, status, code, exc)
    return error_response(status, code, message, request.headers.get("Accept"))


# -- the cache's steps, carried out ---------------------------------------------------------------------


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
    request: Incoming,
    state: ProxyState,
    entry: CachedResponse,
    label: str,
    cookies: SetCookies,
    personalized: bool,
    impressions: ResponseHook | None = None,
) -> Answer:
    config = state.config
    prepared = _prepared(entry, config)
    base = prepared.base
    not_modified = policy.not_modified(request.headers.get("If-None-Match"), entry)
    if not not_modified and prebuilt_allowed(request) and (impressions is None or impressions.explain is None):
        # The common case, prebuilt: constant head + this visitor's lines + body, in one write.
        parts = entry_parts(state, entry, prepared, label, cookies.lines, personalized, impressions)
        if isinstance(request, WireRequest):
            return request.send_parts(parts, entry.status, len(entry.body), label)
        return PrebuiltResponse(entry.status, entry.reason, parts, len(entry.body), label)
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
) -> tuple[bytes, ...]:
    """A stored entry as the bytes of a whole HTTP/1.1 keep-alive response (no debug header asked for): the
    entry's constant head, this visitor's cookies (`cookie_lines`: SetCookies.lines), `hit_tail`, the body.
    Records the impressions."""
    base = prepared.base
    if impressions is not None:
        impressions(base.headers, base.applied)  # records; without a debug header it adds nothing
    no_store = personalized and base.html and state.config.no_store_personalized_html
    tail = hit_tail(label, entry.age(state.clock()), "Date" in base.headers)
    return prepared.head(entry, no_store), cookie_lines.encode("utf-8", "surrogateescape"), tail, entry.body


def hit_tail(label: str, age: float, dated: bool) -> bytes:
    """The last lines of a prebuilt hit's head, after the visitor's cookies: X-Cache, Age, the Date unless the entry
    has its own, and the blank line."""
    return b"X-Cache: %s\r\nAge: %d\r\n%s\r\n" % (label.encode(), int(age), b"" if dated else date_line_bytes())


@dataclass(slots=True)
class CacheExchange:
    """One request the cache may answer, carried through policy.py's steps: lookup, then serve, pass or fetch
    (one origin request per key, which coalesced requests share)."""

    request: Incoming
    state: ProxyState
    cache: ResponseCache
    key: str
    plan: Plan
    upstream_headers: CIMultiDict[str]
    impressions: ResponseHook | None

    def serve(self, entry: CachedResponse, label: str) -> Answer:
        plan = self.plan
        return serve_entry(self.request, self.state, entry, label, plan.cookies, plan.decision is not None,
                           self.impressions)  # fmt: skip

    async def run(self, fetched: Looked | None) -> Answer:
        """`fetched`: the cache's `lookup` of the key when the caller asked already (one store round trip)."""
        cache, upstream_headers, now = self.cache, self.upstream_headers, self.state.clock()
        for name in policy.CONDITIONAL_REQUEST_HEADERS:  # the cache fetches for everyone; it answers conditionals
            upstream_headers.popall(name, None)
        found, fill = fetched if fetched is not None else await cache.lookup(self.key)
        flight = self.key  # one origin request at a time per key: per Vary variant once the key is known to vary
        if isinstance(found, Varies):  # selected by the headers as the origin gets them
            flight = variant_key(self.key, [(name, upstream_headers.get(name, "")) for name in found.names])
            found = await cache.variant(self.key, found, lambda name: upstream_headers.get(name, ""))
        entry = policy.selected(found, upstream_headers)
        step = policy.lookup(entry, now, self.request.method, cache.passes(self.key, now))
        if step == policy.HIT or step == policy.STALE:
            assert entry is not None
            if step == policy.STALE:
                stale = entry
                cache.revalidate_in_background(flight, lambda: self.refresh(stale))
            return self.serve(entry, step)
        if step == policy.PASS:
            return await self.forward()
        leader = cache.inflight.get(flight)
        if leader is None and fill is not None and fill[0] is not entry:
            shared, label = fill  # a leader stored it while this request was looking it up, and has left
            if policy.selected(shared, upstream_headers) is not None:
                cache.counts["coalesced"] += 1
                return self.serve(shared, label)
        if leader is not None:
            # Coalesced: wait for the request already on its way to the origin for this key.
            cache.counts["coalesced"] += 1
            try:
                result = await asyncio.wait_for(asyncio.shield(leader), timeout=self.state.config.read_timeout)
            except TimeoutError:
                result = None
            if result is not None:
                shared, label = result
                if policy.selected(shared, upstream_headers) is not None:
                    return self.serve(shared, label)
            return await self.forward()
        future: asyncio.Future[tuple[CachedResponse, str] | None] = asyncio.get_running_loop().create_future()
        cache.inflight[flight] = future
        try:
            return await self.fetch(entry, future)
        finally:
            cache.inflight.pop(flight, None)
            if not future.done():
                future.set_result(None)
            elif (result := future.result()) is not None:
                cache.filled(self.key, result)

    async def fetch(
        self, entry: CachedResponse | None, future: asyncio.Future[tuple[CachedResponse, str] | None]
    ) -> Answer:
        """The FETCH step: one origin request for the key (conditional when an entry is stored), whose outcome
        every coalesced request waiting on `future` shares."""
        request, state, cache = self.request, self.state, self.cache
        headers = CIMultiDict(self.upstream_headers)
        if entry is not None:
            headers.update(policy.validators(entry))
        request_time = state.clock()
        try:
            upstream = await state.upstream.request("GET", self.plan.target, headers)
        except OSError as exc:  # TimeoutError, UpstreamError
            if policy.after_failure(entry, state.clock()) == policy.STALE:
                assert entry is not None
                future.set_result((entry, policy.STALE))  # requests waiting on this fetch get the stale copy too
                return self.serve(entry, policy.STALE)
            return origin_unavailable(request, state, exc)
        try:
            response_time = state.clock()
            step = policy.after_response(upstream.status, entry, response_time)
            if step == policy.REVALIDATED:
                assert entry is not None
                refreshed = cache.refreshed(entry, list(upstream.headers.items()), request_time, response_time)
                await cache.put(self.key, refreshed)
                future.set_result((refreshed, step))
                return self.serve(refreshed, step)
            if step == policy.STALE:
                assert entry is not None
                future.set_result((entry, step))
                return self.serve(entry, step)
            candidate = cache.build_entry(
                status=upstream.status, reason=upstream.reason or "", headers=list(upstream.headers.items()),
                body=b"", path=request.raw_path, upstream_headers=headers, request_time=request_time,
                response_time=response_time,
            )  # fmt: skip
            if candidate is not None and policy.request_forbids_storing(request.headers.getall("Cache-Control", [])):
                cache.not_stored["request no-store"] += 1
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

            response, complete = await _relay(request)(
                upstream, self.plan.cookies, self.plan.decision is not None, state.config,
                x_cache=policy.MISS, on_chunk=keep, impressions=self.impressions,
            )  # fmt: skip
            if candidate is not None and buffer is not None and complete:
                candidate.body = bytes(buffer)
                await cache.put(self.key, candidate)
                future.set_result((candidate, policy.HIT))
            else:
                cache.remember_uncacheable(self.key, state.clock())
            return response
        finally:
            upstream.release()

    async def forward(self) -> Answer:
        """The PASS step (and a coalesced request whose leader's entry does not fit): forwarded, nothing stored."""
        request, state = self.request, self.state
        try:
            upstream = await state.upstream.request(request.method, self.plan.target, self.upstream_headers)
        except OSError as exc:
            return origin_unavailable(request, state, exc)
        try:
            response, _ = await _relay(request)(
                upstream, self.plan.cookies, self.plan.decision is not None, state.config,
                x_cache=policy.MISS, impressions=self.impressions,
            )  # fmt: skip
            return response
        finally:
            upstream.release()

    async def refresh(self, entry: CachedResponse) -> None:
        """Background revalidation for stale-while-revalidate (RFC 5861 §3): conditional GET, store the result."""
        state, cache = self.state, self.cache
        headers = CIMultiDict(self.upstream_headers)
        headers.update(policy.validators(entry))
        request_time = state.clock()
        up = await state.upstream.request("GET", self.plan.target, headers)
        try:
            response_time = state.clock()
            if policy.after_response(up.status, entry, response_time) == policy.REVALIDATED:
                await cache.put(self.key, cache.refreshed(entry, list(up.headers.items()), request_time,
                                                          response_time))  # fmt: skip
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
            fresh = cache.build_entry(
                status=up.status, reason=up.reason or "", headers=list(up.headers.items()), body=bytes(collected),
                path=self.request.raw_path, upstream_headers=headers, request_time=request_time,
                response_time=response_time,
            )  # fmt: skip
            if fresh is not None:
                await cache.put(self.key, fresh)
                cache.counts["background_refreshed"] += 1
        finally:
            up.release()


# -- the hit lane ---------------------------------------------------------------------------------------

INFINITY = float("inf")
NO_STORED: Mapping[str, object] = MappingProxyType({})
NO_COOKIES_READ: Mapping[str, str] = MappingProxyType({})


def lane_answer(state: ProxyState, access_log: logging.Logger | None, values_checked: bool) -> LaneAnswer:
    """The hit lane of aiohttp's server (http/aiohttp_internals.py): `hit_answer` for the messages its parser
    hands over."""
    answer = hit_answer(state, access_log, values_checked=values_checked)

    def lane(message: ParsedRequest, peer: str | None, scheme: str) -> Sequence[bytes] | None:
        url = message.url
        host = message.headers.get("Host")
        if host is None or url.absolute:
            return None  # absolute-form targets: the general path
        return answer(message.path, url.path, message.version, message.raw_headers, message.headers, host, peer,
                      scheme)  # fmt: skip

    return lane


def hit_answer(
    state: ProxyState, access_log: logging.Logger | None, *, values_checked: bool = False, gated: bool = False,
    remember: int = 0,
) -> HitAnswer:  # fmt: skip
    """The hit lane's answers (`HitAnswer`), asked by the data plane (dataplane.py) and aiohttp's hit lane
    (`lane_answer`). `gated`: the caller asked the gate (gate.check) about each request already. `remember`: how
    many request heads' answers to remember (`HitAnswer.again`; the data plane's), 0 = none."""
    return HitAnswer(state, access_log, values_checked=values_checked, gated=gated, remember=remember)


def _key(head: bytes) -> bytes:
    """What a request head is remembered under: its request line, then its field lines in sorted order, so that
    the same request is one key whatever the order of its header fields (a browser's order is fixed; a load
    generator's may change from run to run). Only heads whose field names are distinct are remembered, so no two
    heads with one key differ in more than the order of distinct fields, which means nothing (RFC 9110 §5.3)."""
    line, _, fields = head.partition(b"\r\n")
    return line + b"\r\n" + b"\r\n".join(sorted(fields.split(b"\r\n")))


class _Answered:
    """What the remembered answers of one variant set for one URL and cache entry have in common (one object for
    all its visitors). Each visitor's own part is a plain tuple (`Visitor`)."""

    __slots__ = ("cookies", "dated", "decided", "entry", "head", "impressed", "key", "raw_path")

    def __init__(
        self, key: str, entry: CachedResponse, head: bytes, cookies: tuple[bytes | int, ...], dated: bool,
        impressed: bool, decided: Decided, raw_path: str,
    ) -> None:  # fmt: skip
        self.key = key
        self.entry = entry
        self.head = head  # the entry's constant head
        self.cookies = cookies  # the Set-Cookie lines: shared bytes, or where the visitor's own is in its Visitor
        self.dated = dated  # the entry has its own Date
        self.impressed = impressed  # serving the entry can record impressions (ResponseHook: applied, or HTML)
        # What was decided, as the metrics read it: its manifest is the variant set's (with no uid).
        self.decided = decided
        self.raw_path = raw_path


# A visitor's remembered answer: (peer, user uid or "" when not personalized, the stored attributes the decision
# read or None for none, until when the clock cannot change the decision, the index of its `_Answered`, with
# behavioural attributes on the page's URL when the request counts as a page view (else "") and its Referer, then
# the Set-Cookie lines that name the visitor). Only strings, numbers and bytes, in one flat tuple: the cyclic
# collector stops tracking it at its first pass, so a table of a few hundred thousand visitors adds nothing to its
# passes.
Visitor = tuple[Any, ...]
OWN_LINES = 7  # where a Visitor's own Set-Cookie lines start


class HitAnswer:
    """Is this GET (origin-form, with a Host) a fresh HIT of the in-memory cache whose response can be sent
    whole? Then its bytes, with everything the general path records for a hit; otherwise None, having recorded
    nothing, and the general path handles the request from the start. The same planner and policy decide here as
    there.

    Remembered answers (`again`): a hit is a function of the request head's bytes, the peer, the snapshot, the
    visitor's stored attributes, the clock (the rules' time thresholds, the entry's freshness) and the cache's
    entry. So when the data plane hands over the head it parsed, the answer is remembered under those bytes (`_key`)
    with what it was made from, and a repeat of the same bytes is answered after checking only what can change: the
    snapshot, the peer, the clock against the next time threshold, a deletion of the visitor (tombstones), their
    stored attributes, the key's hit-for-pass mark, and the entry (the same object, still fresh). It records what
    a hit records (decision and request metrics, live counts, impressions, the access log). With behavioural
    attributes on (SPEC §13), the stored attributes checked are the decision's, behaviour included, computed again
    for the repeat as `Planner.decide` computes them (its page view counted, and recorded when it is answered): a
    page view that changes what the rules read (a new visit, a checkout view) is decided again. Not remembered: new
    visitors (their uid is minted per request), Vary variants, and everything the proxy records per request beyond
    that — with a decision log (each line has its time)."""

    __slots__ = (
        "access_log", "answered", "answers", "cache", "config", "gated", "limit", "loaded", "planner", "remembered",
        "state", "store", "values_checked",
    )  # fmt: skip

    def __init__(
        self, state: ProxyState, access_log: logging.Logger | None, *, values_checked: bool, gated: bool,
        remember: int,
    ) -> None:  # fmt: skip
        cache = state.cache
        assert cache is not None
        if not isinstance(cache.store, MemoryCacheStore):
            raise ValueError("the hit lane answers from the in-memory store only")
        self.state = state
        self.planner = state.planner
        self.cache = cache
        self.store = cache.store
        self.config = state.config
        self.access_log = access_log
        self.values_checked = values_checked
        self.gated = gated
        remembers = state.decision_log is None
        self.limit = remember if remembers else 0
        self.remembered: dict[bytes, Visitor] = {}
        self.answered: list[_Answered] = []  # what remembered answers share (`Visitor`'s index)
        self.answers: dict[tuple[Any, ...], int] = {}  # the same, by what makes one: its index
        self.loaded: LoadedSnapshot | None = None  # the snapshot the remembered answers were decided with

    def __call__(
        self, raw_path: str, path: str, version: tuple[int, int], raw_headers: Sequence[tuple[bytes, bytes]],
        headers: CIMultiDictProxy[str], host: str, peer: str | None, scheme: str, head: bytes | None = None,
    ) -> Sequence[bytes] | None:  # fmt: skip
        """`head`: the request head's bytes, to remember the answer under (the data plane's)."""
        started = perf_counter()
        state, cache, store = self.state, self.cache, self.store
        if not store.holds_path(cache.path_of(raw_path)):
            return None  # the cheap no: nothing is stored for this URL
        if not self.gated and check_request("GET", raw_path, version, raw_headers, values_checked=self.values_checked):
            return None  # the general path asks the gate again and answers its refusal
        if "Upgrade" in headers or "If-None-Match" in headers:
            return None  # upgrades, and 304s to send: the general path
        # Not a reserved path (ops, Edge API) either: those never reach the proxy, so nothing is ever stored
        # for them (holds_path above), and their prefixes are fixed for the life of the process.
        planner = self.planner
        where = planner.client(peer, scheme, host, headers)
        if where.refusal is not None:
            return None  # refused by the general path
        loaded = state.holder.current
        plan = planner.plan(loaded, "GET", raw_path, path, headers, where, has_body=False, upgrade=False)
        if isinstance(plan, NeedStored) or not plan.cache_key or plan.explain:
            return None  # a store round trip, a key only upstream headers make, a debug header: the general path
        now = state.clock()
        if cache.passes(plan.cache_key, now):
            return None
        assert plan.cache_view is not None
        found = store.get_now(plan.cache_key)
        if isinstance(found, Varies):
            found = cache.variant_now(plan.cache_key, found, plan.cache_view.value)
            head = None  # a Vary variant: stored under its variant key, which `again` does not look up
        entry = plan.cache_view.fresh_hit(found, now)
        if entry is None:
            return None
        # A fresh hit: from here on it is answered, and recorded as the general path records one.
        decided = Decided()
        decided.route = plan.route.name  # (an assignment costs less than a keyword argument here)
        impressions = record_decision(state, plan, decided)
        personalized = plan.decision is not None
        prepared = _prepared(entry, self.config)
        parts = entry_parts(state, entry, prepared, policy.HIT, plan.cookies.lines, personalized, impressions)
        seconds = observe_served(state, started, "GET", raw_path, entry.status, policy.HIT, decided)
        access_log = self.access_log
        if access_log is not None and access_log.isEnabledFor(logging.INFO):
            access_log.info(access_line(
                remote=peer, method="GET", raw_path=raw_path, status=entry.status, body_bytes=len(entry.body),
                seconds=seconds, manifest=decided.manifest, snapshot=decided.snapshot or None, cache=policy.HIT,
            ))  # fmt: skip
        if head is not None and self.limit and len({name.lower() for name, _ in raw_headers}) == len(raw_headers):
            # (only heads whose field names are distinct: see `_key`)
            self._remember(_key(head), peer, loaded, plan, entry, parts[0], prepared.base, decided, raw_path, now)
        return parts

    def _remember(
        self, head: bytes, peer: str | None, loaded: LoadedSnapshot | None, plan: Plan, entry: CachedResponse,
        entry_head: bytes, base: ClientBase, decided: Decided, raw_path: str, now: float,
    ) -> None:  # fmt: skip
        """Remember the hit just answered for `head`, unless its decision cannot be checked again (a preview, no
        consent, a new visitor, a rule that compares the time otherwise than against thresholds)."""
        decision = plan.decision
        uid, stored, until, page_url, referer = "", None, INFINITY, "", None
        if decision is not None:
            if decision.preview is not None or loaded is None or decision.loaded is not loaded:
                return
            ctx = decision.ctx
            uid = decision.manifest.user_uid
            if not uid or ctx.user_uid_source() == "other":
                return  # no consent, or a new visitor: their uid is minted per request
            thresholds = loaded.snapshot.time_thresholds
            if thresholds is None:
                return  # a rule compares the time otherwise: every request decides again
            after = bisect_left(thresholds, now)
            until = thresholds[after] if after < len(thresholds) else INFINITY
            stored = ctx.stored or None
            if decision.behaviour is not None:  # a page view counted (not a bot's): counted again when repeated
                page_url, referer = ctx.page_url or "", ctx.referrer
        if self.loaded is not loaded:
            self.forget()
            self.loaded = loaded
        if len(self.remembered) >= self.limit or len(self.answered) >= self.limit:  # (entries refreshed often)
            self.forget()
        own: list[bytes] = []
        cookies: list[bytes | int] = []
        for value in plan.cookies.values:  # SetCookies.lines, a line at a time: the visitor's own, or shared
            line = f"Set-Cookie: {value}\r\n".encode("utf-8", "surrogateescape")
            if uid and uid in value:
                cookies.append(OWN_LINES + len(own))
                own.append(line)
            else:
                cookies.append(line)
        manifest = decided.manifest
        variant_set = None if manifest is None else Manifest("", manifest.entries, manifest.variant_param)
        impressed = bool(base.applied) or (self.config.impressions == "proxy" and base.html)
        what = (
            plan.cache_key, id(entry), entry_head, tuple(cookies), None if manifest is None else manifest.entries,
            decided.snapshot, decided.tags, decided.route, raw_path,
        )  # fmt: skip
        index = self.answers.get(what)
        if index is None or self.answered[index].entry is not entry:
            index = self.answers[what] = len(self.answered)
            lean = Decided(None, variant_set, decided.snapshot, decided.tags, decided.route)
            self.answered.append(_Answered(
                plan.cache_key, entry, entry_head, tuple(cookies), "Date" in base.headers, impressed, lean, raw_path,
            ))  # fmt: skip
        self.remembered[head] = (peer, uid, stored, until, index, page_url, referer, *own)

    def forget(self) -> None:
        """Forget every remembered answer (a new snapshot, or the table full)."""
        self.remembered.clear()
        self.answered.clear()
        self.answers.clear()

    def again(self, head: bytes, peer: str | None) -> Sequence[bytes] | None:
        """The answer remembered for these request head bytes from this peer, when nothing it was made from has
        changed; else None (the data plane parses the head, and the request is decided as ever)."""
        known = self.remembered.get(_key(head))
        if known is None:
            return None
        started = perf_counter()
        state = self.state
        if state.holder.current is not self.loaded:
            self.forget()  # a new snapshot: every answer is decided again
            return None
        now = state.clock()
        known_peer, uid, stored, until, index = known[0], known[1], known[2], known[3], known[4]
        if known_peer != peer or now >= until:
            return None
        behaviour = None
        if uid:
            planner = self.planner
            if planner.tombstones.seen and planner.tombstones.deleted(uid):
                return None
            loaded = self.loaded
            assert loaded is not None
            found = planner.stored_at_hand(loaded, Identity(NO_COOKIES_READ, uid, False))
            tracker = planner.behaviour
            if tracker is not None and not isinstance(found, NeedStored):  # as `Planner.decide` reads them
                page_url = known[5]
                behaviour, found = planner.with_behaviour(
                    tracker, loaded, uid, found, bool(page_url), page_url, known[6], now, None, only_read=True
                )
            if found != (NO_STORED if stored is None else stored):
                return None  # changed, or no longer at hand: the general path (nothing was recorded)
        answered = self.answered[index]
        key, entry = answered.key, answered.entry
        if self.cache.passes(key, now) or not self.store.holds_fresh(key, entry, now):
            return None
        decided = answered.decided
        variant_set = decided.manifest
        manifest = None
        if variant_set is not None:  # personalized: counted, and its impressions recorded, as record_decision does
            state.count_manifest(variant_set, perf_counter() - started)
            if behaviour is not None and state.behaviour is not None:  # its page view (as count_decision)
                state.behaviour.record(uid, behaviour)
            if answered.impressed:
                manifest = Manifest(uid, variant_set.entries, variant_set.variant_param)
                impressions = response_hook(state.impressions, self.config, manifest)
                if impressions is not None:
                    base = _prepared(entry, self.config).base
                    impressions(base.headers, base.applied)
        parts = [answered.head]
        for line in answered.cookies:
            parts.append(known[line] if isinstance(line, int) else line)
        parts += (hit_tail(policy.HIT, entry.age(now), answered.dated), entry.body)
        seconds = observe_served(state, started, "GET", answered.raw_path, entry.status, policy.HIT, decided)
        access_log = self.access_log
        if access_log is not None and access_log.isEnabledFor(logging.INFO):
            if variant_set is not None and manifest is None:
                manifest = Manifest(uid, variant_set.entries, variant_set.variant_param)
            access_log.info(access_line(
                remote=peer, method="GET", raw_path=answered.raw_path, status=entry.status,
                body_bytes=len(entry.body), seconds=seconds, manifest=manifest, snapshot=decided.snapshot or None,
                cache=policy.HIT,
            ))  # fmt: skip
        return parts
