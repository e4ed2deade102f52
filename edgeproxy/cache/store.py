"""Where cached responses live: a byte-bounded LRU in memory (embedded default) or Redis (shared)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from edgeproxy.clock import Clock, system_clock


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


class CacheStore(Protocol):
    async def get(self, key: str) -> CachedResponse | None: ...

    async def put(self, key: str, entry: CachedResponse) -> None: ...

    async def purge(self, *, paths: list[str], prefixes: list[str], tags: list[str]) -> int: ...

    async def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class MemoryCacheStore:
    """LRU bounded by bytes; indexes by path and by surrogate key for purges."""

    def __init__(self, max_bytes: int, clock: Clock = system_clock) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()
        self._by_path: dict[str, set[str]] = {}
        self._by_tag: dict[str, set[str]] = {}
        self.evictions = 0

    async def get(self, key: str) -> CachedResponse | None:
        return self.get_now(key)

    def get_now(self, key: str) -> CachedResponse | None:
        """`get` without a coroutine: the memory store answers at once (the cache-hit path uses this)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.age(self.clock()) >= entry.keep_for():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def holds_path(self, path: str) -> bool:
        """Whether any entry is stored for this path + query (any host, variant set or key headers)."""
        return path in self._by_path

    async def put(self, key: str, entry: CachedResponse) -> None:
        if entry.size > self.max_bytes:
            return
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

    async def purge(self, *, paths: list[str], prefixes: list[str], tags: list[str]) -> int:
        doomed: set[str] = set()
        for path in paths:
            doomed |= self._by_path.get(path, set())
        for prefix in prefixes:
            for path, keys in self._by_path.items():
                if path.startswith(prefix):
                    doomed |= keys
        for tag in tags:
            doomed |= self._by_tag.get(tag, set())
        for key in doomed:
            self._remove(key)
        return len(doomed)

    async def stats(self) -> dict[str, Any]:
        per_path = sorted(((len(keys), path) for path, keys in self._by_path.items()), reverse=True)[:10]
        return {
            "backend": "memory", "entries": len(self._entries), "bytes": self.bytes, "maxBytes": self.max_bytes,
            "evictions": self.evictions, "paths": len(self._by_path),
            "variantKeysPerPath": [{"path": p, "keys": n} for n, p in per_path],
        }  # fmt: skip

    async def close(self) -> None:
        self._entries.clear()


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

    async def get(self, key: str) -> CachedResponse | None:
        data = await self._client.get(self._key(key))
        if data is None:
            return None
        return CachedResponse.unpack(data if isinstance(data, bytes) else data.encode())

    async def put(self, key: str, entry: CachedResponse) -> None:
        ttl_ms = max(1000, int(entry.keep_for() * 1000))
        stored = self._key(key)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(stored, entry.pack(), px=ttl_ms)
            index_keys = [self.PREFIX + "p:" + entry.path] + [self.PREFIX + "t:" + tag for tag in entry.tags]
            for index in index_keys:
                pipe.sadd(index, stored)
                pipe.pexpire(index, ttl_ms, gt=True)
                pipe.pexpire(index, ttl_ms, nx=True)
            pipe.sadd(self.PREFIX + "paths", entry.path)
            await pipe.execute()

    async def purge(self, *, paths: list[str], prefixes: list[str], tags: list[str]) -> int:
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
