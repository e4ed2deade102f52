"""Decisions memoised on exactly what the rules read: `MemoDecider(snapshot).decide(ctx, tags)` returns what
`snapshot.decide(ctx, tags)` returns, without evaluating every rule for every request.

Only the bucket of a running A/B test depends on the visitor's uid (docs/contract.md §4.6); everything else a decision
depends on — segment choices, A/B targeting, paused experiences — is a pure function of a handful of visitor
features: the attributes the rules read. Visitors repeat those features (a few countries, device classes,
campaigns, time windows), so the uid-independent part is memoised under a key made of exactly those features,
and only the bucket is computed per request. The key is sound by construction:

- geo, device/OS class, referrer, custom attribute values (typed: `1`, `1.0` and `true` are different keys):
  the values the rules read, as the engine computes them;
- query string: the raw query (what every QUERY_PARAMETERS condition, JSON_MATCH included, is computed from);
- Lytics: the raw `__lytics_audiences` live attribute and `cs-lytics-audiences`/`cs-lytics-flows` cookies that
  the visitor's sets are parsed from;
- the clock: when DATE_AND_TIME is only used by BEFORE/AFTER/BETWEEN_TIME, the position of `now` among the rules'
  time thresholds (`bisect_left`, `bisect_right`) decides every such comparison, so that pair is the key;
  any other time condition puts `now` itself in the key (no reuse, still exact);
- a rule on anything not listed here (a future preset) turns the memo off for that selection.

The memo is per snapshot (a new snapshot starts empty) and bounded: cleared when it reaches `limit` keys.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeproxy.engine.bucketing import bucket, pick
from edgeproxy.engine.context import (
    LYTICS_AUDIENCES_ATTRIBUTE,
    LYTICS_AUDIENCES_COOKIE,
    LYTICS_FLOWS_COOKIE,
    VisitorContext,
)
from edgeproxy.engine.decide import CompiledExperience, CompiledSnapshot, CompiledVariant, Manifest
from edgeproxy.engine.loader import iter_rules, parse_iso_time
from edgeproxy.engine.model import TIME_CONDITIONS, AudienceCondition, Rule, RuleGroup

MEMO_LIMIT = 50_000  # keys per tag selection; cleared when full, so memory stays bounded

KeyFunction = Callable[[VisitorContext], tuple[Any, ...]]


# -- what a condition reads -------------------------------------------------------------------------------------


def condition_groups(condition: AudienceCondition | None, snapshot: CompiledSnapshot) -> Iterable[RuleGroup]:
    """The rule groups an audience condition evaluates: its own target, or its audiences' definitions."""
    if condition is None:
        return
    if condition.target is not None:
        yield condition.target
        return
    audiences = {a.uid: a for a in snapshot.project.audiences}
    for uid in condition.audiences + condition.lytics_audiences:
        definition = audiences[uid].definition
        if definition is not None:
            yield definition


def reads_lytics_membership(condition: AudienceCondition | None, snapshot: CompiledSnapshot) -> bool:
    """Whether the condition names a Lytics audience (membership read from the visitor's Lytics set)."""
    if condition is None or condition.target is not None:
        return False
    audiences = {a.uid: a for a in snapshot.project.audiences}
    return any(audiences[uid].lytics_slug is not None for uid in condition.audiences + condition.lytics_audiences)


def _time_threshold(text: Any) -> float:
    return parse_iso_time(str(text)).timestamp()


def time_thresholds(time_rules: Sequence[Rule]) -> list[float] | None:
    """The sorted thresholds of DATE_AND_TIME rules when every one is BEFORE/AFTER/BETWEEN_TIME: then the position
    of `now` among them (`bisect_left`, `bisect_right`) decides each of those rules. None otherwise."""
    if not all(r.condition in TIME_CONDITIONS for r in time_rules):
        return None
    thresholds: set[float] = set()
    for r in time_rules:
        operands = r.operand if isinstance(r.operand, tuple) else (r.operand,)
        thresholds.update(_time_threshold(item) for item in operands)
    return sorted(thresholds)


def typed_value(value: Any) -> Any:
    """A key part for a custom attribute value: strings and None as they are; anything else typed and exact, so
    `1`, `1.0`, `true` and `-0.0`/`0.0` never share a key (the rules may tell them apart), and dicts/lists are
    hashable."""
    if value is None or value.__class__ is str:
        return value
    return (value.__class__.__name__, repr(value))


