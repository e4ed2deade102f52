"""One request path: what a request gets, decided once and without I/O, whatever door it came in by.

    door (proxied page, hit lane, Edge API, ops explain) -> the request as parsed
      -> who is asking (visitor/forwarded.py) and who they are (visitor/identity.py)
      -> their stored attributes: at hand, or `NeedStored` (the executor fetches them and asks again)
      -> context -> decision (the snapshot's decider: engine/memo.py over engine/decide.py)
      -> for a proxied request, a `Plan`: refuse, or forward (and the cache key when the cache may answer;
         cache/policy.py decides HIT/STALE/MISS from there)
Replay decides with the same decider from request descriptions (engine/context.py), as `edgeproxy decide` does.
Nothing here reads a socket, a file or the time: the clock is the planner's, injected.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import quote

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edgeproxy.cache.layer import ResponseCache
from edgeproxy.cache.policy import CacheView, early_view
from edgeproxy.clock import Clock
from edgeproxy.engine.context import GeoLookup, VisitorContext
from edgeproxy.engine.decide import ANONYMOUS_UID, Forcing, Manifest
from edgeproxy.engine.useragent import UserAgentClassifier
from edgeproxy.exchange.routes import RouteDecision, RouteTable
from edgeproxy.http.gate import same_token
from edgeproxy.http.headers import UPSTREAM_REMOVED, end_to_end
from edgeproxy.runtime.behaviour import BehaviourTracker
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.runtime.snapshots import LoadedSnapshot
from edgeproxy.visitor.behaviour import BehaviourFields, attributes_of, is_page_view, observe_fields
from edgeproxy.visitor.forwarded import ClientView, TrustedProxies, view_of_client
from edgeproxy.visitor.identity import (
    NO_COOKIES,
    Identities,
    Identity,
    SetCookies,
    Tombstones,
    consent_given,
    context_from_request,
    cookie_headers,
)
from edgeproxy.visitor.preview import PREVIEW_COOKIE, Preview, PreviewAsked, may_ask_preview, preview_asked


class CachedAttributes(Protocol):
    """The store's in-process answer for (project uid, user uid), without I/O: the attributes when cached, `{}`
    when it knows nothing is stored (with `behaviour_at_hand`: no attributes, whatever the behaviour), else None."""

    def __call__(
        self, project_uid: str, user_uid: str, *, behaviour_at_hand: bool = False
    ) -> Mapping[str, Any] | None: ...


# The stored attributes a decision reads, when the caller has not fetched them (plan: find them at hand or ask).
UNKNOWN: Mapping[str, object] = MappingProxyType({})


@dataclass(slots=True)  # one per request: not frozen, whose __init__ costs a setattr call per field
class Decision:
    """What a visitor's request decided; nothing about it is counted or recorded yet (the executor does)."""

    loaded: LoadedSnapshot
    ctx: VisitorContext
    manifest: Manifest
    tags: tuple[str, ...] | None
    cookies: SetCookies  # for the visitor's scheme (Secure on https)
    seconds: float  # how long the decider took (for the decision metrics)
    preview: Preview | None = None  # decided for a preview (SPEC §10): recorded nowhere, never cached
    behaviour: BehaviourFields | None = None  # the visitor's behaviour after this page view, to record (SPEC §13)


@dataclass(frozen=True, slots=True)
class NeedStored:
    """The decision reads stored attributes that are not at hand: fetch these, then plan again with them."""

    project_uid: str
    user_uid: str


@dataclass(slots=True)  # one per request
class Plan:
    """How to carry out a proxied request that was not refused."""

    where: ClientView
    route: RouteDecision
    decision: Decision | None  # None: passed through unpersonalized
    base_path: str  # the origin's base path
    raw: str  # the path as sent, without its query
    query: str  # the query the origin gets (with the variant param when configured)
    cacheable: bool  # the cache may answer or store it (GET/HEAD, no body, a caching route, cache on)
    cache_key: str  # the key computed on the client's own headers, "" when only the upstream headers can key it
    cache_view: CacheView | None  # what can select a stored entry on the client's headers (with cache_key)
    explain: bool  # the ops-token-protected debug explanation was asked for
    preview: PreviewAsked | None = None  # what the request asked of preview (None: nothing, the common case)

    @property
    def target(self) -> str:
        """The request target on the origin; built when forwarding (a cache hit never needs it)."""
        return f"{self.base_path}{self.raw}{'?' + self.query if self.query else ''}"

    @property
    def cookies(self) -> SetCookies:
        return self.decision.cookies if self.decision is not None else NO_COOKIES


