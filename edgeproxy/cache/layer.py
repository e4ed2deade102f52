"""The cache's bookkeeping: keys, entries built and refreshed by RFC 9111, coalescing of misses, hit-for-pass.
What a request gets from it is decided in policy.py; the HTTP I/O is http/executor.py's."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from multidict import CIMultiDict

from edgeproxy.cache import rules
from edgeproxy.cache.keys import CacheQuery, request_variant_key, variant_set_of
from edgeproxy.cache.policy import soft_purged
from edgeproxy.cache.store import CachedResponse, CacheStore, MemoryCacheStore, Soften, Varies

log = logging.getLogger("edgeproxy.cache")


class ResponseCache:
    """Key = method + the visitor's variant param + host + path?query (as `query` keeps it: cache/keys.py) +
    configured request headers; a response with Vary is stored under its variant key beside the others.

    Never the raw cookie, never the user uid (docs/contract.md §7): two visitors with the same variant set share
    entries, two with different sets never do.
    """

    def __init__(
        self, store: CacheStore, *, key_headers: tuple[str, ...], default_ttl: float, max_object_bytes: int,
        events: Counter[str], not_stored: Counter[str], query: CacheQuery | None = None,
        soft_purge_grace: float = 60.0,
    ) -> None:  # fmt: skip
        """`events`, `not_stored`: where this cache counts what it does (the process's metrics own them).
        `query`: how the key holds a request's query (default: as sent). `soft_purge_grace`: see soft_purged."""
        self.store = store
        self.query = query or CacheQuery()
        # The path + query entries are indexed (and purged) by: as the key holds it.
        self.path_of: Callable[[str], str] = self.query.target
        self.soft_purge_grace = soft_purge_grace
        # Stores that answer without I/O (memory) are asked directly, without a coroutine.
        self.memory = store if isinstance(store, MemoryCacheStore) else None
        self.get_now: Callable[[str], CachedResponse | Varies | None] | None = (
            self.memory.get_now if self.memory is not None else None
        )
        self.key_headers = tuple(h.lower() for h in key_headers)
        self.default_ttl = default_ttl
        self.max_object_bytes = max_object_bytes
        self.inflight: dict[str, asyncio.Future[tuple[CachedResponse, str] | None]] = {}  # result, X-Cache
        # A store that answers with I/O (Redis) leaves a window: a request whose lookup saw the store before a
        # leader's fill, but resumes after the leader left `inflight`, would fetch again. Fills made while requests
        # were looking a key up are kept for them until the last of them has looked (`lookup`, `filled`).
        self._looking: dict[str, int] = {}
        self._fills: dict[str, tuple[CachedResponse, str]] = {}
        self._revalidating: set[str] = set()
        # "Hit-for-pass" (Varnish): keys whose last response could not be stored skip coalescing for a while,
        # so uncacheable personalized pages are not serialised behind one another.
        self._pass_until: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.counts = events
        self.not_stored = not_stored

    PASS_SECONDS = 30.0

    def remember_uncacheable(self, key: str, now: float) -> None:
        if len(self._pass_until) > 100_000:
            self._pass_until.clear()
        self._pass_until[key] = now + self.PASS_SECONDS

    def passes(self, key: str, now: float) -> bool:
        until = self._pass_until.get(key)
        if until is None:
            return False
        if until < now:
            del self._pass_until[key]
            return False
        return True

    def key(self, host: str, path_qs: str, variant_param: str, headers: Mapping[str, str]) -> str:
        extra = "|".join([f"{name}={headers.get(name, '')}" for name in self.key_headers]) if self.key_headers else ""
        target = path_qs if "?" not in path_qs else self.query.target(path_qs)  # (no call without a query)
        return f"GET|{variant_param}|{host.lower()}|{target}|{extra}"

    async def fetch(self, key: str) -> CachedResponse | Varies | None:
        """What the store holds for `key`: an entry (whatever its Vary says: see policy.selected), the names a
        URL's variants vary on (then `variant` finds this request's), or nothing."""
        if self.get_now is not None:
            return self.get_now(key)
        try:
            return await self.store.get(key)
        except Exception as exc:  # a shared cache going away must not fail the request
            self.counts["store_errors"] += 1
            log.warning("cache lookup failed, going to the origin: %s", exc)
            return None

    async def lookup(self, key: str) -> tuple[CachedResponse | Varies | None, tuple[CachedResponse, str] | None]:
        """`fetch`, and the fill a leader completed for `key` while this lookup was under way (None if none)."""
        if self.get_now is not None:
            return self.get_now(key), None  # no await: nothing can be filled meanwhile
        looking = self._looking
        looking[key] = looking.get(key, 0) + 1
        try:
            found = await self.fetch(key)
        finally:
            left = looking[key] - 1
            if left:
                looking[key] = left
                fill = self._fills.get(key)
            else:
                del looking[key]
                fill = self._fills.pop(key, None)
        return found, fill

    def filled(self, key: str, result: tuple[CachedResponse, str]) -> None:
        """A leader stored `key`'s entry: kept for the requests looking the key up right now (`lookup`)."""
        if key in self._looking:
            self._fills[key] = result

    def variant_now(self, key: str, varies: Varies, value: Callable[[str], str | None]) -> CachedResponse | None:
        """`variant` for the memory store, without a coroutine (the hit lane)."""
        assert self.memory is not None
        stored = request_variant_key(key, varies.names, value)
        found = self.memory.get_now(stored) if stored is not None else None
        return found if isinstance(found, CachedResponse) else None

    async def variant(self, key: str, varies: Varies, value: Callable[[str], str | None]) -> CachedResponse | None:
        """The variant of `key`'s URL this request selects (`value`: the request's value of a header, None when
        it cannot be told), or None."""
        if self.memory is not None:
            return self.variant_now(key, varies, value)
        stored = request_variant_key(key, varies.names, value)
        found = await self.fetch(stored) if stored is not None else None
        return found if isinstance(found, CachedResponse) else None

    async def purge(
        self, *, paths: list[str], prefixes: list[str], tags: list[str], soft_at: float | None = None
    ) -> int:
        """Drop the matching entries, every variant of each (URLs are taken as the key holds them, so purging
        /p purges what /p?utm_source=x stored); with `soft_at` (the time), mark them stale instead."""
        soften: Soften | None = None
        if soft_at is not None:
            now, grace = soft_at, self.soft_purge_grace

            def soften(entry: CachedResponse) -> CachedResponse:
                return soft_purged(entry, now, grace)

        return await self.store.purge(paths=[self.path_of(p) for p in paths], prefixes=prefixes, tags=tags,
                                      soften=soften)  # fmt: skip

    def variant_sets_by_route(self, route_of: Callable[[str], str]) -> dict[str, list[int]] | None:
        """For each route (`route_of` a stored path + query), the distinct variant sets stored per cached URL;
        None for a shared store (counting there would cost a round trip per URL at every scrape)."""
        if self.memory is None:
            return None
        found: dict[str, list[int]] = {}
        for path, keys in self.memory.keys_by_path():
            found.setdefault(route_of(path), []).append(len({variant_set_of(key) for key in keys}))
        return found

    async def put(self, key: str, entry: CachedResponse) -> None:
        try:
            await self.store.put(key, entry)
            self.counts["stored"] += 1
        except Exception as exc:
            self.counts["store_errors"] += 1
            log.warning("cache store failed, response served uncached: %s", exc)

    def build_entry(
        self,
        *,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
        path: str,
        upstream_headers: Mapping[str, str],
        request_time: float,
        response_time: float,
    ) -> CachedResponse | None:
        """A cache entry for this response, or None when RFC 9111 (or our rules) say not to store it."""
        lookup = CIMultiDict(headers)
        cc = surrogate_or_cache_control(lookup)
        ok, why = rules.storable(
            status, cc, lookup, has_authorization="authorization" in upstream_headers,
            has_set_cookie=lookup.get("Set-Cookie") is not None, default_ttl=self.default_ttl,
        )  # fmt: skip
        vary = rules.vary_names(lookup)
        if ok and "cookie" in vary:
            ok, why = False, "Vary: Cookie"  # ours: keys never hold the raw cookie
        if not ok:
            self.not_stored[why] += 1
            return None
        swr, sie = rules.stale_windows(cc)
        tags = tuple(t for v in lookup.getall("Surrogate-Key", []) for t in v.split()) + tuple(
            t.strip() for v in lookup.getall("Cache-Tag", []) for t in v.split(",") if t.strip()
        )
        return CachedResponse(
            status=status, reason=reason, headers=[h for h in headers if h[0].lower() != "set-cookie"], body=body,
            path=self.path_of(path), tags=tags, stored_at=response_time,
            initial_age=rules.initial_age(lookup, request_time, response_time),
            lifetime=rules.freshness_lifetime(cc, lookup, response_time, self.default_ttl), swr=swr, sie=sie,
            no_cache=rules.needs_revalidation(cc), vary=tuple((n, upstream_headers.get(n, "")) for n in vary),
            etag=lookup.get("ETag"), last_modified=lookup.get("Last-Modified"),
        )  # fmt: skip

    def refreshed(self, entry: CachedResponse, headers: list[tuple[str, str]], request_time: float,
                  response_time: float) -> CachedResponse:  # fmt: skip
        """RFC 9111 §4.3.4: a 304 updates the stored headers and freshness, the body stays.

        Fields the 304 carries replace all stored lines of that name; other stored lines stay as they were,
        repeated ones included. Set-Cookie is never stored (one visitor's cookie must not reach others).
        """
        skip = {"content-length", "transfer-encoding", "content-encoding", "set-cookie"}
        carried = {name.lower() for name, _ in headers} - skip
        merged = [(k, v) for k, v in entry.headers if k.lower() not in carried]
        merged += [(k, v) for k, v in headers if k.lower() in carried]
        lookup = CIMultiDict(merged)
        cc = surrogate_or_cache_control(lookup)
        swr, sie = rules.stale_windows(cc)
        return CachedResponse(
            status=entry.status, reason=entry.reason, headers=merged, body=entry.body, path=entry.path,
            tags=entry.tags, stored_at=response_time,
            initial_age=rules.initial_age(lookup, request_time, response_time),
            lifetime=rules.freshness_lifetime(cc, lookup, response_time, self.default_ttl), swr=swr, sie=sie,
            no_cache=rules.needs_revalidation(cc), vary=entry.vary, etag=lookup.get("ETag"),
            last_modified=lookup.get("Last-Modified"),
        )  # fmt: skip

    def revalidate_in_background(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        """RFC 5861 stale-while-revalidate: one background refresh per key at a time."""
        if key in self._revalidating or key in self.inflight:
            return
        self._revalidating.add(key)

        async def run() -> None:
            try:
                await work()
            except Exception as exc:
                log.warning("background revalidation failed: %s", exc)
            finally:
                self._revalidating.discard(key)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stats(self) -> dict[str, Any]:
        """The store's own figures (the counts are the metrics')."""
        try:
            store = await self.store.stats()
        except Exception as exc:
            store = {"error": str(exc)}
        return {"store": store, "inflight": len(self.inflight)}

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.store.close()


def surrogate_or_cache_control(headers: CIMultiDict[str]) -> dict[str, str | None]:
    """`Surrogate-Control` (for caches like us) wins over `Cache-Control` when the origin sends it."""
    surrogate = headers.getall("Surrogate-Control", [])
    if surrogate:
        return rules.parse_cache_control(surrogate)
    return rules.parse_cache_control(headers.getall("Cache-Control", []))