def experience_conditions(ce: CompiledExperience) -> list[AudienceCondition]:
    """Every audience condition the experience's decision can evaluate: its targeting and its variants'."""
    if ce.experience.status == "PAUSED":
        return []  # decided without reading anything (docs/contract.md §4.4)
    conditions = [v.condition for v in ce.experience.variants if v.condition is not None]
    if ce.experience.targeting is not None:
        conditions.append(ce.experience.targeting)
    return conditions


def key_function_for(snapshot: CompiledSnapshot, experiences: Sequence[CompiledExperience]) -> KeyFunction | None:
    """A function ctx -> hashable key covering everything these experiences' rules read; None when a rule reads
    something `feature_key_function` does not know (then nothing is memoized)."""
    rules: list[Rule] = []
    lytics_membership = False
    for ce in experiences:
        for condition in experience_conditions(ce):
            rules.extend(rule for group in condition_groups(condition, snapshot) for rule in iter_rules(group))
            lytics_membership = lytics_membership or reads_lytics_membership(condition, snapshot)
    return feature_key_function(rules, lytics_membership=lytics_membership)


def feature_key_function(rules: Sequence[Rule], *, lytics_membership: bool) -> KeyFunction | None:
    """ctx -> a hashable key such that two contexts with equal keys give every one of `rules` (and, with
    `lytics_membership`, every Lytics audience membership) the same result. None for an unknown attribute."""
    parts: list[str] = []
    namespace: dict[str, Any] = {"_bl": bisect_left, "_br": bisect_right, "_typed": typed_value}
    presets = {r.attribute for r in rules if r.attribute_kind == "preset"}
    known = {"COUNTRY", "REGION", "CITY", "DEVICE_TYPE", "OPERATING_SYSTEM", "QUERY_PARAMETERS", "REFERRER",
             "DATE_AND_TIME"}  # fmt: skip
    if presets - known or any(r.attribute_kind not in ("preset", "custom", "lytics") for r in rules):
        return None
    prologue: list[str] = []
    if presets & {"COUNTRY", "REGION", "CITY"}:
        prologue.append("g = ctx.geo()")
        parts += [f"g.{name.lower()}" for name in ("COUNTRY", "REGION", "CITY") if name in presets]
    if presets & {"DEVICE_TYPE", "OPERATING_SYSTEM"}:
        prologue.append("ua = ctx.ua_class()")
        parts.append("ua is None")
        if "DEVICE_TYPE" in presets:
            parts.append("ua.device_type if ua is not None else None")
        if "OPERATING_SYSTEM" in presets:
            parts.append("ua.operating_system if ua is not None else None")
    if "QUERY_PARAMETERS" in presets:
        parts.append("ctx.query_string()")  # the raw query: cheaper than parsing it, and JSON_MATCH reads only it
    if "REFERRER" in presets:
        parts.append("ctx.referrer")
    time_rules = [r for r in rules if r.attribute_kind == "preset" and r.attribute == "DATE_AND_TIME"]
    thresholds = time_thresholds(time_rules)
    if thresholds is not None:
        namespace["_T"] = thresholds
        parts += ["_bl(_T, ctx.now)", "_br(_T, ctx.now)"]
    elif time_rules:
        parts.append("ctx.now")
    for key in sorted({r.attribute for r in rules if r.attribute_kind == "custom"}):
        name = f"k{len(namespace)}"
        namespace[name] = key
        value = f"(L[{name}] if {name} in L else S.get({name}))"
        parts.append(f"(v if (v := {value}) is None or v.__class__ is str else _typed(v))")
    refs = {r.attribute for r in rules if r.attribute_kind == "lytics"}
    # The raw sources of ctx.lytics_audiences() / lytics_flows(), not the parsed sets: cheaper, and as exact.
    if "LYTICS_AUDIENCE" in refs or lytics_membership:
        namespace["_la"] = LYTICS_AUDIENCES_ATTRIBUTE
        namespace["_lc"] = LYTICS_AUDIENCES_COOKIE
        parts.append("_typed(L.get(_la))")
        parts.append("ctx.cookies.get(_lc)")
    if "LYTICS_FLOW_STATE" in refs:
        namespace["_fc"] = LYTICS_FLOWS_COOKIE
        parts.append("ctx.cookies.get(_fc)")
    body = "\n    ".join(["L = ctx.live", "S = ctx.stored", *prologue])
    source = f"def key(ctx):\n    {body}\n    return ({', '.join(parts)}{',' if parts else ''})\n"
    exec(compile(source, "<edgeproxy memo key>", "exec"), namespace)
    function: KeyFunction = namespace["key"]
    return function


