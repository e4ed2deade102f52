"""Where cached responses live: a byte-bounded LRU in memory (embedded default) or Redis (shared).

A URL whose responses carry `Vary` keeps several of them side by side: its key then holds a `Varies` (the header
names), and each response is stored under its variant key (cache/keys.py), at most MAX_VARIANTS per URL key, the
least recently stored dropped first. A response without Vary stored under the same key replaces them all.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from edgeproxy.cache.keys import base_key, variant_key
from edgeproxy.clock import Clock, system_clock

# Vary variants kept per URL key (one variant set, one host): Accept-Language or Accept-Encoding variants of a page
# are a handful; a header with unbounded values (User-Agent) must not fill the cache with one URL.
MAX_VARIANTS = 8


@dataclass(slots=True)
class CachedResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # the origin's end-to-end headers (never Set-Cookie)
    body: bytes
    path: str  # path + query without host, for purge by URL and prefix
    tags: tuple[str, ...]  # Surrogate-Key / Cache-Tag
    stored_at: float  # when this response (or its last revalidation) arrived
    initial_age: float
    lifetime: float
    swr: float
    sie: float
    no_cache: bool
    vary: tuple[tuple[str, str], ...] = ()  # request header name -> value this response was selected by
    etag: str | None = None
    last_modified: str | None = None
    # What the proxy derives once per entry for serving it (app.ClientBase); never stored, reset by replace().
    prepared: Any = field(default=None, init=False, compare=False, repr=False)

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.stored_at)

    def fresh(self, now: float) -> bool:
        return not self.no_cache and self.age(now) < self.lifetime

    def within_swr(self, now: float) -> bool:
        return not self.no_cache and self.age(now) < self.lifetime + self.swr

    def within_sie(self, now: float) -> bool:
        # A no-cache entry is never used without a successful validation (RFC 9111 §5.2.2.4).
        return not self.no_cache and self.age(now) < self.lifetime + self.sie

    def keep_for(self) -> float:
        """How long the store should keep it: beyond freshness for stale serving and revalidation."""
        return self.lifetime + max(self.swr, self.sie, 60.0 if (self.etag or self.last_modified) else 0.0)

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 256

    def pack(self) -> bytes:
        data: bytes = msgpack.packb(
            [self.status, self.reason, self.headers, self.body, self.path, list(self.tags), self.stored_at,
             self.initial_age, self.lifetime, self.swr, self.sie, self.no_cache, [list(v) for v in self.vary],
             self.etag, self.last_modified],
            use_bin_type=True,
        )  # fmt: skip
        return data

    @classmethod
    def unpack(cls, data: bytes) -> CachedResponse:
        f = msgpack.unpackb(data, raw=False)
        return cls(
            status=f[0], reason=f[1], headers=[tuple(h) for h in f[2]], body=f[3], path=f[4], tags=tuple(f[5]),
            stored_at=f[6], initial_age=f[7], lifetime=f[8], swr=f[9], sie=f[10], no_cache=f[11],
            vary=tuple(tuple(v) for v in f[12]), etag=f[13], last_modified=f[14],
        )  # fmt: skip


@dataclass(slots=True)
class Varies:
    """What a URL's key holds once its responses carry Vary: the request headers they vary on (lower-case,
    sorted), and the keys of the variants stored (least recently stored first)."""

    names: tuple[str, ...]
    variants: list[str]


# A soft purge's change to each matching entry (cache/policy.py soft_purged): stale, kept for refreshing.
Soften = Callable[[CachedResponse], CachedResponse]


class CacheStore(Protocol):
    async def get(self, key: str) -> CachedResponse | Varies | None: ...

    async def put(self, key: str, entry: CachedResponse) -> None:
        """Store `entry` for `key`; one with Vary values goes under its variant key, beside the others."""

    async def purge(
        self, *, paths: list[str], prefixes: list[str], tags: list[str], soften: Soften | None = None
    ) -> int:
        """Drop the matching entries (every variant), or with `soften` replace each by `soften(entry)`."""

    async def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class MemoryCacheStore:
    """LRU bounded by bytes; indexes by path and by surrogate key for purges."""

    def __init__(self, max_bytes: int, clock: Clock = system_clock) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()
        self._varies: dict[str, Varies] = {}  # URL key -> its Vary variants' keys (in _entries)
        self._by_path: dict[str, set[str]] = {}
        self._by_tag: dict[str, set[str]] = {}
        self.evictions = 0

    async def get(self, key: str) -> CachedResponse | Varies | None:
        return self.get_now(key)

    def get_now(self, key: str) -> CachedResponse | Varies | None:
        """`get` without a coroutine: the memory store answers at once (the cache-hit path uses this)."""
        entry = self._entries.get(key)
        if entry is None:
            return self._varies.get(key)
        if entry.age(self.clock()) >= entry.keep_for():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def holds_fresh(self, key: str, entry: CachedResponse, now: float) -> bool:
        """Whether `key` still holds this very `entry`, fresh at `now` (touched in the LRU order, as `get_now`
        touches what it returns): what a remembered hit is checked against (executor.HitAnswer.again)."""
        if self._entries.get(key) is not entry or not entry.fresh(now):
            return False
        self._entries.move_to_end(key)
        return True

    def keys_by_path(self) -> Iterator[tuple[str, set[str]]]:
        """Each stored path + query with the keys stored for it (read at metrics scrape time)."""
        return iter(list(self._by_path.items()))

    def holds_path(self, path: str) -> bool:
        """Whether any entry is stored for this path + query (any host, variant set or key headers)."""
        return path in self._by_path

    async def put(self, key: str, entry: CachedResponse) -> None:
        if entry.size > self.max_bytes:
            return
        if not entry.vary:
            self._drop_variants(key)
            self._store(key, entry)
            return
        names = tuple(name for name, _ in entry.vary)
        if key in self._entries:
            self._remove(key)  # a response without Vary no longer answers for this URL
        varies = self._varies.get(key)
        if varies is not None and varies.names != names:
            self._drop_variants(key)  # the URL varies on other headers now: its old variants cannot be selected
        stored = variant_key(key, entry.vary)
        self._store(stored, entry)
        if stored not in self._entries:
            return
        varies = self._varies.get(key)
        if varies is None:
            varies = self._varies[key] = Varies(names, [])
        varies.variants.append(stored)
        while len(varies.variants) > MAX_VARIANTS:
            self._remove(varies.variants[0])

    def _drop_variants(self, key: str) -> None:
        varies = self._varies.pop(key, None)
        if varies is not None:
            for stored in varies.variants:
                self._remove(stored)

    def _store(self, key: str, entry: CachedResponse) -> None:
        if key in self._entries:
            self._remove(key)
        self._entries[key] = entry
        self.bytes += entry.size
        self._by_path.setdefault(entry.path, set()).add(key)
        for tag in entry.tags:
            self._by_tag.setdefault(tag, set()).add(key)
        while self.bytes > self.max_bytes and self._entries:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.evictions += 1

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.bytes -= entry.size
        if entry.vary:
            varies = self._varies.get(base_key(key))
            if varies is not None and key in varies.variants:
                varies.variants.remove(key)
                if not varies.variants:
                    del self._varies[base_key(key)]
        keys = self._by_path.get(entry.path)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_path[entry.path]
        for tag in entry.tags:
            tagged = self._by_tag.get(tag)
            if tagged is not None:
                tagged.discard(key)
                if not tagged:
                    del self._by_tag[tag]

    async def purge(
        self, *, paths: list[str], prefixes: list[str], tags: list[str], soften: Soften | None = None
    ) -> int:
        doomed: set[str] = set()
        for path in paths:
            doomed |= self._by_path.get(path, set())
        for prefix in prefixes:
            for path, keys in self._by_path.items():
                if path.startswith(prefix):
                    doomed |= keys
        for tag in tags:
            doomed |= self._by_tag.get(tag, set())
        if soften is not None:
            for key in doomed:  # same size, path and tags: the indexes and the LRU order stay as they are
                self._entries[key] = soften(self._entries[key])
            return len(doomed)
        for key in doomed:
            self._remove(key)
        return len(doomed)

    async def stats(self) -> dict[str, Any]:
        per_path = sorted(((len(keys), path) for path, keys in self._by_path.items()), reverse=True)[:10]
        return {
            "backend": "memory", "entries": len(self._entries), "bytes": self.bytes, "maxBytes": self.max_bytes,
            "evictions": self.evictions, "paths": len(self._by_path), "varyingUrls": len(self._varies),
            "variantKeysPerPath": [{"path": p, "keys": n} for n, p in per_path],
        }  # fmt: skip

    async def close(self) -> None:
        self._entries.clear()
        self._varies.clear()


class RedisCacheStore:
    """Entries as msgpack blobs with a TTL; sets index them by path and by tag for purges across instances."""

    PREFIX = "edgeproxy:cache:"

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self.url = url
        self._client = redis.Redis.from_url(url, decode_responses=False, socket_timeout=2, socket_connect_timeout=2)

    @classmethod
    def _key(cls, key: str) -> str:
        return cls.PREFIX + "e:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()

    @classmethod
    def _varies_key(cls, key: str) -> str:
        return cls.PREFIX + "v:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()

    async def get(self, key: str) -> CachedResponse | Varies | None:
        data, varies = await self._client.mget([self._key(key), self._varies_key(key)])
        if data is not None:
            return CachedResponse.unpack(data if isinstance(data, bytes) else data.encode())
        if varies is not None:
            names, variants = msgpack.unpackb(varies, raw=False)
            return Varies(tuple(names), list(variants))
        return None

    async def _variants_after(self, key: str, entry: CachedResponse, stored: str) -> tuple[list[str], list[str]]:
        """The URL's variant keys with `stored` added last, and those to drop (over MAX_VARIANTS, or stored for
        other Vary names). Two instances storing at once may each miss the other's: that variant then only
        lives out its TTL."""
        names = [name for name, _ in entry.vary]
        variants: list[str] = []
        dropped: list[str] = []
        raw = await self._client.get(self._varies_key(key))
        if raw is not None:
            old_names, old_variants = msgpack.unpackb(raw, raw=False)
            if list(old_names) == names:
                variants = [v for v in old_variants if v != stored]
            else:
                dropped = [v for v in old_variants if v != stored]
        variants.append(stored)
        dropped += variants[:-MAX_VARIANTS]
        return variants[-MAX_VARIANTS:], dropped

    async def put(self, key: str, entry: CachedResponse) -> None:
        ttl_ms = max(1000, int(entry.keep_for() * 1000))
        if entry.vary:
            stored = self._key(variant_key(key, entry.vary))
            variants, dropped = await self._variants_after(key, entry, stored)
        else:
            stored = self._key(key)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(stored, entry.pack(), px=ttl_ms)
            if entry.vary:
                pipe.delete(self._key(key))  # a response without Vary no longer answers for this URL
                marker = self._varies_key(key)
                names = [name for name, _ in entry.vary]
                pipe.set(marker, msgpack.packb([names, variants], use_bin_type=True), keepttl=True)
                pipe.pexpire(marker, ttl_ms, gt=True)
                pipe.pexpire(marker, ttl_ms, nx=True)
                if dropped:
                    pipe.delete(*dropped)
            else:
                pipe.delete(self._varies_key(key))  # its variants, unreachable now, live out their TTL
            index_keys = [self.PREFIX + "p:" + entry.path] + [self.PREFIX + "t:" + tag for tag in entry.tags]
            for index in index_keys:
                pipe.sadd(index, stored)
                pipe.pexpire(index, ttl_ms, gt=True)
                pipe.pexpire(index, ttl_ms, nx=True)
            pipe.sadd(self.PREFIX + "paths", entry.path)
            await pipe.execute()

    async def purge(
        self, *, paths: list[str], prefixes: list[str], tags: list[str], soften: Soften | None = None
    ) -> int:
        indexes = [self.PREFIX + "p:" + p for p in paths] + [self.PREFIX + "t:" + t for t in tags]
        if prefixes:
            known = await self._client.smembers(self.PREFIX + "paths")
            for raw in known:
                path = raw.decode() if isinstance(raw, bytes) else str(raw)
                if any(path.startswith(prefix) for prefix in prefixes):
                    indexes.append(self.PREFIX + "p:" + path)
        doomed: set[bytes | str] = set()
        for index in indexes:
            doomed |= set(await self._client.smembers(index))
        if soften is not None:
            return await self._soften(list(doomed), soften)
        if doomed:
            # Take each purged entry out of every index it is in (its path and all its tags), not only the one
            # it was purged by, so status counts stay true.
            members = list(doomed)
            blobs = await self._client.mget(members)
            async with self._client.pipeline(transaction=False) as pipe:
                for member, blob in zip(members, blobs, strict=True):
                    if blob is None:
                        continue
                    entry = CachedResponse.unpack(blob if isinstance(blob, bytes) else blob.encode())
                    pipe.srem(self.PREFIX + "p:" + entry.path, member)
                    for tag in entry.tags:
                        pipe.srem(self.PREFIX + "t:" + tag, member)
                pipe.delete(*members)
                await pipe.execute()
        if indexes:
            await self._client.delete(*indexes)
        return len(doomed)

    async def _soften(self, members: list[bytes | str], soften: Soften) -> int:
        """A soft purge: each entry still stored rewritten in place, its TTL kept (a softened entry never needs
        to outlive the original: cache/policy.py soft_purged)."""
        if not members:
            return 0
        softened = 0
        blobs = await self._client.mget(members)
        async with self._client.pipeline(transaction=False) as pipe:
            for member, blob in zip(members, blobs, strict=True):
                if blob is None:
                    continue
                entry = soften(CachedResponse.unpack(blob if isinstance(blob, bytes) else blob.encode()))
                pipe.set(member, entry.pack(), xx=True, keepttl=True)
                softened += 1
            await pipe.execute()
        return softened

    async def stats(self) -> dict[str, Any]:
        known = await self._client.smembers(self.PREFIX + "paths")
        counts = []
        for raw in list(known)[:200]:
            path = raw.decode() if isinstance(raw, bytes) else str(raw)
            counts.append((int(await self._client.scard(self.PREFIX + "p:" + path)), path))
        counts.sort(reverse=True)
        return {"backend": "redis", "paths": len(known),
                "variantKeysPerPath": [{"path": p, "keys": n} for n, p in counts[:10] if n]}  # fmt: skip

    async def close(self) -> None:
        await self._client.aclose()
