"""The event transport of a fleet on Redis state: the per-project Redis streams, drained into the event store.

With `state = redis://…` events are appended to `edgeproxy:{project}:events` (store/redis_store.py). With
`events = postgresql://…` as well, every `edgeproxy serve` process (each worker too) runs an `EventTransport` with a
sink, which drains those streams into PostgreSQL through the consumer group `edgeproxy-events` (the queue mechanics
are store/redis_queue.py's, shared with the forwarding outbox):

1. a batch (up to DRAIN_BATCH entries) of one stream: this process's own entries left pending by a failed insert
   first (read again: entries a user deletion removed meanwhile drop out), then entries another process read and
   left idle for CLAIM_IDLE seconds (it died: XAUTOCLAIM), then entries never delivered;
2. inserted into the sink with `{project}:{stream entry id}` as the event id (idempotent: an entry inserted twice,
   by a process that died before its ack and by the one that claimed it, is stored once);
3. acknowledged and deleted from the stream once the insert committed, so the stream length is the backlog.

The sink away (PostgreSQL stopped): the insert is retried with backoff (jittered, at most RETRY_CAP seconds), the
streams keep buffering up to `events_buffer_max` (appends past it are refused, never silently dropped), readiness is
not affected, and the backlog drains when the sink is back. A clean stop finishes the batch in flight. Entries in a
stream before any drain ran (events stored in Redis by an older setup) are drained too: the group starts at the
stream's first entry.

Without a sink (`events` unset) the streams are the event store itself: an `EventTransport` only watches their size
so `/status` can say that events accumulate in Redis's memory, and which setting changes that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from edgeproxy.store.base import EventRecord, StoreError
from edgeproxy.store.redis_queue import Entry, QueueStats, RedisQueue
from edgeproxy.store.redis_store import DRAIN_GROUP, EVENT_STREAMS, RedisStore, event_from_fields, stream_project

log = logging.getLogger("edgeproxy.events")

DRAIN_BATCH = 1_000  # entries per insert
CLAIM_IDLE = 5.0  # seconds an entry stays pending, unacknowledged and untouched, before another process claims it
CLAIM_EVERY = 1.0  # seconds between looks for such entries, per stream
IDLE_WAIT_MS = 500  # a drain with nothing to do waits this long for a new entry (blocking read)
RETRY_BASE, RETRY_CAP = 0.25, 2.0  # seconds: the sink's retries back off from BASE to CAP (below CLAIM_IDLE)
STATS_EVERY = 2.0  # seconds between reads of the streams' size, for status and metrics
STREAMS_EVERY = 5.0  # seconds between reads of the set of streams (a new project's stream is found that soon)
BEHIND_AFTER = 30.0  # seconds: an oldest undrained event older than this means the drain is behind
FORGET_CONSUMERS_AFTER = 600.0  # seconds: a consumer name idle this long, with nothing pending, leaves the group
STOP_GRACE = 10.0  # seconds a clean stop waits for the batch in flight
UNBOUNDED_NOTE = (
    "events accumulate in Redis's memory (70-100 bytes each) with no bound: the stream is the event store. "
    "Set `events` = postgresql://... (see the README, Events at fleet scale) to move them to PostgreSQL"
)


class EventSink(Protocol):
    """Where drained events are stored durably (store/postgres_events.py's PostgresEventStore)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def insert_events(self, rows: Sequence[tuple[str, EventRecord]]) -> int:
        """Store (event id, event) pairs, committed on return, a known id ignored; how many were new. StoreError
        when the sink is unreachable."""
        ...

    async def user_events(self, user_uid: str) -> list[EventRecord]: ...

    async def delete_user_events(self, user_uid: str) -> int: ...

    async def purge_events(self, older_than: float) -> int: ...


def consumer_name() -> str:
    """This process's name in the consumer group: host, pid and a random part (a restarted pid differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def event_id(project_uid: str, entry_id: str) -> str:
    """An event's id in the sink: its stream entry id is unique within its project's stream."""
    return f"{project_uid}:{entry_id}"


@dataclass(slots=True)
class DrainCounts:
    """What this process's drain did since it started."""

    drained: int = 0  # entries inserted into the sink (new there) and removed from the stream
    repeated: int = 0  # entries the sink had already (inserted by a process that died before its ack)
    unreadable: int = 0  # entries that are not events this build wrote: removed, not stored
    claimed: int = 0  # entries taken over from another process that left them pending
    batches: int = 0
    failures: int = 0  # inserts (or stream reads) that failed and were retried


@dataclass(frozen=True, slots=True)
class Backlog:
    """The event streams' size, summed over projects, as last read."""

    length: int = 0
    pending: int = 0
    oldest_age: float | None = None
    longest: int = 0  # the longest single stream: each stream has its own cap
    streams: int = 0
    consumers: int = 0


def _backoff(failures: int, jitter: Callable[[], float]) -> float:
    ceiling = min(RETRY_CAP, RETRY_BASE * 2.0 ** min(failures - 1, 30))
    return ceiling / 2 + jitter() * ceiling / 2


class EventTransport:
    """The event streams of one Redis state store: drained into `sink`, or (no sink) only watched."""

    def __init__(
        self,
        store: RedisStore,
        sink: EventSink | None,
        sink_url: str = "",
        *,
        consumer: str | None = None,
        jitter: Callable[[], float] = random.random,
        claim_idle: float = CLAIM_IDLE,
    ) -> None:
        """`sink_url`: the sink's URL as status shows it (without a password). `claim_idle`: seconds another
        process's pending entry waits untouched before this one takes it over."""
        self.store = store
        self.sink = sink
        self.sink_url = sink_url
        self.consumer = consumer or consumer_name()
        self.jitter = jitter
        self.claim_idle = claim_idle
        self.counts = DrainCounts()
        self.backlog = Backlog()
        self.sink_ok: bool | None = None  # None until the first insert (or start) says
        self.last_error = ""
        self._sink_started = False
        self._sink_lock = asyncio.Lock()
        self._queues: dict[str, RedisQueue] = {}
        self._holding: set[str] = set()  # streams with entries pending for this consumer (a failed insert)
        self._claimed_at: dict[str, float] = {}  # stream -> loop time of the last look for idle entries
        self._streams_read_at = float("-inf")
        self._scanned = False
        self._next_stream = 0
        self._failures = 0
        self._halt = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def cap(self) -> int:
        return self.store.events_buffer_max

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """The watcher, and with a sink the drain: background tasks (the sink is opened by the drain, retried
        while it is away, so a PostgreSQL outage at start-up does not stop the proxy from serving)."""
        self._tasks.append(asyncio.ensure_future(self._watch()))
        if self.sink is not None:
            self._tasks.append(asyncio.ensure_future(self._run()))

    async def stop(self) -> None:
        """The batch in flight is finished (inserted and acknowledged) within STOP_GRACE; what is left in the
        streams stays for the other processes (or the next start)."""
        self._halt.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks.clear()
        if self.sink is not None:  # also a sink used without `start` (it connects on first use)
            await self.sink.close()
            self._sink_started = False

    async def _ready_sink(self) -> EventSink:
        """The sink, opened on first use (once, whoever asks first); StoreError while it cannot be."""
        if self.sink is None:
            raise StoreError("no event store is configured (setting `events`)")
        async with self._sink_lock:
            if not self._sink_started:
                await self.sink.start()
                self._sink_started = True
        return self.sink

    # -- what reads events besides the report: user export/delete and retention (runtime/users.py) -------------

    async def user_events(self, user_uid: str) -> list[EventRecord]:
        return await (await self._ready_sink()).user_events(user_uid)

    async def delete_user_events(self, user_uid: str) -> int:
        return await (await self._ready_sink()).delete_user_events(user_uid)

    async def purge_events(self, older_than: float) -> int:
        return await (await self._ready_sink()).purge_events(older_than)

    # -- the drain ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._halt.is_set():
            try:
                await self._ready_sink()
                moved = await self.drain_once(block_ms=IDLE_WAIT_MS)
            except (StoreError, RedisError) as exc:
                self._failed(exc)
                await self._pause(_backoff(self._failures, self.jitter))
                continue
            if moved:
                self._failures = 0

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self.counts.failures += 1
        text = f"{type(exc).__name__}: {exc}"[:500]
        if isinstance(exc, StoreError):
            self.sink_ok = False
        if text != self.last_error or self._failures in (1, 10) or self._failures % 100 == 0:
            log.warning(
                "events not moved to the event store %s yet (attempt %d; retrying, the Redis stream keeps "
                "buffering up to events_buffer_max %d): %s", self.sink_url, self._failures, self.cap, text,
            )  # fmt: skip
        self.last_error = text

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._halt.wait(), seconds)

    async def drain_once(self, block_ms: int | None = None) -> int:
        """One batch of one stream (streams in turn) inserted and removed; how many entries it held (0: nothing
        to do, after waiting up to `block_ms`, for a new entry when there is a single stream). StoreError (the
        sink) or RedisError when it could not be done: the batch stays pending here and is read again next time."""
        streams = await self._streams()
        for offset in range(len(streams)):
            stream = streams[(self._next_stream + offset) % len(streams)]
            queue = self._queue(stream)
            batch = await self._batch(queue, block_ms if len(streams) == 1 else None)
            if batch:
                self._next_stream = (self._next_stream + offset + 1) % len(streams)
                await self._deliver(queue, batch)
                return len(batch)
        if len(streams) != 1 and block_ms:
            await self._pause(block_ms / 1000)
        return 0

    def _queue(self, stream: str) -> RedisQueue:
        queue = self._queues.get(stream)
        if queue is None:
            queue = self._queues[stream] = RedisQueue(self.store.client, stream, DRAIN_GROUP)
        return queue

    async def _streams(self) -> list[str]:
        """Every project's event stream, each with the drain's group: the set append_events keeps, read every
        STREAMS_EVERY seconds, and once a SCAN (streams written before that set existed)."""
        now = asyncio.get_running_loop().time()
        if now - self._streams_read_at < STREAMS_EVERY and self._queues:
            return sorted(self._queues)
        client = self.store.client
        if not self._scanned:
            found = [str(k) async for k in client.scan_iter(match="edgeproxy:*:events", count=1000, _type="stream")]
            if found:
                await client.sadd(EVENT_STREAMS, *found)
            self._scanned = True
        members = sorted(str(m) for m in await client.smembers(EVENT_STREAMS))
        for stream in members:
            if stream not in self._queues:
                await self._queue(stream).ensure_group()
        self._streams_read_at = now
        return members

    async def _batch(self, queue: RedisQueue, block_ms: int | None) -> list[Entry]:
        stream = queue.stream
        if stream in self._holding:  # a failed insert's entries, read again: deleted ones drop out
            entries, gone = await queue.read_pending(self.consumer, DRAIN_BATCH)
            await queue.ack(gone)
            if entries:
                return entries
            self._holding.discard(stream)
        now = asyncio.get_running_loop().time()
        if now - self._claimed_at.get(stream, float("-inf")) >= CLAIM_EVERY:
            self._claimed_at[stream] = now
            _, entries, _ = await queue.claim(self.consumer, int(self.claim_idle * 1000), DRAIN_BATCH)
            if entries:
                self.counts.claimed += len(entries)
                log.info("events: %d entries of %s left pending by a stopped process taken over", len(entries), stream)
                return entries
        return await queue.read_new(self.consumer, DRAIN_BATCH, block_ms)

    async def _deliver(self, queue: RedisQueue, batch: list[Entry]) -> None:
        project = stream_project(queue.stream)
        rows: list[tuple[str, EventRecord]] = []
        unreadable = 0
        for entry_id, fields in batch:
            event = event_from_fields(project, {str(k): str(v) for k, v in fields.items()})
            if event is None:
                unreadable += 1
            else:
                rows.append((event_id(project, entry_id), event))
        self._holding.add(queue.stream)  # until acknowledged: a failure below leaves them pending for this process
        assert self.sink is not None
        inserted = await self.sink.insert_events(rows) if rows else 0
        self.sink_ok = True
        await queue.ack([entry_id for entry_id, _ in batch])
        self._holding.discard(queue.stream)
        self.counts.batches += 1
        self.counts.drained += inserted
        self.counts.repeated += len(rows) - inserted
        self.counts.unreadable += unreadable
        if unreadable:
            log.warning("events: %d entries of %s are not events this version wrote; removed, not stored",
                        unreadable, queue.stream)  # fmt: skip
        if self._failures:
            log.info("events: the event store %s accepts events again", self.sink_url)
            self._failures = 0
            self.last_error = ""

    # -- status ---------------------------------------------------------------------------------------------

    async def refresh(self) -> Backlog:
        """Read every stream's size now (status and metrics show the last read)."""
        stats: list[QueueStats] = []
        streams = await self._streams() if self.sink is not None else await self._watched_streams()
        for stream in streams:
            stats.append(await self._queue(stream).stats())
        ages = [s.oldest_age for s in stats if s.oldest_age is not None]
        self.backlog = Backlog(
            length=sum(s.length for s in stats), pending=sum(s.pending for s in stats),
            oldest_age=max(ages) if ages else None, longest=max((s.length for s in stats), default=0),
            streams=len(stats), consumers=max((s.consumers for s in stats), default=0),
        )  # fmt: skip
        return self.backlog

    async def _watched_streams(self) -> list[str]:
        """Without a drain: the streams, by the set append_events keeps (no group is created: nothing drains)."""
        return sorted(str(m) for m in await self.store.client.smembers(EVENT_STREAMS))

    async def _watch(self) -> None:
        forgotten_at = asyncio.get_running_loop().time()
        while not self._halt.is_set():
            try:
                await self.refresh()
                now = asyncio.get_running_loop().time()
                if self.sink is not None and now - forgotten_at >= FORGET_CONSUMERS_AFTER:
                    forgotten_at = now
                    for queue in list(self._queues.values()):
                        await queue.forget_consumers(int(FORGET_CONSUMERS_AFTER * 1000))
            except RedisError as exc:
                log.debug("event streams not read for status: %s", exc)
            await self._pause(STATS_EVERY)

    def condition(self) -> str:
        """ok; behind (the sink fails, or the oldest event waits more than BEHIND_AFTER); full (a stream at its
        cap: new events are refused); unbounded (no sink: the stream is the store)."""
        if self.sink is None:
            return "unbounded"
        backlog = self.backlog
        if self.cap and backlog.longest >= self.cap:
            return "full"
        if self.sink_ok is False or (backlog.oldest_age is not None and backlog.oldest_age > BEHIND_AFTER):
            return "behind"
        return "ok"

    def status(self) -> dict[str, Any]:
        backlog = self.backlog
        condition = self.condition()
        messages = {
            "unbounded": UNBOUNDED_NOTE,
            "full": f"the event store is not draining the Redis stream and it is at its cap (events_buffer_max "
            f"{self.cap}): new events are REFUSED (the SDK gets 503). {self.last_error}".strip(),
            "behind": "the event store is behind: events wait in the Redis stream (bounded by events_buffer_max "
            f"{self.cap}; refused past it). {self.last_error}".strip(),
        }
        return {
            "transport": "redis-stream",
            "store": self.sink_url if self.sink is not None else "redis (the state store's streams)",
            "state": condition,
            "behind": condition in ("behind", "full"),  # the event store is not keeping up (full: refusing)
            "message": messages.get(condition, ""),
            "backlog": backlog.length,
            "pending": backlog.pending,
            "oldestSeconds": None if backlog.oldest_age is None else round(backlog.oldest_age, 3),
            "max": self.cap if self.sink is not None else None,
            "streams": backlog.streams,
            "consumers": backlog.consumers,
            "sinkOk": self.sink_ok,
            "lastError": self.last_error,
            "consumer": self.consumer if self.sink is not None else "",
            "thisProcess": {
                "drained": self.counts.drained,
                "repeated": self.counts.repeated,
                "claimed": self.counts.claimed,
                "unreadable": self.counts.unreadable,
                "batches": self.counts.batches,
                "failures": self.counts.failures,
                "refused": dict(self.store.events_refused),
            },
        }
