"""Behavioural attributes at run time (SPEC §13): visitors' behaviour in memory, written behind to the store.

A page view is observed on the request path (exchange/plan.py, pure) and recorded here when its answer goes out
(`record`): in memory at once, so the visitor's next page view reads it, and in the state store within
`FLUSH_INTERVAL` (one batched `put_behaviour` of every visitor whose behaviour changed, read back as the attribute
STATE_KEY), or within COUNTS_EVERY flushes when only the page-view count and the last page view's time changed.
So a kill -9 loses at most the page-view counts of the last 30 s, and anything else of the last second. A clean
shutdown writes everything (exact counts).

Where the behaviour comes from for a decision (`current_fields`): this process's memory when it has the visitor, else
what the store holds (the stored attributes the decision reads anyway). With several processes sharing the store
(workers, a fleet), the newer of the two wins, so a visitor whose page views go to different processes is counted
by each within one flush interval of the other; page views two processes see within the same interval can count
once instead of twice (last write wins).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Final

from edgeproxy.runtime.periodic import Periodic
from edgeproxy.store.base import StateStore, StoreError, tombstone_of
from edgeproxy.visitor.behaviour import (
    STATE_KEY,
    Behaviour,
    BehaviourConfig,
    BehaviourFields,
    behaviour_of,
    decode,
    encode,
    reading,
)

log = logging.getLogger("edgeproxy.behaviour")

FLUSH_INTERVAL = 1.0  # seconds between writes of what an audience may turn on: a new visitor, visit, path view
COUNTS_EVERY = 30  # flushes between writes of what only counts on (page views, last seen): 30 s at most
KEPT_IN_MEMORY = 200_000  # visitors whose behaviour this process keeps (least recently seen go first)
KEPT_ON_FAILURE = 100_000  # changed visitors held while the store is away

# Where a kept tuple has the fields `record` and `current_fields` read (Behaviour's order, checked below): the first
# page view's and the last's times, the visits, and from _FIRST_REFERRER on what else an audience reads of it.
_FIRST_SEEN: Final = 0
_LAST_SEEN: Final = 1
_VISITS: Final = 3
_FIRST_REFERRER: Final = 5
assert [Behaviour._fields[i] for i in (_FIRST_SEEN, _LAST_SEEN, _VISITS)] == ["first_seen", "last_seen", "visits"]
assert Behaviour._fields[_FIRST_REFERRER:] == ("first_referrer", "utm_source", "path_views")


class BehaviourTracker(Periodic):
    what = "writing behaviour"
    logger = log

    def __init__(
        self,
        config: BehaviourConfig,
        store: StateStore,
        project_uid: Callable[[], str],
        *,
        flush_interval: float = FLUSH_INTERVAL,
        kept: int = KEPT_IN_MEMORY,
    ) -> None:
        super().__init__(flush_interval)
        self.config = config
        self.store = store
        self.project_uid = project_uid
        self._kept = kept
        # Each visitor's behaviour is kept as a plain tuple of its fields, no path views: None (BehaviourFields, as
        # `observe_fields` makes them: no work for the cyclic collector).
        self._known: dict[str, BehaviourFields] = {}  # user uid -> behaviour (this project's), least recent first
        self._changed: dict[str, BehaviourFields] = {}  # written at the next flush
        # Visitors whose page views only counted (page views, last seen): written every COUNTS_EVERY flushes, as
        # `_known` then has them. A list, once per page view: appending costs less than a dict's cold entry.
        self._counting: list[str] = []
        self._flushes = 0
        self._reading: tuple[frozenset[str] | None, BehaviourConfig] = (None, config)
        # user uid -> the stored texts this process last read and last wrote: a decision's stored text that is
        # either is not news (what is in memory is as new), so it is not decoded again. A user in `_written` has a
        # row the store has marked (put_behaviour's `new` are the others).
        self._read: dict[str, str] = {}
        self._written: dict[str, str] = {}
        self.written = 0  # visitors' behaviour written to the store
        self.failed = 0  # writes that failed (kept and retried)

    def known(self, user_uid: str) -> Behaviour | None:
        """This process's memory of the visitor, without I/O (None: ask the store)."""
        kept = self._known.get(user_uid)
        return None if kept is None else behaviour_of(kept)

    def reading(self, keys: frozenset[str] | None) -> BehaviourConfig:
        """The config that computes only the attributes among `keys` (a snapshot's `custom_keys_read`; None: all),
        kept while the snapshot is the same."""
        if self._reading[0] is not keys:
            self._reading = (keys, reading(self.config, keys))
        return self._reading[1]

    def holds(self, user_uid: str) -> bool:
        """Whether this process has the visitor's behaviour in memory (else a decision reads the store's)."""
        return user_uid in self._known

    def current_fields(self, user_uid: str, stored: Mapping[str, object]) -> BehaviourFields | None:
        """The visitor's behaviour before this page view: the newer of memory and the store's (what a page view
        observes and a decision reads, as the fields this process keeps). The store's text is decoded only when it
        is not what this process last wrote or read for the visitor."""
        kept = self._known.get(user_uid)
        text = stored.get(STATE_KEY) if stored else None
        if kept is not None and (
            text is None or text == self._written.get(user_uid) or text == self._read.get(user_uid)
        ):
            return kept
        theirs = decode(text)
        if isinstance(text, str):
            self._read[user_uid] = text
        if kept is None or (theirs is not None and theirs.last_seen > kept[_LAST_SEEN]):
            return theirs  # another process saw a later page view
        return kept

    def record(self, user_uid: str, behaviour: BehaviourFields) -> None:
        """A page view's outcome (`observe_fields`'): remembered now; written at the next flush when it changed what
        an audience could turn on (the visitor's first page view, a new visit, a fresh start after expiring, a path
        counter, the referrer, utm_source), else (only the page view count and the last page view's time) within
        COUNTS_EVERY flushes. Most page views are of the second kind, so the write-behind costs a thirtieth as much,
        and a crash loses at most 30 s of page-view counts but never more than a second of anything else."""
        known = self._known
        before = known.pop(user_uid, None)
        # Kept as `observe_fields` gives it: an exact tuple, no path views: None (the collector stops tracking it).
        known[user_uid] = behaviour  # (inserted again: last, the most recently seen)
        if before is None:
            if len(known) > self._kept:
                self._forget_least_recent()
            self._changed[user_uid] = behaviour
        elif (
            behaviour[_VISITS] == before[_VISITS]
            and behaviour[_FIRST_SEEN] == before[_FIRST_SEEN]
            and behaviour[_FIRST_REFERRER:] == before[_FIRST_REFERRER:]  # the referrer, utm_source, path views
        ):
            self._counting.append(user_uid)  # (when also changed, the flush writes what `_known` has: this)
        else:
            self._changed[user_uid] = behaviour
            if behaviour[_FIRST_SEEN] != before[_FIRST_SEEN]:  # started afresh (expired): its row may have been
                self._written.pop(user_uid, None)  # purged, so the next write is a new row's

    def _forget_least_recent(self) -> None:
        """Past `kept` visitors: the least recently seen go, and a hundredth more with them, in one pass over the
        oldest (a plain dict, in the order of the visitors' last page views: its first entries are the oldest, but
        finding them passes over the places their later page views left, so not one at a time). What they have
        not written yet still is: it waits with the changed."""
        known, changed, written = self._known, self._changed, self._written
        gone = list(islice(known, len(known) - self._kept + self._kept // 100))
        for user_uid in gone:
            kept = known.pop(user_uid)
            if user_uid in changed or encode(kept) != written.get(user_uid):
                changed[user_uid] = kept  # its latest page view, not yet written
            self._read.pop(user_uid, None)
            written.pop(user_uid, None)

    def forget(self, user_uid: str) -> None:
        """A deleted user (SPEC §11): nothing of theirs is kept or written."""
        self._known.pop(user_uid, None)
        self._changed.pop(user_uid, None)  # (in `_counting` it may stay: only what `_known` has is written)
        self._read.pop(user_uid, None)
        self._written.pop(user_uid, None)

    def forget_deleted(self, tombstones: set[str]) -> int:
        """Users deleted through another process (their tombstones): forgotten here too, so a write behind never
        brings their behaviour back. Returns how many were known."""
        pending = self._known.keys() | self._changed.keys()
        gone = [user for user in pending if tombstone_of(user) in tombstones]
        for user in gone:
            self.forget(user)
        return len(gone)

    async def run_once(self) -> int:
        self._flushes += 1
        return await self.flush(everything=self._flushes % COUNTS_EVERY == 0)

    async def flush(self, *, everything: bool = True) -> int:
        """Write every visitor whose behaviour changed (`everything`: page-view counts too, else only what
        `record` marks as changed), in one batch; returns how many."""
        if everything and self._counting:
            self._counting, counting = [], self._counting
            known = self._known
            batch = {user: known[user] for user in dict.fromkeys(counting) if user in known}  # each as it is now
            batch.update(self._changed)  # (the big one grown by the few, not copied: `batch | changed`)
            self._changed = batch
        if not self._changed:
            return 0
        batch, self._changed = self._changed, {}
        known = self._known
        texts = {user: encode(known.get(user, state)) for user, state in batch.items()}  # the latest page view's
        written = self._written
        new = [user for user in texts if user not in written]  # (the others' rows: written by this process before)
        try:
            await self.store.put_behaviour(self.project_uid(), texts, new=new)
            self.written += len(batch)
            for user, text in texts.items():
                if user in known:
                    written[user] = text
        except StoreError as exc:
            self.failed += 1
            for user, state in list(batch.items())[-KEPT_ON_FAILURE:]:
                # A newer page view meanwhile wins, and is written at the next flush: it holds this one's changes.
                self._changed.setdefault(user, self._known.get(user, state))
            log.error("behaviour not yet stored (%d visitors waiting): %s", len(self._changed), exc)
            return 0
        return len(batch)

    async def stop(self) -> None:
        await super().stop()
        await self.flush()  # every page view counted is written: exact after a clean shutdown
