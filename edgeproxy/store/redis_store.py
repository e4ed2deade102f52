"""Redis state store, for several proxy instances sharing users and events.

Attributes: one hash per user (`edgeproxy:{project}:user:{uid}`), JSON values, EXPIRE = TTL, updated by Lua
scripts so the per-user cap and the merge are atomic. Events: one stream per project
(`edgeproxy:{project}:events`), appended with XADD and never trimmed.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from edgeproxy.store.base import AttributeLimits, EventRecord, StoreError, StoreLimitError, check_attributes

# KEYS[1] user hash; ARGV: ttl, cap, then key/value pairs (value "null" deletes)
_PATCH = """
local n = redis.call('HLEN', KEYS[1])
for i = 3, #ARGV, 2 do
  local exists = redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1
  if ARGV[i + 1] == 'null' then
    if exists then n = n - 1 end
  elseif not exists then n = n + 1 end
end
if n > tonumber(ARGV[2]) then return redis.error_reply('CAP ' .. n) end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == 'null' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
if n > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""
# Scripts check the cap before writing: Redis does not roll a script back on error.
# KEYS[1] source hash, KEYS[2] target hash; ARGV: ttl, cap. Source values win.
_MERGE = """
local src = redis.call('HGETALL', KEYS[1])
local added = {}
local n = redis.call('HLEN', KEYS[2])
for i = 1, #src, 2 do
  if redis.call('HEXISTS', KEYS[2], src[i]) == 0 then n = n + 1 end
end
if n > tonumber(ARGV[2]) then return redis.error_reply('CAP ' .. n) end
for i = 1, #src, 2 do redis.call('HSET', KEYS[2], src[i], src[i + 1]) end
if n > 0 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return n
"""


class RedisStore:
    def __init__(self, url: str, limits: AttributeLimits) -> None:
        self.url = url
        self.limits = limits
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise StoreError("store is closed")
        return self._client

    async def start(self) -> None:
        self._client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
        try:
            await self._client.ping()
        except RedisError as exc:
            raise StoreError(f"cannot reach Redis at {self.url}: {exc}") from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @staticmethod
    def _user_key(project_uid: str, user_uid: str) -> str:
        return f"edgeproxy:{project_uid}:user:{user_uid}"

    def cached_attributes(self, project_uid: str, user_uid: str) -> dict[str, Any] | None:
        return None  # shared between instances: always read from Redis

    async def get_attributes(self, project_uid: str, user_uid: str) -> dict[str, Any]:
        try:
            raw = await self.client.hgetall(self._user_key(project_uid, user_uid))
        except RedisError as exc:
            raise StoreError(f"Redis read failed: {exc}") from exc
        return {str(k): json.loads(v) for k, v in raw.items()}

    async def patch_attributes(self, project_uid: str, user_uid: str, attributes: dict[str, Any]) -> None:
        encoded = check_attributes(attributes, self.limits)
        args: list[str | int] = [self.limits.ttl_seconds, self.limits.max_attributes_per_user]
        for key, text in encoded.items():
            args += [key, text]
        await self._script(_PATCH, [self._user_key(project_uid, user_uid)], args, "user")

    async def merge_attributes(self, project_uid: str, source_uid: str, target_uid: str) -> None:
        keys = [self._user_key(project_uid, source_uid), self._user_key(project_uid, target_uid)]
        await self._script(_MERGE, keys, [self.limits.ttl_seconds, self.limits.max_attributes_per_user], "merged user")

    async def _script(self, script: str, keys: list[str], args: list[str | int], who: str) -> None:
        try:
            await self.client.eval(script, len(keys), *keys, *args)
        except ResponseError as exc:
            if str(exc).startswith("CAP "):
                count = str(exc).split()[1]
                raise StoreLimitError(
                    f"{who} would have {count} attributes; at most {self.limits.max_attributes_per_user} per user"
                ) from None
            raise StoreError(f"Redis write failed: {exc}") from exc
        except RedisError as exc:
            raise StoreError(f"Redis write failed: {exc}") from exc

    async def append_events(self, events: list[EventRecord]) -> None:
        if not events:
            return
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for e in events:
                    fields = {
                        "ts": repr(e.ts), "user": e.user_uid, "type": e.type, "source": e.source,
                        "exp": e.experience_short_uid or "", "var": e.variant_short_uid or "", "key": e.event_key or "",
                    }  # fmt: skip
                    pipe.xadd(f"edgeproxy:{e.project_uid}:events", fields)  # type: ignore[arg-type]
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"Redis event append failed: {exc}") from exc

    async def count_events(self, project_uid: str) -> int:
        try:
            return int(await self.client.xlen(f"edgeproxy:{project_uid}:events"))
        except RedisError as exc:
            raise StoreError(f"Redis read failed: {exc}") from exc
