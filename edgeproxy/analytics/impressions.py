"""Impressions the proxy records itself (docs/contract.md §7, §8): server-side and origin-confirmed.

- server-side (`impressions = "proxy"`): every personalized HTML page served counts an impression of each
  active variant for that visitor, so an A/B test does not depend on the browser sending events;
- origin-confirmed (always, when the origin sends `applied_variants_header`): the aliases the origin actually
  applied (the CDA's `publish_details.variants`) are recorded with source "origin", and the header is
  stripped before the browser.
Writes are batched off the request path and flushed every half second and at shutdown; a user's
(experience, variant) already recorded recently is not written again (analytics dedupes anyway). With forwarding
on (SPEC §12), each stored batch is also queued for Contentstack: one `POST /events` per user.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeproxy.clock import Clock, system_clock
from edgeproxy.engine.decide import Manifest
from edgeproxy.forward.items import events_items
from edgeproxy.runtime.periodic import Periodic
from edgeproxy.store.base import EventRecord, EventsBufferFull, EventSource, StateStore, StoreError

if TYPE_CHECKING:
    from edgeproxy.forward.forwarder import Forwarder

log = logging.getLogger("edgeproxy.impressions")
ALIAS_PREFIX = "cs_personalize_"
KEPT_ON_FAILURE = 100_000  # impressions held in memory while the store (or the outbox) is away


def parse_aliases(header: str) -> list[tuple[str, str]]:
    """`cs_personalize_0_2, cs_personalize_1_1` -> [("0", "2"), ("1", "1")]; anything else is ignored."""
    pairs = []
    for raw in header.split(","):
        alias = raw.strip()
        if not alias.startswith(ALIAS_PREFIX):
            continue
        experience, sep, variant = alias[len(ALIAS_PREFIX) :].partition("_")
        if sep and experience and variant and "_" not in variant:
            pairs.append((experience, variant))
    return pairs


class ImpressionRecorder(Periodic):
    what = "storing impressions"
    logger = log

    def __init__(self, store: StateStore, project_uid: Callable[[], str], *, flush_interval: float = 0.5,
                 recent: int = 200_000, clock: Clock = system_clock,
                 forwarder: Forwarder | None = None) -> None:  # fmt: skip
        """`project_uid`: the project of the snapshot being served (read per impression: the first snapshot may
        load after the recorder is built)."""
        self.store = store
        self.clock = clock
        super().__init__(flush_interval)
        self.project_uid = project_uid
        self.flush_interval = flush_interval
        self._pending: list[EventRecord] = []
        self.forwarder = forwarder
        self._unforwarded: list[EventRecord] = []  # stored, not yet queued for forwarding (the outbox failed)
        # What was forwarded recently, whatever its source: Contentstack's events carry no source, so a page's
        # impression that the proxy and the origin both recorded is sent once.
        self._forwarded: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._recent: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._recent_limit = recent
        self.recorded = 0
        self.failed = 0
        self.refused = 0  # impressions dropped because the event buffer was full (counted and logged by the store)

    def _add(self, user_uid: str, experience: str, variant: str, source: EventSource) -> None:
        if self._seen(self._recent, (user_uid, experience, variant, source)):
            return
        self._pending.append(EventRecord(
            ts=self.clock(), project_uid=self.project_uid(), user_uid=user_uid, type="IMPRESSION",
            experience_short_uid=experience, variant_short_uid=variant, source=source,
        ))  # fmt: skip

    def served(self, manifest: Manifest) -> None:
        for experience, variant in manifest.entries:
            if variant is not None:
                self._add(manifest.user_uid, experience, variant.short_uid, "proxy")

    def confirmed(self, user_uid: str, header: str) -> None:
        for experience, variant in parse_aliases(header):
            self._add(user_uid, experience, variant, "origin")

    async def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            try:
                await self.store.append_events(batch)
                self.recorded += len(batch)
                if self.forwarder is not None:
                    self._unforwarded.extend(self._not_forwarded(batch))
            except EventsBufferFull:
                # The event store is behind and the Redis buffer is at its cap: holding them here would only move
                # the unbounded backlog into this process. Nobody was promised them; refused, counted, logged.
                self.refused += len(batch)
            except StoreError as exc:
                # Kept for the next flush rather than dropped; bounded so an outage cannot grow memory forever.
                self.failed += 1
                self._pending = (batch + self._pending)[-KEPT_ON_FAILURE:]
                log.error("impressions not yet stored (%d waiting): %s", len(self._pending), exc)
        if self.forwarder is not None and self._unforwarded:
            batch, self._unforwarded = self._unforwarded, []
            try:
                await self.forwarder.enqueue(events_items(batch, self.forwarder.clock()))
            except StoreError as exc:  # the same bound and the same next try as storing them
                self._unforwarded = (batch + self._unforwarded)[-KEPT_ON_FAILURE:]
                log.error("impressions not yet queued for forwarding (%d waiting): %s", len(self._unforwarded), exc)

    def _seen(self, recent: OrderedDict[tuple[str, ...], None], key: tuple[str, ...]) -> bool:
        """Whether `key` is among the `recent` keys (refreshed if so, added if not; the oldest go past the bound)."""
        if key in recent:
            recent.move_to_end(key)
            return True
        recent[key] = None
        if len(recent) > self._recent_limit:
            recent.popitem(last=False)
        return False

    def _not_forwarded(self, batch: list[EventRecord]) -> list[EventRecord]:
        return [e for e in batch if not self._seen(self._forwarded, (e.user_uid, e.experience_short_uid or "",
                                                                    e.variant_short_uid or ""))]  # fmt: skip

    async def run_once(self) -> int:
        await self.flush()
        return 0

    async def stop(self) -> None:
        await super().stop()
        await self.flush()
