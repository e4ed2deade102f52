"""The cache's answer to a request, as a pure state machine (after hishel's `_core/_spec.py`): each step takes
what is known (the stored entry, the clock, the origin's status) and says what happens next; the executor
(http/executor.py) does the I/O between steps.

    lookup(entry, now, method, passes)
        HIT          a fresh entry for this key and request             -> serve it
        STALE        within stale-while-revalidate (RFC 5861 §3)        -> serve it, refresh in the background
        PASS         HEAD, or hit-for-pass with nothing stored           -> forward, store nothing (X-Cache MISS)
        FETCH        nothing usable: fetch (conditional with an entry)  -> after_response / after_failure
    after_response(status, entry, now)
        REVALIDATED  a 304 confirmed the stored entry (RFC 9111 §4.3.4)             -> serve the refreshed entry
        STALE        a 5xx within stale-if-error (RFC 5861 §4)                       -> serve the stored entry
        MISS         anything else                                                  -> relay it, store it when storable
    after_failure(entry, now)
        STALE or FAIL (the origin could not be reached: 502/504)
A request that is no cache candidate at all (method, body, route with cache = false) is BYPASS.

A soft purge (`soft_purged`) only moves an entry's windows: it is stale from then on, and the steps above
serve it STALE while one request refreshes it, then revalidate it like any stale entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from multidict import CIMultiDictProxy

from edgeproxy.cache.rules import parse_cache_control
from edgeproxy.cache.store import CachedResponse
from edgeproxy.http.headers import UPSTREAM_REMOVED, connection_listed, removal_set

HIT, STALE, REVALIDATED, MISS, BYPASS, PASS, FETCH, FAIL = (
    "HIT", "STALE", "REVALIDATED", "MISS", "BYPASS", "PASS", "FETCH", "FAIL",
)  # fmt: skip

CONDITIONAL_REQUEST_HEADERS = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range")

# Request headers that do not reach the origin as the client sent them: removed, replaced or set by the proxy.
REWRITTEN_REQUEST_HEADERS = removal_set(
    *UPSTREAM_REMOVED, "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded",
    *CONDITIONAL_REQUEST_HEADERS,
)  # fmt: skip
_NOTHING: frozenset[str] = frozenset()


def lookup(entry: CachedResponse | None, now: float, method: str, passes: bool) -> str:
    """The step after the store answered for this key (`entry` already selected by the request's Vary)."""
    if entry is not None:
        if entry.fresh(now):  # RFC 9111 §4.2
            return HIT
        if entry.within_swr(now):  # RFC 5861 §3
            return STALE
    if method == "HEAD" or (entry is None and passes):
        return PASS  # a HEAD is not stored from (no body); hit-for-pass keys are not coalesced
    return FETCH


def after_response(status: int, entry: CachedResponse | None, now: float) -> str:
    """The step once the origin answered a FETCH (conditional when `entry` is stored)."""
    if status == 304 and entry is not None:
        return REVALIDATED  # RFC 9111 §4.3.4
    if status >= 500 and entry is not None and entry.within_sie(now):
        return STALE  # RFC 5861 §4
    return MISS


def after_failure(entry: CachedResponse | None, now: float) -> str:
    """The step when the origin could not be reached or timed out."""
    return STALE if entry is not None and entry.within_sie(now) else FAIL  # RFC 5861 §4


def soft_purged(entry: CachedResponse, now: float, grace: float) -> CachedResponse:
    """A soft purge at `now` (Varnish `xkey.softpurge`, Fastly's soft purge): the entry is stale from now on. It
    may still be served (STALE, one background refresh) for `grace` seconds, but never past the end of what its
    freshness and stale-while-revalidate allowed before (so never against the origin's word, RFC 9111 §4.2.4:
    within that, it was the origin's to serve anyway); stale-if-error keeps its end. After that it is
    revalidated, conditionally when it has validators, like any stale entry. Never extends its life."""
    age = entry.age(now)
    lifetime = min(entry.lifetime, age)
    swr = max(0.0, min(entry.lifetime + entry.swr, age + grace) - lifetime)
    sie = max(0.0, entry.lifetime + entry.sie - lifetime)
    return replace(entry, lifetime=lifetime, swr=swr, sie=sie)


def validators(entry: CachedResponse) -> list[tuple[str, str]]:
    """RFC 9111 §4.3.1: the conditional headers that ask the origin whether `entry` is still current."""
    found = []
    if entry.etag:
        found.append(("If-None-Match", entry.etag))
    if entry.last_modified:
        found.append(("If-Modified-Since", entry.last_modified))
    return found


def vary_matches(vary: tuple[tuple[str, str], ...], get: Callable[[str, str], str],
                 rewritten: frozenset[str] = _NOTHING) -> bool:  # fmt: skip
    """RFC 9111 §4.1: a stored response is selected when the request's values of the headers its Vary names are
    those it was stored with (names stored lower-case). A name in `rewritten` never matches: the proxy rewrites
    that header, so only the upstream headers can tell."""
    for name, value in vary:
        if name in rewritten or get(name, "") != value:
            return False
    return True


def not_modified(if_none_match: str | None, entry: CachedResponse) -> bool:
    """RFC 9110 §13.1.2: the client's copy is current (weak comparison; W/ prefixes ignored)."""
    if not (entry.etag and if_none_match and entry.status == 200):
        return False
    if if_none_match.strip() == "*":
        return True
    own = entry.etag.strip().removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == own for tag in if_none_match.split(","))


def request_forbids_storing(cache_control: list[str]) -> bool:
    """RFC 9111 §5.2.1.5: the request's own `no-store`."""
    return "no-store" in parse_cache_control(cache_control)


class CacheView:
    """Whether a cache decision can be made on the client's own request headers: true for every header name
    that reaches the origin unchanged, which is what the key and the stored Vary values were computed from."""

    __slots__ = ("_headers", "_rewritten")

    def __init__(self, headers: CIMultiDictProxy[str], rewritten: frozenset[str]) -> None:
        self._headers = headers
        self._rewritten = rewritten

    def selects(self, entry: CachedResponse) -> bool:
        return vary_matches(entry.vary, self._headers.get, self._rewritten)

    def value(self, name: str) -> str | None:
        """The request's value of header `name` as the origin gets it; None when the proxy rewrites that header."""
        return None if name in self._rewritten else self._headers.get(name, "")

    def fresh_hit(self, entry: CachedResponse | None, now: float) -> CachedResponse | None:
        """`entry` when it is a HIT on the client's own headers, else None (the full exchange decides)."""
        return entry if entry is not None and entry.fresh(now) and self.selects(entry) else None


def early_view(headers: CIMultiDictProxy[str], key_headers: tuple[str, ...]) -> CacheView | None:
    """The view that selects entries on the client's headers, when the key's headers (lower-case) reach the
    origin unchanged; None when they do not (the key is then computed from the upstream headers)."""
    rewritten = (
        REWRITTEN_REQUEST_HEADERS | connection_listed(headers) if "Connection" in headers
        else REWRITTEN_REQUEST_HEADERS
    )  # fmt: skip
    if key_headers and any(name in rewritten for name in key_headers):
        return None
    return CacheView(headers, rewritten)


def selected(entry: CachedResponse | None, upstream_headers: Mapping[str, str]) -> CachedResponse | None:
    """`entry` if this upstream request selects it (RFC 9111 §4.1)."""
    return entry if entry is not None and vary_matches(entry.vary, upstream_headers.get) else None
