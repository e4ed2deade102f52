"""The forwarding outbox in Redis (`state = redis://…`): what outbox.SqliteOutbox is, for a fleet sharing one Redis.

Keys, under a prefix (default `edgeproxy:forward`):
- `{prefix}:queue`: a stream of queued writes (fields `i` the encoded item, `u` the user it is ordered by, `o` a
  merge's source user), read through the consumer group `edgeproxy-forward`;
- `{prefix}:dead`: a stream of dead letters (`i`, `u`, `o`, `r` the reason, `t` when it failed);
- `{prefix}:lease`: the sending lease, the holder's name with a PX expiry;
- `{prefix}:refused`: how many writes were refused because the outbox was full.

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
from redis.exceptions import RedisError, ResponseError

from edgeproxy.forward.items import ForwardItem, encode_item
from edgeproxy.forward.outbox import Backlog, DeadLetter, Entry, _entry
from edgeproxy.store.base import StoreError

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
    """XRANGE's or XREADGROUP's entries as (id, fields); a deleted pending entry's fields are {}."""
    return [(entry_id, fields or {}) for entry_id, fields in raw or []]


def _is_nogroup(exc: RedisError) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


class RedisOutbox:
    def __init__(self, url: str, prefix: str = "edgeproxy:forward") -> None:
        self.url = url
        self.prefix = prefix
        self.queue = f"{prefix}:queue"
        self.dead = f"{prefix}:dead"
        self.lease = f"{prefix}:lease"
        self.refused = f"{prefix}:refused"
        self._client: redis.Redis | None = None
        self._claimed = ""  # the owner whose takeover claim finished in this process ("" when none)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise StoreError("forwarding outbox is closed")
        return self._client

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
        with self._errors("open the queue"):
            await self._create_group()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _create_group(self) -> None:
        try:
            await self.client.xgroup_create(self.queue, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def append(self, items: Sequence[ForwardItem]) -> None:
        if not items:
            return
        with self._errors("queue writes"):
            async with self.client.pipeline(transaction=True) as pipe:
                for item in items:
                    pipe.xadd(self.queue, {"i": encode_item(item), "u": item.orders_by, "o": item.other_uid})
                await pipe.execute()

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
                await self._claim(owner)
                self._claimed = owner
        return True

    async def _claim(self, owner: str) -> None:
        cursor: bytes | str = "0-0"
        while True:
            try:
                answer = await self.client.xautoclaim(self.queue, GROUP, owner, 0, cursor, count=_CHUNK)
            except ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                await self._create_group()  # the queue was dropped: nothing was pending
                return
            cursor = answer[0]
            if _text(cursor) == "0-0":
                return

    async def release(self, owner: str) -> None:
        with self._errors("release the sending lease"):
            await self.client.eval(_RELEASE, 1, self.lease, owner)
        if self._claimed == owner:
            self._claimed = ""

    async def _read(self, owner: str, start: str, count: int) -> list[tuple[bytes, Fields]]:
        answer: Any = await self.client.xreadgroup(GROUP, owner, {self.queue: start}, count=count)
        rows: list[tuple[bytes, Fields]] = []
        for _, entries in answer or []:
            rows += _rows(entries)
        return rows

    async def window(self, owner: str, limit: int) -> list[Entry]:
        """`owner`'s pending entries first (delivered before, not acknowledged: older than any new one), then
        new ones, `limit` in all, in stream order. A pending entry deleted meanwhile (XDEL, by `delete_user`)
        comes back without fields: it is acknowledged and left out, and the pending list is read on past it."""
        if limit <= 0:
            return []
        entries: list[Entry] = []
        gone: list[bytes] = []
        with self._errors("read the queue"):
            try:
                start = "0"
                while len(entries) < limit:  # the pending entries, oldest first
                    wanted = limit - len(entries)
                    rows = await self._read(owner, start, wanted)
                    for entry_id, fields in rows:
                        if fields:
                            entries.append(_entry(_text(entry_id), fields.get(b"i", b"")))
                        else:
                            gone.append(entry_id)
                    if len(rows) < wanted:
                        break
                    start = _text(rows[-1][0])
                if len(entries) < limit:  # then entries never delivered
                    rows = await self._read(owner, ">", limit - len(entries))
                    entries += [_entry(_text(entry_id), fields.get(b"i", b"")) for entry_id, fields in rows]
                if gone:
                    await self.client.xack(self.queue, GROUP, *gone)
            except ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                await self._create_group()  # the queue was deleted (dropped): it starts again empty
                return []
        return entries

    async def ack(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._errors("remove sent writes from the queue"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xack(self.queue, GROUP, *ids)
                pipe.xdel(self.queue, *ids)
                await pipe.execute()

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