class Planner:
    """The pure part of every request, built once per process from its settings; `plan` and `decide` are the only
    ways a request is decided."""

    __slots__ = (
        "behaviour", "cache", "cached_attributes", "classifier", "clock", "config", "geo_lookup", "identities",
        "origin_base_path", "origin_host", "routes", "tombstones", "trusted",
    )  # fmt: skip

    def __init__(
        self,
        config: ProxyConfig,
        clock: Clock,
        geo_lookup: GeoLookup | None,
        cached_attributes: CachedAttributes,
        cache: ResponseCache | None,
        classifier: UserAgentClassifier,
        behaviour: BehaviourTracker | None = None,
    ) -> None:
        self.config = config
        self.behaviour = behaviour  # visitors' behaviour as this process knows it (read here, recorded after)
        self.clock = clock
        self.geo_lookup = geo_lookup
        self.cached_attributes = cached_attributes  # the store's in-process answer (no I/O), None when unknown
        self.cache = cache
        self.classifier = classifier
        self.trusted = TrustedProxies(config.trusted_proxies)
        self.routes = RouteTable(config)
        self.identities = Identities()  # returning visitors' uids and parsed cookies
        self.tombstones = Tombstones()  # deleted users (runtime/users.py keeps it up to date)
        origin = URL(config.origin.rstrip("/"))
        self.origin_host = origin.raw_authority
        self.origin_base_path = origin.raw_path.rstrip("/")

    # -- the visitor ----------------------------------------------------------------------------------

    def client(self, peer: str | None, scheme: str, host: str, headers: CIMultiDictProxy[str]) -> ClientView:
        return view_of_client(self.trusted, peer, scheme, host, headers)

    def identity_of(self, headers: CIMultiDictProxy[str]) -> Identity:
        """Who the visitor is (visitor/identity.py); in consent mode without consent, nobody (SPEC §11): the
        anonymous uid, whose decisions read request data only, set no cookie and are stored nowhere."""
        identity = self.identities.of(headers)
        if self.tombstones.seen:  # some users were deleted (SPEC §11): their old cookie starts a new identity
            identity = self.tombstones.renewed(identity)
        consent = self.config.consent_cookie
        if consent and not consent_given(identity.cookies, consent, self.config.consent_value):
            return Identity(identity.cookies, ANONYMOUS_UID, True)
        return identity

    def cookie_domain(self, where: ClientView) -> str:
        """The configured cookie domain when the visitor's host is within it (a browser refuses any other), else
        "" (host-only cookies)."""
        domain = self.config.cookie_domain
        if not domain:
            return ""
        host = where.host.lower()
        if host.startswith("["):  # an IPv6 literal is within no domain
            return ""
        host, bare = host.partition(":")[0].rstrip("."), domain.lower().lstrip(".")
        return domain if host == bare or host.endswith("." + bare) else ""

    def stored_at_hand(self, loaded: LoadedSnapshot, identity: Identity) -> Mapping[str, object] | NeedStored:
        """The stored attributes a decision reads when they are known without I/O (none needed, or cached by the
        store); otherwise which ones to fetch."""
        if identity.is_new:
            return {}
        # Behaviour this process does not know is read from the store (another process may have seen the visitor);
        # behaviour it knows (or none, when behaviour is off) needs no stored behaviour row.
        behaviour_at_hand = self.behaviour is None or self.behaviour.holds(identity.user_uid)
        if behaviour_at_hand and not loaded.snapshot.reads_custom_attributes:
            return {}
        project_uid = loaded.snapshot.project.uid
        stored = self.cached_attributes(project_uid, identity.user_uid, behaviour_at_hand=behaviour_at_hand)
        return stored if stored is not None else NeedStored(project_uid, identity.user_uid)

    def decide(
        self,
        loaded: LoadedSnapshot,
        headers: CIMultiDictProxy[str],
        where: ClientView,
        identity: Identity,
        stored: Mapping[str, object],
        *,
        page_url: str,
        query: str | None,
        tags: tuple[str, ...] | None,
        live: Mapping[str, object] | None = None,
        preview: Preview | None = None,
        page_view: bool = False,
        only_read: bool = False,
        page_path: str | None = None,
    ) -> Decision:
        """A visitor's decision: the context from the request, the snapshot's decider. Every door decides here.
        A `preview` decides with its forced variants, drafts and time, outside the memo (SPEC §10). With
        behavioural attributes on (SPEC §13), the decision reads them, and a `page_view` (a page the visitor
        navigated to) first counts in them; `only_read`: of those, only the ones the snapshot's rules read are
        computed (the page path when no decision log records them all; previews always get them all). `page_path`:
        the path of `page_url`, when the caller has it at hand (else read from `page_url`)."""
        now = self.clock() if preview is None or preview.now is None else preview.now
        ctx = context_from_request(
            headers, page_url=page_url, now=now, query=query, client_ip=where.client_ip,
            trust_geo_headers=where.trusted, geo_lookup=self.geo_lookup, classifier=self.classifier,
            identity=identity, live=live, stored=stored,
        )  # fmt: skip
        behaviour = None
        tracker = self.behaviour
        if tracker is not None and identity.user_uid:
            counted = False
            if page_view and preview is None:
                # Not a bot: the context's User-Agent class, which the rules then read without classifying again.
                agent = ctx.ua_class()
                counted = agent is None or agent.device_type != "BOT"
            behaviour, read = self.with_behaviour(
                tracker, loaded, identity.user_uid, stored, counted, page_url, ctx.referrer, now, page_path,
                only_read=only_read and preview is None,
            )  # fmt: skip
            if read is not stored:  # the behavioural values, read as stored attributes
                ctx.stored = read
        secure = where.proto == "https"
        domain = self.cookie_domain(where) if self.config.cookie_domain else ""
        started = time.perf_counter()
        if preview is None:
            manifest = loaded.decider.decide(ctx, tags)
            seconds = time.perf_counter() - started
            cookies = loaded.cookies.of(manifest, secure, domain) if identity.user_uid else NO_COOKIES
            return Decision(loaded, ctx, manifest, tags, cookies, seconds, None, behaviour)
        manifest = loaded.snapshot.decide_forced(ctx, tags, Forcing(preview.forced, preview.draft))
        seconds = time.perf_counter() - started
        cookies = SetCookies.of(cookie_headers(manifest, secure, domain=domain)) if identity.user_uid else NO_COOKIES
        return Decision(loaded, ctx, manifest, tags, cookies, seconds, preview)

    def with_behaviour(
        self, tracker: BehaviourTracker, loaded: LoadedSnapshot, user_uid: str, stored: Mapping[str, object],
        counted: bool, page_url: str, referer: str | None, now: float, page_path: str | None, *, only_read: bool,
    ) -> tuple[BehaviourFields | None, Mapping[str, object]]:  # fmt: skip
        """A visitor's behavioural attributes (SPEC §13) read as stored attributes: (their behaviour after this page
        view when it is `counted`, to record once it is answered, else None; the stored attributes with the values
        merged over them). `decide`'s part, and the hit lane's for an answer it remembered (executor.HitAnswer)."""
        before = tracker.current_fields(user_uid, stored)
        behaviour = observe_fields(tracker.config, before, page_url, referer, now, page_path) if counted else None
        config = tracker.reading(loaded.snapshot.custom_keys_read) if only_read else tracker.config
        found = attributes_of(config, behaviour or before, now)
        if not found:
            return behaviour, stored
        return behaviour, {**stored, **found} if stored else found

    def preview_of(self, raw_query: str, identity: Identity, where: ClientView) -> tuple[str, PreviewAsked | None]:
        """The query without a preview token, and what the request asks of preview (`visitor/preview.py`)."""
        return preview_asked(
            self.config.preview_secret, raw_query, identity.cookies, self.clock, where.proto == "https"
        )

    # -- a proxied request ----------------------------------------------------------------------------

    def plan(
        self,
        loaded: LoadedSnapshot | None,
        method: str,
        raw_path: str,
        path: str,
        headers: CIMultiDictProxy[str],
        where: ClientView,
        *,
        has_body: bool,
        upgrade: bool,
        stored: Mapping[str, object] = UNKNOWN,
    ) -> Plan | NeedStored:
        """`raw_path`: the origin-form target as sent; `path`: its decoded path (routes match on it); `where`:
        `client(...)`, not refused. `stored`: the visitor's stored attributes once fetched (after NeedStored)."""
        config = self.config
        route = self.routes.decide(path)
        decision = None
        raw, _, query = raw_path.partition("?")
        asked = None
        if route.personalize and loaded is not None:
            identity = self.identity_of(headers)
            if stored is UNKNOWN:
                found = self.stored_at_hand(loaded, identity)
                if isinstance(found, NeedStored):
                    return found
                stored = found
            target = raw_path
            if config.preview_secret and may_ask_preview(query, identity.cookies):
                query, asked = self.preview_of(query, identity, where)
                if asked is not None:  # the page as the origin gets it: without the token
                    target = f"{raw}?{query}" if query else raw
            counted = self.behaviour is not None and is_page_view(method, headers.get)  # only when behaviour is on
            # The page's path as observe_fields would read it from the URL: the target up to its query (or fragment).
            page_path = raw if counted and raw[:1] == "/" and "#" not in raw and "/" not in where.host else None
            decision = self.decide(loaded, headers, where, identity, stored, page_url=f"{where.proto}://{where.host}{target}",
                                   query=query, tags=route.tags, preview=asked.grant if asked else None,
                                   page_view=counted, only_read=not config.decision_log,
                                   page_path=page_path)  # fmt: skip
            if asked is not None and asked.set_cookie is not None:
                decision.cookies = SetCookies.of((*decision.cookies.values, asked.set_cookie))
            if config.variant_query_param:
                query = _with_param(query, config.variant_query_param, decision.manifest.variant_param)
        cache = self.cache
        cacheable = (
            cache is not None
            and route.cache
            and not has_body
            and (method == "GET" or method == "HEAD")
            and asked is None
        )  # a request that asks anything of preview is neither served from nor stored in the cache (SPEC §10)
        key, view = "", None
        if cacheable and not upgrade:  # an upgrade asked for is keyed (and answered) by the full exchange
            assert cache is not None
            view = early_view(headers, cache.key_headers)
            if view is not None:
                variant_param = decision.manifest.variant_param if decision is not None else ""
                key = cache.key(where.host, raw_path, variant_param, headers)
        token = headers.get("X-Edgeproxy-Explain") if config.ops_token and decision is not None else None
        explain = token is not None and same_token(token, config.ops_token)
        return Plan(where, route, decision, self.origin_base_path, raw, query, cacheable, key, view, explain, asked)

    def upstream_headers(
        self, where: ClientView, decision: Decision | None, headers: CIMultiDictProxy[str], request_host: str
    ) -> CIMultiDict[str]:
        """The client's end-to-end headers for the origin: Host, X-Forwarded-*, and the decided variants."""
        out = end_to_end(headers, UPSTREAM_REMOVED)
        # X-Forwarded-*: a trusted peer's chain is kept and extended; an untrusted one is replaced, not believed.
        peer = where.peer
        chain = f"{where.forwarded_for}, {peer}" if where.trusted and where.forwarded_for else (peer or "")
        if chain:
            out["X-Forwarded-For"] = chain
        out["X-Forwarded-Proto"] = where.proto
        out["X-Forwarded-Host"] = where.host
        if not where.trusted:
            out.popall("Forwarded", None)
        out["Host"] = request_host if self.config.preserve_host else self.origin_host
        if decision is not None:
            add_variant_headers(out, decision.manifest, self.config.cda_variant_limit, decision.loaded.snapshot.version)
            if decision.preview is not None:
                out["x-edgeproxy-preview"] = "1"
        if self.config.preview_secret and PREVIEW_COOKIE in out.get("Cookie", ""):
            _without_cookie(out, PREVIEW_COOKIE)  # the preview token is the visitor's, on every route
        return out


