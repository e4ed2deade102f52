"""A plausible event history for the example project (rules/), for analytics tests and the dashboard e2e test.

Four weeks of visitors ending at `now`: the A/B tests get impressions in their configured splits (often twice:
from the SDK and again from the proxy), purchases and other metric events at different rates per variant (the
checkout test's green button clearly wins), a promo-bar test whose second variant loses 30% of its impressions
(a sample-ratio mismatch), segmented impressions, conversions before any impression and non-metric events.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

from edgeproxy.store.base import AttributeLimits, EventRecord, EventSource
from edgeproxy.store.sqlite_store import SqliteStore

PROJECT = "6565d3b1a3f0c7b2e1d4a9f0"
DAY = 86_400.0


def _pick(rng: random.Random, weights: Sequence[tuple[str, float]]) -> str:
    x = rng.random() * sum(w for _, w in weights)
    for name, w in weights:
        x -= w
        if x < 0:
            return name
    return weights[-1][0]


def example_history(now: float, users: int = 3000, days: int = 28, seed: int = 7) -> list[EventRecord]:
    rng = random.Random(seed)
    events: list[EventRecord] = []

    def impression(t: float, user: str, exp: str, var: str, source: EventSource = "sdk") -> None:
        events.append(EventRecord(t, PROJECT, user, "IMPRESSION", exp, var, None, source))

    def event(t: float, user: str, key: str) -> None:
        if t < now:
            events.append(EventRecord(t, PROJECT, user, "EVENT", None, None, key, "sdk"))

    purchase_rate = {"0": 0.03, "1": 0.08, "2": 0.03}
    for i in range(users):
        user = f"user-{i:05d}"
        start = now - days * DAY + rng.random() * (days * DAY - 3600)
        # Checkout button test: 50/30/20, impressions from the SDK and (60%) the proxy too.
        v2 = _pick(rng, [("0", 50), ("1", 30), ("2", 20)])
        impression(start, user, "2", v2)
        if rng.random() < 0.6:
            impression(start + rng.random() * 5, user, "2", v2, "proxy")
        if rng.random() < purchase_rate[v2]:
            event(start + rng.random() * 4 * DAY, user, "purchase")
        if rng.random() < 0.12:
            event(start + rng.random() * DAY, user, "add_to_cart")
        # Free shipping test: equal split, for 70% of visitors, origin-confirmed.
        if rng.random() < 0.7:
            v3 = _pick(rng, [("0", 1), ("1", 1), ("2", 1)])
            impression(start + 60, user, "3", v3, "origin")
            if rng.random() < 0.10:
                event(start + 60 + rng.random() * 2 * DAY, user, "begin_checkout")
        # Promo bar test: 60/40 configured, but a third of variant 1's impressions are lost (SRM).
        v7 = _pick(rng, [("0", 60), ("1", 40)])
        if v7 == "0" or rng.random() < 0.7:
            impression(start + 30, user, "7", v7)
            if rng.random() < (0.05 if v7 == "0" else 0.07):
                event(start + 30 + rng.random() * DAY, user, "promo_bar_click")
        # Segmented experiences.
        impression(start + 5, user, "0", _pick(rng, [("0", 2), ("1", 3), ("2", 4), ("4", 1)]))
        if rng.random() < 0.5:
            impression(start + 8, user, "6", _pick(rng, [("0", 1), ("1", 1), ("2", 2)]))
        # Noise: non-metric events, and conversions before any impression (both ignored).
        if rng.random() < 0.2:
            event(start + rng.random() * DAY, user, "newsletter_signup")
    for i in range(200):
        event(now - rng.random() * days * DAY, f"never-saw-{i}", "purchase")
    events.sort(key=lambda e: e.ts)
    return events


def write_sqlite(path: Path, events: Sequence[EventRecord]) -> str:
    """Write events through the real SqliteStore (its schema and indexes); returns the state URL."""

    async def fill() -> None:
        store = SqliteStore(str(path), AttributeLimits())
        await store.start()
        try:
            for i in range(0, len(events), 5000):
                await store.append_events(list(events[i : i + 5000]))
        finally:
            await store.close()

    asyncio.run(fill())
    return f"sqlite:///{path}"
