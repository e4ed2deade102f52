"""The forwarding outbox in Redis (`state = redis://…`): what outbox.SqliteOutbox is, for a fleet sharing one Redis.

Keys, under a prefix (default `edgeproxy:forward`):
- `{prefix}:queue`: a stream of queued writes (fields `i` the encoded item, `u` the user it is ordered by, `o` a
  merge's source user), read through the consumer group `edgeproxy-forward`;
- `{prefix}:dead`: a stream of dead letters (`i`, `u`, `o`, `r` the reason, `t` when it failed);
- `{prefix}:lease`: the sending lease, the holder's name with a PX expiry;
- `{prefix}:refused`: how many writes were refused because the outbox was full.

The stream, its consumer group, the claim and the ack-then-delete are store/redis_queue.py's, shared with the
event transport; what is the outbox's own is the lease, the dead letters and the per-user walks.

Why a consumer group with a single consumer at a time: the lease lets one process send, so each user's writes go
out in the order they were accepted. The group remembers what was delivered and not yet acknowledged (its pending
entries list), so what a holder read but did not get a 2xx for is not lost when it dies: the next process to take
the lease claims every pending entry (XAUTOCLAIM), reads those first (they are older than anything not yet
delivered), then new entries. At-least-once, as with SQLite: an entry leaves the stream only on `ack` or `bury`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
from redis.exceptions import RedisError

from edgeproxy.forward.items import ForwardItem, encode_item
from edgeproxy.forward.outbox import Backlog, DeadLetter, Entry, OutboxFull, _entry
from edgeproxy.store.base import StoreError
from edgeproxy.store.redis_queue import QueueFull, RedisQueue, entry_order

GROUP = "edgeproxy-forward"
_CHUNK = 1_000  # stream entries read (and moved or deleted) per round trip: Redis serves other clients in between

# KEYS[1] lease; ARGV: owner, milliseconds. 1: extended (owner held it), 2: newly taken, 0: another holds it.
_HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return 0
"""
# KEYS[1] lease; ARGV[1] owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] queue, KEYS[2] dead letters; ARGV: group, now, then (entry id, reason) pairs.
_BURY = """
for n = 3, #ARGV, 2 do
  local found = redis.call('XRANGE', KEYS[1], ARGV[n], ARGV[n])
  if #found > 0 then
    local stored, fields = found[1][2], {}
    for k = 1, #stored, 2 do fields[stored[k]] = stored[k + 1] end
    redis.call('XADD', KEYS[2], '*', 'i', fields['i'] or '', 'r', ARGV[n + 1], 't', ARGV[2],
               'u', fields['u'] or '', 'o', fields['o'] or '')
  end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[n])
  redis.call('XDEL', KEYS[1], ARGV[n])
end
return 0
"""

