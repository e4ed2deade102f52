"""Data subject requests and retention (SPEC §11): everything stored for one user, exported as one JSON document or
deleted, from `edgeproxy user export|delete UID` and `GET`/`DELETE {ops_prefix}users/{uid}`; and events older than
`retention_days` deleted in the background, a bounded batch at a time.

What is stored per user: custom attributes (per project, expiring `attribute_ttl_days` after the last write) and
events (impressions the proxy or the SDK recorded, conversions). Both live in the state store (SQLite file or Redis),
so in a fleet sharing Redis one request reaches every instance's data; with an event store (`events`, PostgreSQL)
events are there too, plus those still on their way in the Redis stream, and both are exported, deleted and
purged. Deletion is logged with counts and a short digest of the uid, never the uid or the data.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from edgeproxy.clock import Clock
from edgeproxy.runtime.periodic import Periodic
from edgeproxy.store.base import TOMBSTONE_BATCH, EventRecord, StateStore, event_document, tombstone_of, uid_digest
from edgeproxy.visitor.identity import Tombstones

if TYPE_CHECKING:
    from edgeproxy.forward.outbox import Outbox
    from edgeproxy.runtime.behaviour import BehaviourTracker

log = logging.getLogger("edgeproxy.users")

RETENTION_BATCH = 5_000  # events deleted per store call
RETENTION_BATCHES_PER_RUN = 20  # at most this many calls per run: bounded work, the rest waits for the next run
RETENTION_INTERVAL = 3_600.0  # seconds between runs
TOMBSTONE_POLL_SECONDS = 2.0  # how soon another instance learns of a deletion


class EventArchive(Protocol):
    """The event store of a fleet (`events`: store/postgres_events.py, reached through store/event_drain.py)."""

    async def user_events(self, user_uid: str) -> list[EventRecord]: ...

    async def delete_user_events(self, user_uid: str) -> int: ...

    async def purge_events(self, older_than: float) -> int: ...


async def export_user(
    store: StateStore, user_uid: str, outbox: Outbox | None = None, events: EventArchive | None = None
) -> dict[str, Any]:
    """The store's document (StateStore.user_data); with the forwarding outbox, also `"forwarding"`: the user's
    writes waiting to be sent to Contentstack ("queued") or refused by it ("dead"). With the event store `events`,
    its events of the user join those still in the Redis stream (read first: an event the drain moves between the
    two reads may then appear twice, never not at all), oldest first."""
    document = await store.user_data(user_uid)
    if events is not None:
        stored = [event_document(e) for e in await events.user_events(user_uid)]
        document["events"] = sorted(document["events"] + stored, key=lambda e: e["ts"])
    if outbox is not None:
        from edgeproxy.forward.items import item_document

        document["forwarding"] = [{"state": kind, **item_document(item)}
                                  for kind, item in await outbox.user_writes(user_uid)]  # fmt: skip
    return document


async def delete_user(
    store: StateStore,
    user_uid: str,
    where: str,
    tombstones: Tombstones | None = None,
    outbox: Outbox | None = None,
    events: EventArchive | None = None,
) -> dict[str, int]:
    """Delete everything stored for `user_uid`, and (with `outbox`) the user's writes not yet forwarded; one log
    line (`where`: who asked) without the user's data. The store keeps a tombstone; `tombstones` (this instance's)
    learns of it at once. With the event store `events`, the user's events there go after those in the Redis
    stream (the drain reads a failed batch again before retrying it, so what was deleted from the stream meanwhile
    is not inserted afterwards)."""
    removed = await store.delete_user(user_uid)
    if events is not None:
        removed["events"] = removed.get("events", 0) + await events.delete_user_events(user_uid)
    if outbox is not None:
        removed["forwarding"] = await outbox.delete_user(user_uid)
    if tombstones is not None:
        tombstones.add([tombstone_of(user_uid)])
    log.info("user data deleted (%s): user %s, %d attribute sets, %d events, %d writes not yet forwarded", where,
             uid_digest(user_uid), removed.get("attributes", 0), removed.get("events", 0),
             removed.get("forwarding", 0))  # fmt: skip
    return removed


async def purge_old_events(store: StateStore, older_than: float) -> int:
    """One bounded retention run: events with ts < older_than, at most RETENTION_BATCHES_PER_RUN batches."""
    total = 0
    for _ in range(RETENTION_BATCHES_PER_RUN):
        removed = await store.purge_events(older_than, RETENTION_BATCH)
        total += removed
        if removed < RETENTION_BATCH:
            break
    if total:
        log.info("retention: %d events older than the retention period deleted", total)
    return total


class Retention(Periodic):
    """Runs `purge_old_events` every RETENTION_INTERVAL for events older than `days` (the process clock)."""

    what = "retention run"
    logger = log

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        days: float,
        interval: float = RETENTION_INTERVAL,
        *,
        events: EventArchive | None = None,
    ) -> None:
        """`events`: the event store, purged too (by whole day partitions, plus the straddling day's rows)."""
        super().__init__(interval)
        self.store = store
        self.events = events
        self.clock = clock
        self.days = days
        self.deleted = 0

    async def run_once(self) -> int:
        older_than = self.clock() - self.days * 86_400
        removed = await purge_old_events(self.store, older_than)
        if self.events is not None:
            purged = await self.events.purge_events(older_than)
            if purged:
                log.info("retention: %d events older than the retention period deleted from the event store", purged)
            removed += purged
        self.deleted += removed
        return removed


class TombstoneFollower(Periodic):
    """Keeps `tombstones` (the planner's) up to date with the deletions recorded in the store, every `interval`
    seconds: a user deleted through any instance, worker or `edgeproxy user delete` starts a new identity here
    within that time; and, in the same run, the store's knowledge of which users have rows (`follow_writes`)."""

    what = "reading deleted users"
    logger = log

    def __init__(
        self,
        store: StateStore,
        tombstones: Tombstones,
        interval: float = TOMBSTONE_POLL_SECONDS,
        behaviour: BehaviourTracker | None = None,
    ) -> None:
        super().__init__(interval)
        self.store = store
        self.tombstones = tombstones
        self.behaviour = behaviour

    async def run_once(self) -> int:
        """Returns how many deletions it read. Then it brings the store's in-process knowledge of which users have
        rows up to date with other processes' writes (`follow_writes`: a SQLite file shared by workers)."""
        read = 0
        while True:
            found, self.tombstones.cursor = await self.store.deletions_after(self.tombstones.cursor)
            self.tombstones.add(found)
            if found:  # attributes this process cached of users deleted elsewhere go too, and their behaviour
                self.store.forget_deleted(set(found))
                if self.behaviour is not None:
                    self.behaviour.forget_deleted(set(found))
            read += len(found)
            if len(found) < TOMBSTONE_BATCH:
                break
        await self.store.follow_writes()  # after the deletions: they matter more, should this fail
        return read
