"""The engine's decisions for a stream of request descriptions, fast.

Contexts come from `context_from_description` and every choice is made by the snapshot's own compiled choosers
(`CompiledExperience.choose`), so a replayed decision is the decision `edgeproxy decide` and the proxy make.

Replay adds one thing, a memo of *segment* choices. Only an ACTIVE A/B test reads the visitor's uid (its bucket);
every other experience is a pure function of a handful of visitor features: the attributes its rules read. Real
traffic repeats those features (a few countries, device classes, campaigns, time windows) while uids and clocks are
all different, so the choices of the uid-independent experiences are memoized under a key made of exactly those
features, and A/B tests are decided per request. The key is sound by construction:

- geo, device/OS class, referrer, custom attribute values (typed: `1`, `1.0` and `true`
  are different keys): the values the rules read, as the engine computes them;
- query string: the raw query (what every QUERY_PARAMETERS condition, JSON_MATCH included, is computed from);
- Lytics: the raw `__lytics_audiences` live attribute and `cs-lytics-audiences`/`cs-lytics-flows` cookies that
  the visitor's sets are parsed from;
- the clock: when DATE_AND_TIME is only used by BEFORE/AFTER/BETWEEN_TIME, the position of `now` among the rules'
  time thresholds (`bisect_left`, `bisect_right`) decides every such comparison, so that pair is the key;
- a rule on anything not listed here (a future preset) turns the memo off for that snapshot.

`--no-memo` decides every request with `CompiledSnapshot.decide`; the tests check both agree on varied traffic.
A plain replay (no `--against`, no `--from-log`) goes faster still through `edgeproxy.replay.outcomes`, which
memoises whole outcomes on the truth of the rules; this module decides what it leaves to the slow path.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeproxy.engine.context import (
    DescribedRequest,
    GeoLookup,
    VisitorContext,
    context_from_description,
)
from edgeproxy.engine.decide import CompiledExperience, CompiledSnapshot, CompiledVariant, Manifest
from edgeproxy.engine.loader import iter_rules
from edgeproxy.engine.memo import (
    condition_groups,
    feature_key_function,
    reads_lytics_membership,
    uid_dependent,
)
from edgeproxy.engine.model import Rule
from edgeproxy.replay.readers import TrafficRecord

__all__ = ["MEMO_LIMIT", "ContextFactory", "Decider", "feature_key_function", "segment_key_function"]

MEMO_LIMIT = 50_000  # entries per tag set; cleared when full, so memory stays bounded

Choose = Callable[[VisitorContext], CompiledVariant | None]


class ContextFactory:
    """Request descriptions -> contexts, the way `edgeproxy decide` builds them.

    A description without a user uid gets a deterministic stand-in for the proxy's new UUID4 (derived from the
    file and position), so a replay is reproducible and still buckets such visitors uniformly. `clock` is used
    only when a description has no `now`.
    """

    def __init__(self, snapshot: CompiledSnapshot, geo_lookup: GeoLookup | None, clock: Callable[[], float]) -> None:
        self._classifier = snapshot.classifier
        self._geo_lookup = geo_lookup
        self._clock = clock
        self._record: TrafficRecord | None = None

    def _new_uid(self) -> str:
        return self.new_uid_for(self._record)

    @staticmethod
    def new_uid_for(record: TrafficRecord | None) -> str:
        """The stand-in uid of a record without one: a UUID4 derived from its file and position."""
        seed = f"{record.source}:{record.position}" if record is not None else str(time.time())
        return str(uuid.UUID(bytes=hashlib.md5(seed.encode(), usedforsecurity=False).digest(), version=4))

    def __call__(self, record: TrafficRecord) -> DescribedRequest:
        self._record = record
        return context_from_description(
            record.description,
            clock=self._clock,
            new_uid=self._new_uid,
            classifier=self._classifier,
            geo_lookup=self._geo_lookup if record.geo_lookup_allowed else None,
        )


# -- the segment memo key ---------------------------------------------------------------------------------------


def segment_key_function(snapshot: CompiledSnapshot, experiences: Sequence[CompiledExperience]) -> Any:
    """A function ctx -> hashable key covering everything these experiences' rules read; None when a rule reads
    something this function does not know (then nothing is memoized)."""
    rules: list[Rule] = []
    lytics_membership = False
    for ce in experiences:
        for variant in ce.experience.variants:
            rules.extend(rule for group in condition_groups(variant.condition, snapshot) for rule in iter_rules(group))
            lytics_membership = lytics_membership or reads_lytics_membership(variant.condition, snapshot)
    return feature_key_function(rules, lytics_membership=lytics_membership)


@dataclass
class _Plan:
    """How to decide one tag selection: which experiences come from the memo, which are chosen per request."""

    slots: tuple[tuple[str, int, Choose], ...]  # (shortUid, index in memo values or -1, chooser)
    memoized: tuple[Choose, ...]
    key: Any  # Callable[[VisitorContext], tuple] | None
    memo: dict[Any, tuple[CompiledVariant | None, ...]] = field(default_factory=dict)


class Decider:
    """Decides contexts under one snapshot; `decide(ctx, tags)` returns what `snapshot.decide(ctx, tags)` would."""

    def __init__(
        self, snapshot: CompiledSnapshot, *, memo: bool = True, memo_limit: int = MEMO_LIMIT, shared_key: Any = None
    ) -> None:
        """`shared_key`: a key function over a superset of the rules (e.g. the coverage's, over every rule of the
        project) used instead of each tag selection's own, so that the caller computes one key per request and
        passes it to `decide`."""
        self.snapshot = snapshot
        self.shared_key = shared_key if memo else None
        self._use_memo = memo
        self._memo_limit = memo_limit
        self._plans: dict[tuple[str, ...] | None, _Plan] = {}
        self.hits = 0
        self.misses = 0

    def _plan(self, tags: tuple[str, ...] | None) -> _Plan:
        selected = list(self.snapshot.select(tags))
        memoized = [ce for ce in selected if not uid_dependent(ce)]
        if not self._use_memo or not memoized:
            key = None
        elif self.shared_key is not None:
            key = self.shared_key
        else:
            key = segment_key_function(self.snapshot, memoized)
        if key is None:
            memoized = []
        slots: list[tuple[str, int, Choose]] = []
        for ce in selected:
            index = next((i for i, m in enumerate(memoized) if m is ce), -1)
            slots.append((ce.short_uid, index, ce.choose))
        plan = _Plan(tuple(slots), tuple(ce.choose for ce in memoized), key)
        self._plans[tags] = plan
        return plan

    def decide(self, ctx: VisitorContext, tags: tuple[str, ...] | None, key: Any = None) -> Manifest:
        """`key`: the value of `shared_key(ctx)` when the caller computed it already."""
        plan = self._plans.get(tags)
        if plan is None:
            plan = self._plan(tags)
        if plan.key is None:
            return self.snapshot.decide(ctx, tags)
        if key is None or plan.key is not self.shared_key:
            key = plan.key(ctx)
        memo = plan.memo
        values = memo.get(key)
        if values is None:
            self.misses += 1
            values = tuple([choose(ctx) for choose in plan.memoized])
            if len(memo) >= self._memo_limit:
                memo.clear()
            memo[key] = values
        else:
            self.hits += 1
        return Manifest(
            ctx.user_uid,
            tuple([(su, values[index]) if index >= 0 else (su, choose(ctx)) for su, index, choose in plan.slots]),
        )
