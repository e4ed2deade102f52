"""Behavioural attributes at run time (SPEC §13): visitors' behaviour in memory, written behind to the store.

A page view is observed on the request path (exchange/plan.py, pure) and recorded here when its answer goes out
(`record`): in memory at once, so the visitor's next page view reads it, and in the state store within
`FLUSH_INTERVAL` (one batched write of every visitor whose behaviour changed, as the attribute STATE_KEY). What a
crash can lose is bounded by that interval: the page views of the last FLUSH_INTERVAL seconds before a kill -9.
A clean shutdown writes everything (exact counts).

Where the behaviour comes from for a decision (`current`): this process's memory when it has the visitor, else
what the store holds (the stored attributes the decision reads anyway). With several processes sharing the store
(workers, a fleet), the newer of the two wins, so a visitor whose page views go to different processes is counted
by each within one flush interval of the other; page views two processes see within the same interval can count
once instead of twice (last write wins).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping

from edgeproxy.runtime.periodic import Periodic
from edgeproxy.store.base import StateStore, StoreError, tombstone_of
from edgeproxy.visitor.behaviour import STATE_KEY, Behaviour, BehaviourConfig, decode, encode

log = logging.getLogger("edgeproxy.behaviour")

FLUSH_INTERVAL = 1.0  # seconds between writes of changed behaviour: the most page views a kill -9 can lose
KEPT_IN_MEMORY = 200_000  # visitors whose behaviour this process keeps (least recently seen go first)
KEPT_ON_FAILURE = 100_000  # changed visitors held while the store is away


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
        self._known: OrderedDict[str, Behaviour] = OrderedDict()  # user uid -> behaviour (this project's)
        self._changed: dict[str, Behaviour] = {}
        self._texts: dict[str, str] = {}  # user uid -> the stored text this process last wrote or read
        self.recorded = 0  # page views recorded
        self.written = 0  # visitors' behaviour written to the store
        self.failed = 0  # writes that failed (kept and retried)

    def known(self, user_uid: str) -> Behaviour | None:
        """This process's memory of the visitor, without I/O (None: ask the store)."""
        return self._known.get(user_uid)

    def current(self, user_uid: str, stored: Mapping[str, object]) -> Behaviour | None:
        """The visitor's behaviour before this page view: the newer of memory and the store's. The store's text is
        decoded only when it is not what this process last wrote or read for the visitor."""
        mine = self._known.get(user_uid)
        text = stored.get(STATE_KEY)
        if mine is not None and (text is None or text == self._texts.get(user_uid)):
            return mine
        theirs = decode(text)
        if isinstance(text, str):
            self._texts[user_uid] = text
        if mine is None or (theirs is not None and theirs.last_seen > mine.last_seen):
            return theirs  # another process saw a later page view
        return mine

    def record(self, user_uid: str, behaviour: Behaviour) -> None:
        """A page view's outcome: remembered now, written within the flush interval."""
        known = self._known
        known[user_uid] = behaviour
        known.move_to_end(user_uid)
        if len(known) > self._kept:
            self._texts.pop(known.popitem(last=False)[0], None)
        self._changed[user_uid] = behaviour
        self.recorded += 1

    def forget(self, user_uid: str) -> None:
        """A deleted user (SPEC §11): nothing of theirs is kept or written."""
        self._known.pop(user_uid, None)
        self._changed.pop(user_uid, None)
        self._texts.pop(user_uid, None)

    def forget_deleted(self, tombstones: set[str]) -> int:
        """Users deleted through another process (their tombstones): forgotten here too, so a write behind never
        brings their behaviour back. Returns how many were known."""
        gone = [user for user in self._known.keys() | self._changed.keys() if tombstone_of(user) in tombstones]
        for user in gone:
            self.forget(user)
        return len(gone)

    async def run_once(self) -> int:
        return await self.flush()

    async def flush(self) -> int:
        """Write every visitor whose behaviour changed, in one batch; returns how many."""
        if not self._changed:
            return 0
        batch, self._changed = self._changed, {}
        texts = {user: encode(state) for user, state in batch.items()}
        try:
            await self.store.put_attributes(
                self.project_uid(), {user: {STATE_KEY: text} for user, text in texts.items()}
            )
            self.written += len(batch)
            for user, text in texts.items():
                if user in self._known:
                    self._texts[user] = text
        except StoreError as exc:
            self.failed += 1
            for user, state in list(batch.items())[-KEPT_ON_FAILURE:]:
                self._changed.setdefault(user, state)  # a newer page view meanwhile wins
            log.error("behaviour not yet stored (%d visitors waiting): %s", len(self._changed), exc)
            return 0
        return len(batch)

    async def stop(self) -> None:
        await super().stop()
        await self.flush()  # every page view counted is written: exact after a clean shutdown
