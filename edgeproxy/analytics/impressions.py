"""Impressions the proxy records itself (docs/contract.md §7, §8): server-side and origin-confirmed.

- server-side (`impressions = "proxy"`): every personalized HTML page served counts an impression of each
  active variant for that visitor, so an A/B test does not depend on the browser sending events;
- origin-confirmed (always, when the origin sends `applied_variants_header`): the aliases the origin actually
  applied (the CDA's `publish_details.variants`) are recorded with source "origin", and the header is
  stripped before the browser.
Writes are batched off the request path and flushed every half second and at shutdown; a user's
(experience, variant) already recorded recently is not written again (analytics dedupes anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable

from edgeproxy.clock import Clock, system_clock
from edgeproxy.engine.decide import Manifest
from edgeproxy.store.base import EventRecord, EventSource, StateStore, StoreError

log = logging.getLogger("edgeproxy.impressions")
ALIAS_PREFIX = "cs_personalize_"


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


class ImpressionRecorder:
    def __init__(self, store: StateStore, project_uid: Callable[[], str], *, flush_interval: float = 0.5,
                 recent: int = 200_000, clock: Clock = system_clock) -> None:  # fmt: skip
        """`project_uid`: the project of the snapshot being served (read per impression: the first snapshot may
        load after the recorder is built)."""
        self.store = store
        self.clock = clock
        self.project_uid = project_uid
        self.flush_interval = flush_interval
        self._pending: list[EventRecord] = []
        self._recent: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()
        self._recent_limit = recent
        self._task: asyncio.Task[None] | None = None
        self.recorded = 0
        self.failed = 0

    def _add(self, user_uid: str, experience: str, variant: str, source: EventSource) -> None:
        key = (user_uid, experience, variant, source)
        if key in self._recent:
            self._recent.move_to_end(key)
            return
        self._recent[key] = None
        if len(self._recent) > self._recent_limit:
            self._recent.popitem(last=False)
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
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await self.store.append_events(batch)
            self.recorded += len(batch)
        except StoreError as exc:
            # Kept for the next flush rather than dropped; bounded so an outage cannot grow memory forever.
            self.failed += 1
            self._pending = (batch + self._pending)[-100_000:]
            log.error("impressions not yet stored (%d waiting): %s", len(self._pending), exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