def uid_dependent(ce: CompiledExperience) -> bool:
    # docs/contract.md §4.6: only a running A/B test buckets by uid; PAUSED experiences are constant (§4.4).
    return ce.experience.type == "AB_TEST" and ce.experience.status == "ACTIVE"


# -- the decider ------------------------------------------------------------------------------------------------

# A slot: (shortUid, index of its memoized value, the A/B test's (experience uid, cumulative weights, variants)
# when the memoized value is its targeting outcome and the variant is bucketed per request, else None).
_Slot = tuple[str, int, tuple[str, tuple[int, ...], tuple[CompiledVariant, ...]] | None]


@dataclass(slots=True)
class _Plan:
    slots: tuple[_Slot, ...]
    evaluate: tuple[Callable[[VisitorContext], Any], ...]  # the memoized values, in slot order
    key: KeyFunction | None
    memo: dict[Any, tuple[Any, ...]] = field(default_factory=dict)
    # (uid, key) -> the whole manifest: a returning visitor with the same features gets the same decision.
    visitors: dict[tuple[str, Any], Manifest] = field(default_factory=dict)


def _always(ctx: VisitorContext) -> bool:
    return True


class MemoDecider:
    """`decide(ctx, tags)` == `snapshot.decide(ctx, tags)`, memoised per feature key (see the module text)."""

    __slots__ = ("_limit", "_plans", "hits", "misses", "snapshot")

    def __init__(self, snapshot: CompiledSnapshot, *, limit: int = MEMO_LIMIT) -> None:
        """`limit`: keys kept per tag selection before the memo starts over; 0 turns the memo off (every decision
        is `snapshot.decide`, the reference replay's `--no-memo` compares against)."""
        self.snapshot = snapshot
        self._limit = limit
        self._plans: dict[tuple[str, ...] | None, _Plan] = {}
        self.hits = 0
        self.misses = 0

    def _plan(self, tags: tuple[str, ...] | None) -> _Plan:
        selected = list(self.snapshot.select(tags))
        key = key_function_for(self.snapshot, selected) if self._limit > 0 else None
        slots: list[_Slot] = []
        evaluate: list[Callable[[VisitorContext], Any]] = []
        for ce in selected:
            if uid_dependent(ce):
                evaluate.append(ce.targeting or _always)
                slots.append((ce.short_uid, len(evaluate) - 1, (ce.experience.uid, ce.cumulative_weights, ce.variants)))
            else:
                evaluate.append(ce.choose)
                slots.append((ce.short_uid, len(evaluate) - 1, None))
        plan = _Plan(tuple(slots), tuple(evaluate), key)
        if len(self._plans) > 1024:  # tag selections come from routes and SDK calls: few, but bounded anyway
            self._plans.clear()
        self._plans[tags] = plan
        return plan

    def decide(self, ctx: VisitorContext, tags: Iterable[str] | None = None) -> Manifest:
        selection = tuple(tags) if tags is not None else None
        plan = self._plans.get(selection)
        if plan is None:
            plan = self._plan(selection)
        if plan.key is None:
            return self.snapshot.decide(ctx, selection)
        key = plan.key(ctx)
        uid = ctx.user_uid
        known = plan.visitors.get((uid, key))
        if known is not None:
            self.hits += 1
            return known
        memo = plan.memo
        values = memo.get(key)
        if values is None:
            self.misses += 1
            values = tuple([evaluate(ctx) for evaluate in plan.evaluate])
            if len(memo) >= self._limit:
                memo.clear()
            memo[key] = values
        else:
            self.hits += 1
        entries: list[tuple[str, CompiledVariant | None]] = []
        for short_uid, index, ab in plan.slots:
            value = values[index]
            if ab is None:
                entries.append((short_uid, value))
            elif value:
                experience_uid, weights, variants = ab
                chosen = pick(weights, bucket(experience_uid, uid))
                entries.append((short_uid, None if chosen is None else variants[chosen]))
            else:
                entries.append((short_uid, None))
        manifest = Manifest(uid, tuple(entries))
        if len(plan.visitors) >= self._limit:
            plan.visitors.clear()
        plan.visitors[(uid, key)] = manifest
        return manifest
