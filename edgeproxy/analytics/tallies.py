"""What analytics counts, independent of where the events live (SQLite, Redis, a list in a test).

Semantics (docs/contract.md §8 and ours; the README documents them for users):

- An impression is unique per (user, experience, variant), whatever its source (`sdk`, `proxy`, `origin`): a
  user's impressions of one variant count once, at the time of the first (its *first-seen* time).
- A conversion is a custom event (`type = EVENT`) whose key is a metric of the experience (metric event uid ->
  key through the snapshot's events). It counts once per (user, experience, metric key).
- Attribution: a conversion event at time t belongs to the variant whose first-seen time is the latest one at
  or before t (ties: the variant short uid that sorts last), and only when t is at most 30 days after that
  first-seen time (both ends inclusive: 0 <= t - first_seen <= 30 days). Conversions before any impression, or
  more than 30 days after the latest one, are ignored. Of a user's qualifying conversion events, the earliest
  counts; later ones do not count again, so a user whose variant changed is credited to the variant they were
  seeing when they first converted.
- A report window [since, until) keeps only the events whose timestamps fall in it, as if nothing else had
  happened (impressions before `since` do not open a conversion window inside it).
- Days are UTC days of the POSIX timestamp: a unique impression is dated by its first-seen time, a conversion by
  the time of the conversion event that counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CONVERSION_WINDOW_SECONDS = 30 * 86_400  # docs/contract.md §8: "within 30 days after that user's impression"
DAY = 86_400

Arm = tuple[str, str]  # (experience short uid, variant short uid)


@dataclass(frozen=True, slots=True)
class Scope:
    """What to count: experiences (short uid -> metric event keys) and the time window [since, until)."""

    metrics: Mapping[str, frozenset[str]]
    since: float | None = None
    until: float | None = None

    @property
    def experiences(self) -> frozenset[str]:
        return frozenset(self.metrics)

    def in_window(self, ts: float) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


@dataclass(slots=True)
class Tallies:
    """Counts per arm, the same whatever the backend."""

    # (experience, variant) -> unique impressions
    impressions: dict[Arm, int] = field(default_factory=dict)
    # (experience, variant, metric key, day) -> conversions counted that day (totals are their sums)
    daily_conversions: dict[tuple[str, str, str, int], int] = field(default_factory=dict)
    # experience -> earliest first-seen impression time (POSIX seconds)
    first_impression: dict[str, float] = field(default_factory=dict)
    # (experience, variant, day) -> unique impressions first seen that day; None when not computed (it is
    # the costly part on SQLite, needed for charts only)
    daily_impressions: dict[tuple[str, str, int], int] | None = None

    def conversions(self) -> dict[tuple[str, str, str], int]:
        totals: dict[tuple[str, str, str], int] = {}
        for (e, v, k, _), n in self.daily_conversions.items():
            totals[(e, v, k)] = totals.get((e, v, k), 0) + n
        return totals


def day_of(ts: float) -> int:
    """UTC day number of a POSIX time; truncation, exactly as SQLite's CAST(ts / 86400 AS INTEGER)."""
    return int(ts / DAY)


def later_first_seen(candidate: tuple[float, str], current: tuple[float, str] | None) -> bool:
    """Whether (first_seen, variant) `candidate` is the one a conversion is attributed to over `current`."""
    return current is None or candidate[0] > current[0] or (candidate[0] == current[0] and candidate[1] > current[1])


class EventFold:
    """The semantics above in plain Python, fed impressions first, then conversions.

    Used for Redis streams (two passes over the stream) and as the reference the SQL is tested against.
    Memory: one float per unique (user, experience, variant) impression in scope, plus one small tuple per
    (user, experience, metric key) that converted; conversion events themselves are not kept.
    """

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self._experiences = scope.experiences
        self._by_key: dict[str, tuple[str, ...]] = {}
        for experience, keys in scope.metrics.items():
            for key in keys:
                self._by_key[key] = (*self._by_key.get(key, ()), experience)
        # user -> {(experience, variant): first-seen time}
        self._first_seen: dict[str, dict[Arm, float]] = {}
        # (user, experience, key) -> (conversion time, first-seen, variant) of the conversion that counts
        self._converted: dict[tuple[str, str, str], tuple[float, float, str]] = {}

    def add_impression(self, user: str, experience: str, variant: str, ts: float) -> None:
        if experience not in self._experiences or not self.scope.in_window(ts):
            return
        arms = self._first_seen.get(user)
        if arms is None:
            self._first_seen[user] = {(experience, variant): ts}
            return
        seen = arms.get((experience, variant))
        if seen is None or ts < seen:
            arms[(experience, variant)] = ts

    def add_conversion(self, user: str, key: str, ts: float) -> None:
        """Call after every impression has been added."""
        experiences = self._by_key.get(key)
        if experiences is None or not self.scope.in_window(ts):
            return
        arms = self._first_seen.get(user)
        if arms is None:
            return
        for experience in experiences:
            latest: tuple[float, str] | None = None
            for (e, v), first in arms.items():
                if e == experience and first <= ts and later_first_seen((first, v), latest):
                    latest = (first, v)
            if latest is None or ts - latest[0] > CONVERSION_WINDOW_SECONDS:
                continue
            slot = (user, experience, key)
            held = self._converted.get(slot)
            if held is None or ts < held[0]:
                self._converted[slot] = (ts, latest[0], latest[1])

    def tallies(self) -> Tallies:
        daily_impressions: dict[tuple[str, str, int], int] = {}
        first_impression: dict[str, float] = {}
        for arms in self._first_seen.values():
            for (e, v), first in arms.items():
                bucket = (e, v, day_of(first))
                daily_impressions[bucket] = daily_impressions.get(bucket, 0) + 1
                if first < first_impression.get(e, math.inf):
                    first_impression[e] = first
        daily_conversions: dict[tuple[str, str, str, int], int] = {}
        for (_, e, k), (ts, _, v) in self._converted.items():
            cbucket = (e, v, k, day_of(ts))
            daily_conversions[cbucket] = daily_conversions.get(cbucket, 0) + 1
        impressions: dict[Arm, int] = {}
        for (e, v, _), n in daily_impressions.items():
            impressions[(e, v)] = impressions.get((e, v), 0) + n
        return Tallies(impressions, daily_conversions, first_impression, daily_impressions)


@dataclass(frozen=True, slots=True)
class Event:
    """A minimal event for `fold_events` (the store's EventRecord has the same fields)."""

    ts: float
    user_uid: str
    type: str
    experience_short_uid: str | None = None
    variant_short_uid: str | None = None
    event_key: str | None = None


def fold_events(events: Iterable[Event], scope: Scope) -> Tallies:
    """Tallies of an in-memory event list (tests, small data): impressions first, then conversions."""
    items = list(events)
    fold = EventFold(scope)
    for ev in items:
        if ev.type == "IMPRESSION" and ev.experience_short_uid and ev.variant_short_uid:
            fold.add_impression(ev.user_uid, ev.experience_short_uid, ev.variant_short_uid, ev.ts)
    for ev in items:
        if ev.type == "EVENT" and ev.event_key:
            fold.add_conversion(ev.user_uid, ev.event_key, ev.ts)
    return fold.tallies()
