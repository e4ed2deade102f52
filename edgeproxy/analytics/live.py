"""Live decision counts of one proxy process, for the dashboard: `ProxyState.live.record(manifest)` per decision.

Counts per (experience, variant or None) since the process started, plus per-minute buckets for the last hour.
Recording is one dict increment per decision, keyed by the manifest's entries (a project has few distinct
variant sets); the minute's counts are expanded per experience and variant when the minute rolls over, and when
read. No lock: the proxy decides on one event-loop thread; a rare lost increment from another thread would only
make a live counter one short. With `serve --workers N` each worker counts its own decisions; the dashboard
shows those of the worker that answered.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

MINUTES_KEPT = 60

Slot = tuple[str, str | None]  # (experience short uid, variant short uid or None = no variant)


class _Folded:
    """A variant stand-in after `_folded` (None stays None: no variant)."""

    __slots__ = ("short_uid",)

    def __init__(self, short_uid: str | None) -> None:
        self.short_uid = short_uid


class DecidedManifest(Protocol):
    """What `record_decision` reads of `edgeproxy.engine.decide.Manifest`."""

    @property
    def entries(self) -> tuple[tuple[str, Any], ...]: ...


Entries = tuple[tuple[str, Any], ...]


def _expand(by_entries: dict[Entries, int], into: dict[Slot, int] | None = None) -> dict[Slot, int]:
    slots = {} if into is None else into
    for entries, n in by_entries.items():
        for experience, variant in entries:
            slot = (experience, None if variant is None else variant.short_uid)
            slots[slot] = slots.get(slot, 0) + n
    return slots


def _folded(by_entries: dict[Entries, int]) -> dict[Entries, int]:
    """The same counts with one pseudo-entry per slot (same expansion): bounded by experiences x variants."""
    return {((experience, _Folded(variant)),): n for (experience, variant), n in _expand(by_entries).items()}


class LiveDecisions:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.started = clock()
        self.decisions = 0
        self._totals: dict[Slot, int] = {}  # the minutes before this one, per slot
        self._minute = int(self.started // 60)
        self._current: dict[Entries, int] = {}
        self._current_decisions = 0
        self._history: deque[tuple[int, int, dict[Slot, int]]] = deque(maxlen=MINUTES_KEPT)

    def record(self, manifest: DecidedManifest) -> None:
        minute = int(self._clock() // 60)
        if minute != self._minute:
            self._roll(minute)
        self.decisions += 1
        self._current_decisions += 1
        entries = manifest.entries
        current = self._current  # the minute's counts; added to the totals when the minute rolls over
        current[entries] = current.get(entries, 0) + 1
        if len(current) > 100_000:  # a project with a huge variant-set cardinality: fold into slots, keep going
            self._current = _folded(current)

    @property
    def totals(self) -> dict[Slot, int]:
        """Decisions per (experience, variant or None) since start."""
        return _expand(self._current, dict(self._totals))

    def _roll(self, minute: int) -> None:
        # Past minutes are kept per slot: bounded by experiences x variants, and the same slot whichever snapshot
        # decided it (a manifest's entries are keyed by variant object, and every reload compiles new ones).
        counts = _expand(self._current)
        totals = self._totals
        for slot, n in counts.items():
            totals[slot] = totals.get(slot, 0) + n
        self._history.append((self._minute, self._current_decisions, counts))
        self._minute, self._current, self._current_decisions = minute, {}, 0

    def snapshot(self) -> dict[str, Any]:
        """JSON data: totals per experience and variant ("-" = no variant), and per-minute decision counts."""
        now_minute = int(self._clock() // 60)
        if now_minute != self._minute:
            self._roll(now_minute)
        recent = _expand(self._current)
        per_minute = {m: n for m, n, _ in self._history}
        per_minute[self._minute] = self._current_decisions
        first = now_minute - MINUTES_KEPT + 1
        last_5: dict[Slot, int] = dict(recent)
        for m, _, counts in self._history:
            if m > now_minute - 5:
                for slot, n in counts.items():
                    last_5[slot] = last_5.get(slot, 0) + n
        experiences: dict[str, dict[str, dict[str, int]]] = {}
        for (e, v), n in self.totals.items():
            cell = experiences.setdefault(e, {}).setdefault(v or "-", {"total": 0, "last5Minutes": 0})
            cell["total"] = n
        for (e, v), n in last_5.items():
            experiences.setdefault(e, {}).setdefault(v or "-", {"total": 0, "last5Minutes": 0})["last5Minutes"] = n
        return {
            "since": self.started,
            "decisions": self.decisions,
            "perMinute": [per_minute.get(m, 0) for m in range(first, now_minute + 1)],
            "experiences": experiences,
        }