Fields = dict[bytes, bytes]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _shown(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"))


def _rows(raw: Any) -> list[tuple[bytes, Fields]]:
    """XRANGE's entries as (id, fields)."""
    return [(entry_id, fields or {}) for entry_id, fields in raw or []]


class RedisOutbox:
    def __init__(self, url: str, prefix: str = "edgeproxy:forward", max_items: int = 0) -> None:
        """`max_items` > 0: the bound (queued plus dead letters) checked with each append (OutboxFull)."""
        self.url = url
        self.prefix = prefix
        self.max_items = max_items
        self.queue = f"{prefix}:queue"
        self.dead = f"{prefix}:dead"
        self.lease = f"{prefix}:lease"
        self.refused = f"{prefix}:refused"
        self._client: redis.Redis | None = None
        self._queue: RedisQueue | None = None
        self._claimed = ""  # the owner whose takeover claim finished in this process ("" when none)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise StoreError("forwarding outbox is closed")
        return self._client

    @property
    def stream(self) -> RedisQueue:
        if self._queue is None:
            raise StoreError("forwarding outbox is closed")
        return self._queue

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except RedisError as exc:
            raise StoreError(
                f"forwarding outbox in Redis at {_shown(self.url)}: cannot {doing}: {exc} "
                "(check that Redis is running and reachable at the `state` URL)"
            ) from exc

    async def start(self) -> None:
        self._client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        self._queue = RedisQueue(self._client, self.queue, GROUP)
        with self._errors("open the queue"):
            await self._queue.ensure_group()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._queue = None

    async def append(self, items: Sequence[ForwardItem]) -> None:
        """One script checks the bound (queue and dead letters together, every instance's appends included) and
        appends them all."""
        if not items:
            return
        rows: list[dict[str, str | bytes]] = [{"i": encode_item(i), "u": i.orders_by, "o": i.other_uid} for i in items]
        with self._errors("queue writes"):
            try:
                await self.stream.append(rows, cap=self.max_items, counted=[self.dead])
            except QueueFull as full:
                raise OutboxFull(full.length, full.cap, full.count) from None

    async def hold(self, owner: str, seconds: float, now: float) -> bool:
        """The lease's expiry is Redis's (PX), so `now` is not needed. When `owner` takes the lease over (it was
        not theirs), every pending entry of the group, delivered to a previous holder and not acknowledged, is
        claimed for `owner`: its next `window` starts with them."""
        milliseconds = max(1, round(seconds * 1000))
        with self._errors("take the sending lease"):
            got = int(await self.client.eval(_HOLD, 1, self.lease, owner, milliseconds))
            if got == 0:
                if self._claimed == owner:
                    self._claimed = ""
                return False
            if got == 2 or self._claimed != owner:  # also: a claim that failed half-way is done again
                self._claimed = ""
                await self.stream.claim_all(owner, 0, _CHUNK)  # the queue dropped meanwhile: nothing was pending
                self._claimed = owner
        return True

    async def release(self, owner: str) -> None:
        with self._errors("release the sending lease"):
            await self.client.eval(_RELEASE, 1, self.lease, owner)
        if self._claimed == owner:
            self._claimed = ""

    async def window(self, owner: str, limit: int) -> list[Entry]:
        """`owner`'s pending entries first (delivered before, not acknowledged: older than any new one), then
        new ones, `limit` in all, in stream order. A pending entry deleted meanwhile (XDEL, by `delete_user`)
        comes back without fields: it is acknowledged and left out, and the pending list is read on past it."""
        if limit <= 0:
            return []
        entries: list[Entry] = []
        gone: list[str] = []
        with self._errors("read the queue"):
            start = "0"
            while len(entries) < limit:  # the pending entries, oldest first
                wanted = limit - len(entries)
                pending, deleted = await self.stream.read_pending(owner, wanted, after=start)
                entries += [_entry(entry_id, fields.get(b"i", b"")) for entry_id, fields in pending]
                gone += deleted
                if len(pending) + len(deleted) < wanted:
                    break
                start = max([entry_id for entry_id, _ in pending] + deleted, key=entry_order)
            if len(entries) < limit:  # then entries never delivered (a dropped queue starts again empty)
                rows = await self.stream.read_new(owner, limit - len(entries))
                entries += [_entry(entry_id, fields.get(b"i", b"")) for entry_id, fields in rows]
            if gone:
                await self.client.xack(self.queue, GROUP, *gone)
        return entries

    async def ack(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._errors("remove sent writes from the queue"):
            await self.stream.ack(ids)

    async def bury(self, dead: Sequence[tuple[Entry, str]], now: float) -> None:
        """Each entry's stored fields copied to the dead letters with its reason (an entry gone already, deleted
        with its user or dropped, is not) and removed from the queue, in one script: a deletion of the user cannot
        fall between the copy and the removal and leave their write in the dead letters."""
        if not dead:
            return
        pairs = [part for entry, reason in dead for part in (entry.id, reason)]
        with self._errors("move refused writes to the dead letters"):
            await self.client.eval(_BURY, 2, self.queue, self.dead, GROUP, str(now), *pairs)

    async def backlog(self, now: float) -> Backlog:  # the lease expires in Redis (PX): `now` is not needed
        with self._errors("read the queue's state"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xlen(self.queue)
                pipe.xlen(self.dead)
                pipe.xrange(self.queue, count=1)
                pipe.get(self.refused)
                pipe.get(self.lease)
                queued, dead_count, first, refused, holder = await pipe.execute()
        oldest = _entry("", first[0][1].get(b"i", b"")).item if first else None
        return Backlog(int(queued), int(dead_count), oldest.queued_at if oldest else None, int(refused or 0),
                       _text(holder) if holder is not None else "")  # fmt: skip

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._errors("read the dead letters"):
            rows = _rows(await self.client.xrange(self.dead, count=limit))
        letters = []
        for entry_id, fields in rows:
            try:
                failed_at = float(fields.get(b"t", b"0"))
            except ValueError:
                failed_at = 0.0
            item = _entry("", fields.get(b"i", b"")).item
            letters.append(DeadLetter(_text(entry_id), item, _text(fields.get(b"r", b"")), failed_at))
        return letters

    async def revive(self) -> int:
        """The dead letters, oldest first, appended to the queue in chunks (one transaction each)."""
        moved = 0
        with self._errors("move the dead letters back to the queue"):
            while rows := _rows(await self.client.xrange(self.dead, count=_CHUNK)):
                async with self.client.pipeline(transaction=True) as pipe:
                    for _, fields in rows:
                        pipe.xadd(self.queue, {k: fields.get(k, b"") for k in (b"i", b"u", b"o")})
                    pipe.xdel(self.dead, *(entry_id for entry_id, _ in rows))
                    await pipe.execute()
                moved += len(rows)
        return moved

    async def drop(self, queued: bool) -> int:
        with self._errors("delete the dead letters" + (" and the queue" if queued else "")):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xlen(self.dead)
                pipe.delete(self.dead)
                if queued:
                    pipe.xlen(self.queue)
                    pipe.delete(self.queue)  # and its consumer group, pending entries and all
                    pipe.xgroup_create(self.queue, GROUP, id="0", mkstream=True)
                answers = await pipe.execute()
        return int(answers[0]) + (int(answers[2]) if queued else 0)

    async def _user_chunks(self, stream: str, user_uid: str) -> AsyncIterator[list[tuple[bytes, Fields]]]:
        """The entries of `stream` whose `u` or `o` is `user_uid`, oldest first, one list per XRANGE chunk of
        the whole stream (there is no per-user index: one would cost every append a write)."""
        uid = user_uid.encode("utf-8")
        start = "-"
        while rows := _rows(await self.client.xrange(stream, min=start, max="+", count=_CHUNK)):
            yield [(i, fields) for i, fields in rows if uid in (fields.get(b"u"), fields.get(b"o"))]
            start = f"({_text(rows[-1][0])}"

    async def delete_user(self, user_uid: str) -> int:
        """Both streams walked in XRANGE chunks, the user's entries deleted in each (and, in the queue,
        acknowledged, so no consumer's pending list keeps them): no command holds Redis for long, and entries
        appended during the walk are reached. Not atomic across chunks."""
        gone = 0
        with self._errors("delete a user's queued writes"):
            for stream in (self.queue, self.dead):
                async for chunk in self._user_chunks(stream, user_uid):
                    if chunk:
                        ids = [i for i, _ in chunk]
                        async with self.client.pipeline(transaction=True) as pipe:
                            if stream == self.queue:
                                pipe.xack(stream, GROUP, *ids)
                            pipe.xdel(stream, *ids)
                            gone += int((await pipe.execute())[-1])
        return gone

    async def user_writes(self, user_uid: str) -> list[tuple[str, ForwardItem]]:
        """The user's queued writes, then dead letters, each oldest first (undecodable ones left out); read in
        XRANGE chunks, not a snapshot."""
        found: list[tuple[str, ForwardItem]] = []
        with self._errors("read a user's queued writes"):
            for kind, stream in (("queued", self.queue), ("dead", self.dead)):
                async for chunk in self._user_chunks(stream, user_uid):
                    for _, fields in chunk:
                        item = _entry("", fields.get(b"i", b"")).item
                        if item is not None:
                            found.append((kind, item))
        return found

    async def count_refused(self, n: int) -> None:
        with self._errors("count refused writes"):
            await self.client.incrby(self.refused, n)
