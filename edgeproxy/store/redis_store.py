"""Redis state store, for several proxy instances sharing users and events.

Attributes: one hash per user (`edgeproxy:{project}:user:{uid}`), JSON values, EXPIRE = TTL, updated by Lua
scripts so the per-user cap and the merge are atomic. Events: one stream per project
(`edgeproxy:{project}:events`), appended with XADD (server-assigned ids, so in arrival order); each stream's name
is kept in the set `edgeproxy:event-streams`, so a drain finds every project's stream.

Without an event store (`events` unset) the stream IS the store: trimmed only by `purge_events` (retention) and
`delete_user` (data subject requests), kept in Redis's memory. With one (`events = postgresql://…`) it is a bounded
transport: appends are refused past `events_buffer_max` entries (EventsBufferFull, the whole batch, atomically:
store/redis_queue.py), and store/event_drain.py moves entries into the event store and deletes them. Nothing else
is kept per user.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Collection
from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from edgeproxy.store.base import (
    BEHAVIOUR_KEY,
    TOMBSTONE_BATCH,
    TOMBSTONES_KEPT,
    AttributeLimits,
    EventRecord,
    EventsBufferFull,
    StoreError,
    StoreLimitError,
    check_attributes,
    encode_value,
    event_document,
    tombstone_of,
)
from edgeproxy.store.redis_queue import QueueFull, RedisQueue

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


log = logging.getLogger("edgeproxy.events")
REFUSAL_LOG_EVERY = 10.0  # seconds between log lines about refused events (each refusal is counted)
EVENT_STREAMS = "edgeproxy:event-streams"  # set: the name of every project's event stream ever appended to
DRAIN_GROUP = "edgeproxy-events"  # the consumer group that drains event streams into the event store
_TOMBSTONES = "edgeproxy:deleted-users"  # zset: tombstone_of(uid) -> deletion sequence number
_TOMBSTONE_SEQ = "edgeproxy:deleted-users:seq"
_CHUNK = 1_000  # stream entries read (and deleted) per round trip: Redis serves other clients in between
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _glob_literal(text: str) -> str:
    """`text` as a SCAN MATCH pattern that matches only itself."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _after(entry_id: str) -> str:
    """The smallest stream id greater than `entry_id` ("ms-seq")."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq) + 1}" if int(seq) < 2**64 - 1 else f"{int(ms) + 1}-0"


def _event_ts(fields: dict[str, str]) -> float:
    try:
        return float(fields["ts"])
    except (KeyError, ValueError):
        return float("-inf")  # not an entry append_events wrote: nothing to keep it for


def event_stream(project_uid: str) -> str:
    return f"edgeproxy:{project_uid}:events"


def stream_project(stream: str) -> str:
    """The project whose events `stream` (`edgeproxy:{project}:events`) carries."""
    return stream[len("edgeproxy:") : -len(":events")]


def event_fields(event: EventRecord) -> dict[str, str]:
    """An event as its stream entry's fields (the project is the stream's)."""
    return {
        "ts": repr(event.ts), "user": event.user_uid, "type": event.type, "source": event.source,
        "exp": event.experience_short_uid or "", "var": event.variant_short_uid or "", "key": event.event_key or "",
    }  # fmt: skip


def event_from_fields(project_uid: str, fields: dict[str, str]) -> EventRecord | None:
    """A stream entry as the event `event_fields` made of it; None for an entry it did not write."""
    kind, source = fields.get("type"), fields.get("source", "sdk")
    if kind not in ("IMPRESSION", "EVENT") or source not in ("sdk", "proxy", "origin") or "user" not in fields:
        return None
    ts = _event_ts(fields)
    if ts == float("-inf"):
        return None
    return EventRecord(
        ts=ts, project_uid=project_uid, user_uid=fields["user"], type=kind,  # type: ignore[arg-type]
        experience_short_uid=fields.get("exp") or None, variant_short_uid=fields.get("var") or None,
        event_key=fields.get("key") or None, source=source,  # type: ignore[arg-type]
    )  # fmt: skip


class RedisStore:
    def __init__(self, url: str, limits: AttributeLimits, events_buffer_max: int = 0) -> None:
        """`events_buffer_max` > 0: the event streams are a transport to an event store, each refusing appends
        past that many entries; 0: they are the store, unbounded."""
        self.url = url
        self.limits = limits
        self.events_buffer_max = events_buffer_max
        self.events_refused: Counter[str] = Counter()  # by source: events refused because a stream was full
        self._client: redis.Redis | None = None
        self._event_queues: dict[str, RedisQueue] = {}  # project -> its stream (the append script loaded once)
        self._refusal_logged_at = float("-inf")
        # The event streams a purge run works on, found once per run (a run ends when a call returns < limit).
        self._purge_streams: list[str] | None = None

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
            self._event_queues.clear()

    @staticmethod
    def _user_key(project_uid: str, user_uid: str) -> str:
        return f"edgeproxy:{project_uid}:user:{user_uid}"

    def cached_attributes(
        self, project_uid: str, user_uid: str, *, behaviour_at_hand: bool = False
    ) -> dict[str, Any] | None:
        return None  # shared between instances: always read from Redis

    async def follow_writes(self) -> int:
        return 0  # nothing in-process to bring up to date

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

    async def put_behaviour(
        self, project_uid: str, states: dict[str, str], *, new: Collection[str] | None = None
    ) -> None:
        if not states:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for user, state in states.items():
                    key = self._user_key(project_uid, user)
                    pipe.hset(key, BEHAVIOUR_KEY, encode_value(state))
                    pipe.expire(key, self.limits.ttl_seconds)
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"Redis write failed: {exc}") from exc

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
        """Each project's events in one script (a request's events are one project's: all or none of them), under
        the cap when there is one: EventsBufferFull, counted by source, when a stream is full."""
        if not events:
            return
        by_project: dict[str, list[EventRecord]] = {}
        for event in events:
            by_project.setdefault(event.project_uid, []).append(event)
        for project, batch in by_project.items():
            queue = self._event_queues.get(project)
            if queue is None:
                queue = self._event_queues[project] = RedisQueue(self.client, event_stream(project), DRAIN_GROUP)
            try:
                await queue.append([event_fields(e) for e in batch], self.events_buffer_max, EVENT_STREAMS)
            except QueueFull as full:
                self.events_refused.update(e.source for e in batch)
                refused = EventsBufferFull(
                    f"{len(batch)} events refused: the Redis stream {full.stream} already buffers {full.length} "
                    f"events not yet moved to the event store, its cap (events_buffer_max) is {full.cap}. The event "
                    "store (setting `events`) is not keeping up or is down: see the `events` object of "
                    "the ops status endpoint (/_edgeproxy/status by default) and the PostgreSQL server"
                )
                if time.monotonic() - self._refusal_logged_at >= REFUSAL_LOG_EVERY:
                    self._refusal_logged_at = time.monotonic()
                    log.error("%s (refused by this process so far, by source: %s)", refused,
                              dict(sorted(self.events_refused.items())))  # fmt: skip
                raise refused from None
            except RedisError as exc:
                raise StoreError(f"Redis event append failed: {exc}") from exc

    async def count_events(self, project_uid: str) -> int:
        try:
            return int(await self.client.xlen(f"edgeproxy:{project_uid}:events"))
        except RedisError as exc:
            raise StoreError(f"Redis read failed: {exc}") from exc

    # -- data subject requests and retention -----------------------------------------------------------------

    async def _event_streams(self) -> list[str]:
        """Every project's event stream (SCAN, TYPE stream: an O(keyspace) walk in COUNT-sized steps)."""
        keys = [str(k) async for k in self.client.scan_iter(match="edgeproxy:*:events", count=_CHUNK, _type="stream")]
        return sorted(set(keys))

    async def _user_hashes(self, user_uid: str) -> dict[str, str]:
        """project -> attribute hash key of `user_uid`, in every project (SCAN with the uid as a literal)."""
        suffix = f":user:{user_uid}"
        found: dict[str, str] = {}
        async for raw in self.client.scan_iter(match=f"edgeproxy:*{_glob_literal(suffix)}", count=_CHUNK, _type="hash"):
            key = str(raw)
            project = key[len("edgeproxy:") : -len(suffix)]
            # `edgeproxy:P:user:a:user:b` is uid "a:user:b" in P, not uid "b" in project "P:user:a"
            if project and ":user:" not in project:
                found[project] = key
        return found

    async def _entries(self, stream: str, start: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """XRANGE stream start + COUNT count, as (id, fields)."""
        rows = await self.client.xrange(stream, min=start, max="+", count=count)
        return [(str(i), {str(k): str(v) for k, v in (f or {}).items()}) for i, f in rows or []]

    async def _user_entries(self, stream: str, user_uid: str) -> AsyncIterator[list[tuple[str, dict[str, str]]]]:
        """The user's entries of `stream`, oldest first, one list per XRANGE chunk of the whole stream."""
        start = "-"
        while rows := await self._entries(stream, start, _CHUNK):
            yield [(i, f) for i, f in rows if f.get("user") == user_uid]
            start = f"({rows[-1][0]}"

    async def user_data(self, user_uid: str) -> dict[str, Any]:
        """Attributes: the user's hashes, found by SCAN. Events: every project's stream read in chunks of
        1,000 (there is no per-user index: one would cost every append a write). Not a snapshot: writes for
        the user during the export may or may not appear."""
        try:
            attributes: dict[str, dict[str, Any]] = {}
            for project, key in sorted((await self._user_hashes(user_uid)).items()):
                raw = await self.client.hgetall(key)
                if raw:
                    attributes[project] = {str(k): json.loads(v) for k, v in raw.items()}
            events: list[EventRecord] = []
            for stream in await self._event_streams():
                project = stream[len("edgeproxy:") : -len(":events")]
                async for chunk in self._user_entries(stream, user_uid):
                    events += [
                        EventRecord(
                            ts=_event_ts(f), project_uid=project, user_uid=user_uid, type=f["type"],  # type: ignore[arg-type]
                            experience_short_uid=f.get("exp") or None, variant_short_uid=f.get("var") or None,
                            event_key=f.get("key") or None, source=f.get("source", "sdk"),  # type: ignore[arg-type]
                        )
                        for _, f in chunk
                    ]  # fmt: skip
        except RedisError as exc:
            raise StoreError(f"Redis read failed: {exc}") from exc
        events.sort(key=lambda e: e.ts)  # stable: arrival order among equal times
        return {"userUid": user_uid, "attributes": attributes, "events": [event_document(e) for e in events]}

    async def delete_user(self, user_uid: str) -> dict[str, int]:
        """DEL of the user's attribute hashes (found by SCAN, the uid matched literally), then each project's
        stream walked in XRANGE chunks of 1,000 with an XDEL of the user's entries in each chunk: no command
        holds Redis for long, and entries appended while the walk runs are reached. Not atomic across keys.
        XDEL only flags an entry inside its stream node; the bytes go when the node is freed or rewritten."""
        try:
            hashes = await self._user_hashes(user_uid)
            attributes = int(await self.client.delete(*hashes.values())) if hashes else 0
            events = 0
            for stream in await self._event_streams():
                async for chunk in self._user_entries(stream, user_uid):
                    if chunk:
                        events += int(await self.client.xdel(stream, *(i for i, _ in chunk)))
            # The tombstone, scored by a fleet-wide sequence (not a clock: instances' clocks may disagree).
            seq = int(await self.client.incr(_TOMBSTONE_SEQ))
            await self.client.zadd(_TOMBSTONES, {tombstone_of(user_uid): seq})
            await self.client.zremrangebyrank(_TOMBSTONES, 0, -TOMBSTONES_KEPT - 1)
        except RedisError as exc:
            raise StoreError(f"Redis delete failed: {exc}") from exc
        return {"attributes": attributes, "events": events}

    def forget_deleted(self, tombstones: set[str]) -> int:
        return 0  # nothing is cached in-process: every instance reads the shared keys

    async def deletions_after(self, cursor: int) -> tuple[list[str], int]:
        try:
            rows = cast(list[tuple[bytes | str, float]], await self.client.zrangebyscore(
                _TOMBSTONES, f"({cursor}", "+inf", start=0, num=TOMBSTONE_BATCH, withscores=True
            ))  # fmt: skip  # withscores: (member, score) pairs
        except RedisError as exc:
            raise StoreError(f"Redis read of deletions failed: {exc}") from exc
        tombstones = [member.decode() if isinstance(member, bytes) else member for member, _ in rows]
        return tombstones, (int(rows[-1][1]) if rows else cursor)

    async def purge_events(self, older_than: float, limit: int) -> int:
        """Retention by XTRIM MINID. A stream's ids are arrival times, not event times (ts is the caller's and
        may be older), so the ids alone cannot say which events are old: each stream's head is read in XRANGE
        chunks, and the streams' heads are merged oldest ts first, taking entries while ts < older_than, at most
        `limit`. What is taken is a prefix of each stream, removed with one exact XTRIM MINID (the id after the
        last one taken). A stream stops at its first entry at or after `older_than`: an older event appended
        behind a newer one goes when that one does (events leave a stream in arrival order). Work per call:
        about `limit` entries read plus one chunk per stream. The streams are found by one SCAN per run (a run
        ends with a call that returns less than `limit`), not per call."""
        if limit <= 0:
            return 0
        try:
            if self._purge_streams is None:
                self._purge_streams = await self._event_streams()
            heads: dict[str, deque[tuple[float, str]]] = {}
            starts = dict.fromkeys(self._purge_streams, "-")
            cut: dict[str, str] = {}  # stream -> last id to remove
            taken = 0
            while taken < limit:
                for stream in [s for s in starts if not heads.get(s)]:
                    rows = await self._entries(stream, starts[stream], min(_CHUNK, limit - taken))
                    if not rows:
                        del starts[stream]
                        continue
                    heads[stream] = deque((_event_ts(f), i) for i, f in rows)
                    starts[stream] = f"({rows[-1][0]}"
                oldest = min(((heads[s][0][0], s) for s in starts), default=None)
                if oldest is None or oldest[0] >= older_than:
                    break
                cut[oldest[1]] = heads[oldest[1]].popleft()[1]
                taken += 1
            removed = 0
            for stream, last in cut.items():
                removed += int(await self.client.xtrim(stream, minid=_after(last), approximate=False))
        except RedisError as exc:
            self._purge_streams = None
            raise StoreError(f"Redis event purge failed: {exc}") from exc
        if removed < limit:
            self._purge_streams = None  # the run is over; the next one looks for new projects' streams
        return removed
