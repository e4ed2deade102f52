"""A durable queue in one Redis stream, read through a consumer group: the one outbox mechanism of edgeproxy.

Two things use it: the forwarding outbox (forward/redis_outbox.py, writes waiting for Contentstack's Edge API) and
the event transport (store/redis_store.py appends, store/event_drain.py drains into PostgreSQL). Both follow the
same pattern:

- durable append: XADD, optionally under a hard cap checked atomically with the append (one Lua script: XLEN and
  the XADDs cannot be split by another client's append), so a full queue refuses the whole batch and says so;
- a consumer group: each entry is delivered to one consumer (`read_new`); what a consumer read and did not
  acknowledge stays in the group's pending entries list, so a consumer that dies loses nothing: another one takes
  its entries over (`claim`, XAUTOCLAIM of entries idle for a while);
- ack after the sink's commit: `ack` acknowledges AND deletes (XACK + XDEL in one transaction), so the stream
  length is the backlog and memory is freed as the sink catches up. At-least-once delivery; the sink makes it
  exactly-once by keeping the entry id (the forwarding sender tolerates repeats, PostgreSQL ignores a known id).

An entry deleted while pending (a user's data deleted meanwhile) comes back from the pending list without fields:
`read_pending` and `claim` return such ids apart (`gone`), to be acknowledged and skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError

from edgeproxy.store.base import StoreError

# KEYS[1] stream, KEYS[2] a set the stream's name is added to ("" = none), KEYS[3...] streams whose entries count
# towards the cap too; ARGV: cap (0 = none), k, the k field names, then k values per entry. Refused as a whole
# ("FULL <length>") when the entries would take the length past the cap: Redis does not roll a script back, so
# the check comes before any write.
_APPEND = """
local cap = tonumber(ARGV[1])
local k = tonumber(ARGV[2])
local count = (#ARGV - 2 - k) / k
if cap > 0 then
  local length = 0
  for i = 1, #KEYS do
    if i ~= 2 then length = length + redis.call('XLEN', KEYS[i]) end
  end
  if length + count > cap then return redis.error_reply('FULL ' .. length) end
end
local ids = {}
for n = 0, count - 1 do
  local args = {'XADD', KEYS[1], '*'}
  for f = 1, k do
    args[#args + 1] = ARGV[2 + f]
    args[#args + 1] = ARGV[2 + k + n * k + f]
  end
  ids[#ids + 1] = redis.call(unpack(args))
end
if KEYS[2] ~= '' then redis.call('SADD', KEYS[2], KEYS[1]) end
return ids
"""

Fields = Mapping[Any, Any]  # str keys and values from a decode_responses client, bytes from a raw one
Entry = tuple[str, Fields]  # (stream entry id, fields)


class QueueFull(StoreError):
    """An append refused because the stream holds `length` entries and the batch would take it past `cap`."""

    def __init__(self, stream: str, length: int, cap: int, count: int) -> None:
        super().__init__(f"Redis stream {stream} holds {length} entries; {count} more would pass its cap of {cap}")
        self.stream = stream
        self.length = length
        self.cap = cap
        self.count = count


@dataclass(frozen=True, slots=True)
class QueueStats:
    length: int  # entries in the stream: the backlog (acknowledged entries are deleted)
    pending: int  # delivered to a consumer, not yet acknowledged
    oldest_age: float | None  # seconds since the oldest entry was appended (Redis's clock); None when empty
    consumers: int  # consumers the group knows (live or not)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream id ("ms-seq") as a sort key."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def entry_millis(entry_id: str) -> int:
    """When an entry was appended (Redis's clock, ms): the first part of its id."""
    return int(entry_id.partition("-")[0])


class RedisQueue:
    """One stream `stream` and its consumer group `group`, on a client the caller opens and closes."""

    def __init__(self, client: redis.Redis, stream: str, group: str) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self._append = client.register_script(_APPEND)

    async def ensure_group(self) -> None:
        """The group, created at the stream's start when missing (entries already there are delivered too: a
        stream written before anything drained it is drained from its first entry)."""
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def append(
        self,
        entries: Sequence[Mapping[str, str | bytes]],
        cap: int = 0,
        registry: str = "",
        counted: Sequence[str] = (),
    ) -> list[str]:
        """Append `entries` (all with the same field names) in order, in one script; their ids. With `cap` > 0,
        QueueFull (nothing appended) when the stream, plus the `counted` streams, would then hold more than `cap`
        entries. `registry`: a set the stream's name is added to, so a drain finds every stream written."""
        if not entries:
            return []
        names = list(entries[0])
        values: list[str | bytes] = []
        for entry in entries:
            values += [entry[name] for name in names]
        try:
            ids = await self._append(keys=[self.stream, registry, *counted], args=[cap, len(names), *names, *values])
        except ResponseError as exc:
            if str(exc).startswith("FULL "):
                raise QueueFull(self.stream, int(str(exc).split()[1]), cap, len(entries)) from None
            raise
        return [_text(i) for i in ids]

    async def _read(self, consumer: str, start: str, count: int, block_ms: int | None) -> list[Entry]:
        answer: Any = await self.client.xreadgroup(self.group, consumer, {self.stream: start}, count=count,
                                                   block=block_ms)  # fmt: skip
        rows: list[Entry] = []
        for _, entries in answer or []:
            rows += [(_text(entry_id), fields or {}) for entry_id, fields in entries or []]
        return rows

    async def read_new(self, consumer: str, count: int, block_ms: int | None = None) -> list[Entry]:
        """Up to `count` entries never delivered to any consumer of the group, now `consumer`'s pending ones
        (waiting up to `block_ms` for one when none is there). The group is created again if it went missing."""
        try:
            return await self._read(consumer, ">", count, block_ms)
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            await self.ensure_group()  # the stream was deleted (dropped): it starts again
            return []

    async def read_pending(self, consumer: str, count: int, after: str = "0") -> tuple[list[Entry], list[str]]:
        """`consumer`'s own pending entries after id `after`, oldest first, at most `count`: (entries with their
        fields, ids of entries deleted meanwhile). Reading them again marks them recently delivered (they are not
        idle: no other consumer claims them while this one works on them)."""
        try:
            rows = await self._read(consumer, after, count, None)
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            await self.ensure_group()
            return [], []
        return [(i, f) for i, f in rows if f], [i for i, f in rows if not f]

    async def claim(
        self, consumer: str, min_idle_ms: int, count: int, cursor: str = "0-0"
    ) -> tuple[str, list[Entry], list[str]]:
        """XAUTOCLAIM: entries pending for another consumer (or this one) for `min_idle_ms` or more become
        `consumer`'s, from `cursor` on, at most `count`: (the cursor to go on from, "0-0" at the end; the claimed
        entries; ids of pending entries deleted meanwhile, which Redis drops from the pending list itself)."""
        try:
            answer = await self.client.xautoclaim(self.stream, self.group, consumer, min_idle_ms, cursor, count=count)
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            await self.ensure_group()
            return "0-0", [], []
        entries = [(_text(i), f) for i, f in answer[1] or [] if f]
        gone = [_text(i) for i in (answer[2] if len(answer) > 2 else [])]
        return _text(answer[0]), entries, gone

    async def claim_all(self, consumer: str, min_idle_ms: int, chunk: int = 1_000) -> int:
        """Every entry pending for `min_idle_ms` or more becomes `consumer`'s (chunk by chunk); how many."""
        cursor, claimed = "0-0", 0
        while True:
            cursor, entries, _ = await self.claim(consumer, min_idle_ms, chunk, cursor)
            claimed += len(entries)
            if cursor == "0-0":
                return claimed

    async def ack(self, ids: Sequence[str]) -> int:
        """The sink has these entries: acknowledged and deleted, in one transaction; how many were deleted."""
        if not ids:
            return 0
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, *ids)
            pipe.xdel(self.stream, *ids)
            answers = await pipe.execute()
        return int(answers[1])

    async def stats(self) -> QueueStats:
        """The stream's length, the group's pending count and consumers, and the oldest entry's age by Redis's
        own clock (TIME), read in one round trip."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xlen(self.stream)
            pipe.xrange(self.stream, count=1)
            pipe.time()
            pipe.xinfo_groups(self.stream)
            try:
                length, first, now, groups = await pipe.execute()
            except ResponseError:  # no stream yet (XINFO on a missing key): nothing is queued
                return QueueStats(0, 0, None, 0)
        group = next((g for g in groups if _text(g.get("name", g.get(b"name", ""))) == self.group), None)
        pending = int(group.get("pending", 0)) if group else 0
        consumers = int(group.get("consumers", 0)) if group else 0
        oldest = None
        if first:
            now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
            oldest = max(0.0, (now_ms - entry_millis(_text(first[0][0]))) / 1000)
        return QueueStats(int(length), pending, oldest, consumers)

    async def forget_consumers(self, idle_ms: int) -> int:
        """Consumers with nothing pending and idle for `idle_ms` or more are removed from the group (each process
        drains under its own name, so names of stopped processes would pile up); how many went."""
        try:
            consumers = await self.client.xinfo_consumers(self.stream, self.group)
        except ResponseError:
            return 0
        gone = 0
        for consumer in consumers:
            if int(consumer.get("pending", 1)) == 0 and int(consumer.get("idle", 0)) >= idle_ms:
                await self.client.xgroup_delconsumer(self.stream, self.group, _text(consumer["name"]))
                gone += 1
        return gone