def add_variant_headers(headers: CIMultiDict[str], manifest: Manifest, cda_limit: int, version: str) -> None:
    """contract §7: aliases in priority order, truncated for the CDA; the full set in the variant param."""
    aliases = manifest.aliases
    if cda_limit:
        aliases = aliases[:cda_limit]
    headers["x-cs-variant-uid"] = ",".join(aliases)
    headers["x-cs-personalize-variants"] = manifest.variant_param
    if manifest.user_uid:  # an anonymous visitor (consent mode, SPEC §11) has no uid to pass on
        headers["x-cs-personalize-user-uid"] = manifest.user_uid
    headers["x-edgeproxy-snapshot"] = version  # which rules decided, for origin logs


def _without_cookie(headers: CIMultiDict[str], name: str) -> None:
    kept = [
        part.strip()
        for value in headers.popall("Cookie", ())
        for part in value.split(";")
        if part.strip() and part.partition("=")[0].strip() != name
    ]
    if kept:
        headers["Cookie"] = "; ".join(kept)


def _with_param(query: str, name: str, value: str) -> str:
    kept = [part for part in query.split("&") if part and part.split("=", 1)[0] != name]
    kept.append(f"{quote(name, safe='')}={quote(value, safe=',_')}")
    return "&".join(kept)
