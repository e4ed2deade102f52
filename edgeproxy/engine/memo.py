"""Decisions memoised on exactly what the rules read: `MemoDecider(snapshot).decide(ctx, tags)` returns what
`snapshot.decide(ctx, tags)` returns, without evaluating every rule for every request.

Only the bucket of a running A/B test depends on the visitor's uid (docs/contract.md §4.6); everything else a decision
depends on — segment choices, A/B targeting, paused experiences — is a function of the truth of the rules (and of
Lytics audience memberships). Each rule reads one *feature* of the visitor, and each feature has a value that what
the rule reads is computed from: the geo's sources (`VisitorContext.geo_source`), the User-Agent (device type and
operating system), the page URL (the query string, which every QUERY_PARAMETERS condition, JSON_MATCH included, is
parsed from), the referrer, the clock, one custom attribute (typed: `1`, `1.0` and `true` are different values), the
raw sources of the Lytics audiences or of the Lytics flows. Values are many (every URL, every lifetime value) but what
they make the rules say is few, so each feature maps a value, on first sight, to the id of its *atoms*: the truth of
the feature's rules on it. The ids of a request's features are its key: equal keys mean equal truth of every rule,
and so an equal decision. The uid-independent part of the decision is memoised under the key, and each experience's
part under the ids of the features it reads; per visitor only the A/B buckets are computed.

The clock's value is the position of `now` among the rules' time thresholds (`bisect_left`, `bisect_right`) when
DATE_AND_TIME is only read by BEFORE/AFTER/BETWEEN_TIME, which decides every such comparison; else `now` itself. A
rule on anything not listed (a future preset) turns the memo off for that selection. Everything here belongs to one
`MemoDecider`, which belongs to one snapshot: a new snapshot starts empty, and every table is bounded.

The memo pays only when keys repeat. When visitors' features are many and varied (every visit a new mix of
attribute values, so every key is new) a memo decision costs more than the plain one: the key is read, each new
value's atoms are learnt, and the experiences are evaluated all the same. So each selection's memo counts, over a
window of its decisions, how many it answered without evaluating (`StepAside`); when too few, it steps aside and
the next decisions are the plain engine's (`decide_experiences`, what `CompiledSnapshot.decide` does), without
reading a key or touching a table; then it tries again, stepping aside for twice as long after each window that
does not pay. Counters only: the decision stays a pure function of the snapshot and the context.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any

from edgeproxy.engine.conditions import Predicate, compile_group
from edgeproxy.engine.context import (
    LYTICS_AUDIENCES_ATTRIBUTE,
    LYTICS_AUDIENCES_COOKIE,
    LYTICS_FLOWS_COOKIE,
    VisitorContext,
)
from edgeproxy.engine.decide import (
    CompiledExperience,
    CompiledSnapshot,
    CompiledVariant,
    Manifest,
    decide_experiences,
    variant_param_of,
)
from edgeproxy.engine.model import AudienceCondition, Rule, RuleGroup, iter_rules, time_thresholds

MEMO_LIMIT = 50_000  # entries per table (a feature's values, a selection's keys and visitors); cleared when full
ATOMS_LIMIT = 10_000  # distinct truth tuples of one feature; cleared when full (ids are never reused)
MANIFEST_JSON_LIMIT = 4096  # distinct variant sets whose cookie JSON is kept


@dataclass(frozen=True, slots=True)
class StepAside:
    """When a selection's memo steps aside for the plain engine: after each `window` memo decisions, if fewer than
    `min_hits` of them were answered from the memo (a returning visitor's manifest, or the values of a key seen
    before), the next `bypass` decisions of that selection are plain; each window after that which does not pay
    either doubles the bypass, up to `longest`; a window that pays sets it back to `bypass`. A selection's first
    window is `warmup` decisions long (its rate judged as a window's): an empty memo answers nothing at first.

    The defaults: when nothing repeats a memo miss costs 1.5-3x a plain decision, and a hit 0.2-0.5x (measured with
    benchmarks/peers.py on the example project and the limits project); returning visitors' misses cost less, as
    most of their features' values are known. So the memo steps aside when it answers under a quarter of a window:
    far below that, it can only cost. At the longest bypass the probes are 256 decisions in 65,536 (0.4%)."""

    window: int = 256
    min_hits: int = 64
    bypass: int = 2048
    longest: int = 65_536
    warmup: int = 1024

    def __post_init__(self) -> None:
        if (
            self.window < 1
            or not 0 <= self.min_hits <= self.window
            or not 1 <= self.bypass <= self.longest
            or self.warmup < 1
        ):
            raise ValueError(
                "StepAside needs window >= 1, 0 <= min_hits <= window, 1 <= bypass <= longest and warmup >= 1; "
                f"got {self}"
            )


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


def lytics_slugs(condition: AudienceCondition | None, snapshot: CompiledSnapshot) -> list[str]:
    """The slugs of the Lytics audiences a condition names (membership read from the visitor's Lytics set)."""
    if condition is None or condition.target is not None:
        return []
    audiences = {a.uid: a for a in snapshot.project.audiences}
    found = (audiences[uid].lytics_slug for uid in condition.audiences + condition.lytics_audiences)
    return [slug for slug in found if slug is not None]


def experience_conditions(ce: CompiledExperience) -> list[AudienceCondition]:
    """Every audience condition the experience's decision can evaluate: its targeting and its variants'."""
    if ce.paused:
        return []  # decided without reading anything (docs/contract.md §4.4)
    conditions = [v.condition for v in ce.experience.variants if v.condition is not None]
    if ce.experience.targeting is not None:
        conditions.append(ce.experience.targeting)
    return conditions


def typed_value(value: Any) -> Any:
    """A key part for a custom attribute value: strings, ints and None as they are; anything else typed and
    exact, so `1`, `1.0`, `true` and `-0.0`/`0.0` never share a key (the rules may tell them apart), and
    dicts/lists are hashable: a bool as (bool, value), anything else by its repr. (An int keys as itself: no other
    key equals it, as every bool and float is a tuple; that saves a tuple per request for a count.)"""
    cls = value.__class__
    if cls is str or cls is int or value is None:
        return value
    if cls is bool:
        return cls, value
    return cls, repr(value)


# -- features ---------------------------------------------------------------------------------------------------


# Presets by the feature they read. A feature's value is what the preset is computed from, which is cheaper to read
# than the preset: the geo's sources (one lookup gives the three fields), the User-Agent (one classification gives
# device and OS), the page URL (the query string is parsed from it), the referrer. DATE_AND_TIME is the clock.
_PRESET_FEATURES = {
    "COUNTRY": "geo",
    "REGION": "geo",
    "CITY": "geo",
    "DEVICE_TYPE": "user agent",
    "OPERATING_SYSTEM": "user agent",
    "QUERY_PARAMETERS": "query",
    "REFERRER": "referrer",
}
# The features read off the context, in key order (`FeatureKey.names`).
_CONTEXT_FEATURES = ("geo", "user agent", "query", "referrer", "LYTICS_AUDIENCE", "LYTICS_FLOW_STATE")


class Feature:
    """One thing rules read, and the rules (as predicates) that read it. `ids` maps a value of the feature to the
    id of its atoms, the truth of those predicates on it."""

    __slots__ = ("atoms", "ids", "next_id", "predicates")

    def __init__(self, predicates: Sequence[Predicate]) -> None:
        self.predicates = tuple(predicates)
        self.ids: dict[Any, int] = {}
        self.atoms: dict[tuple[bool, ...], int] = {}
        self.next_id = 1  # never 0, so that `all(ids)` says whether every value was known

    def learn(self, value: Any, ctx: VisitorContext) -> int:
        """The id of `value`, whose atoms are evaluated on `ctx` (a context with that value)."""
        truth = tuple([predicate(ctx) for predicate in self.predicates])
        found = self.atoms.get(truth)
        if found is None:
            if len(self.atoms) >= ATOMS_LIMIT:
                self.atoms.clear()  # a truth seen again gets a new id; an old id never means something else
            found = self.atoms[truth] = self.next_id
            self.next_id += 1
        if len(self.ids) >= MEMO_LIMIT:
            self.ids.clear()
        self.ids[value] = found
        return found


class FeatureKey:
    """ctx -> a key such that two contexts with equal keys give each of the rules it was made for (and each Lytics
    audience membership) the same truth: the id of each feature's value. Features in key order (`names`): those
    read off the context, the clock, the custom attributes. `key` is the function (`_key_source`)."""

    __slots__ = ("features", "key", "names")

    def __init__(self, features: dict[Any, Feature], thresholds: list[float] | None) -> None:
        custom = sorted(name for name in features if isinstance(name, tuple))
        read: list[Any] = [name for name in (*_CONTEXT_FEATURES, "DATE_AND_TIME") if name in features]
        self.names = tuple(read + custom)
        self.features = tuple([features[name] for name in self.names])
        namespace: dict[str, Any] = {"_typed": typed_value, "_bl": bisect_left, "_br": bisect_right}
        source = _key_source(self.names, self.features, thresholds, namespace)
        # The one `exec` of this module, argued as conditions.py's: the key runs for every request, and a straight
        # line of reads and dict lookups costs a fraction of a loop over readers. Only identifiers made here
        # appear in the source; every value (tables, features, attribute names, thresholds) is bound in the
        # namespace, never spliced into the code.
        exec(compile(source, "<edgeproxy feature key>", "exec"), namespace)
        self.key: Callable[[VisitorContext], tuple[int, ...]] = namespace["key"]

    def __call__(self, ctx: VisitorContext) -> tuple[int, ...]:
        return self.key(ctx)


# The expression of each feature's value read off a context (`VisitorContext`). The Lytics audiences' value is the
# raw sources of `ctx.lytics_audiences()`: as exact as the set parsed from them, and cheaper.
_VALUE_SOURCES = {
    "geo": "ctx.geo_source()",
    "user agent": "ctx.user_agent",
    "query": "ctx.page_url",
    "referrer": "ctx.referrer",
    "LYTICS_AUDIENCE": "((_typed(L.get(_la)) if L else None), ctx.cookies.get(_lc))",
    "LYTICS_FLOW_STATE": "ctx.cookies.get(_fc)",
}


def _key_source(
    names: Sequence[Any], features: Sequence[Feature], thresholds: list[float] | None, namespace: dict[str, Any]
) -> str:
    """The source of `key(ctx)`: per feature, its value, then its id from the feature's table (`Feature.ids`), or
    on first sight `Feature.learn` (ids are never 0, so `or` falls through only for an unknown value)."""
    namespace.update(_la=LYTICS_AUDIENCES_ATTRIBUTE, _lc=LYTICS_AUDIENCES_COOKIE, _fc=LYTICS_FLOWS_COOKIE)
    lines = ["def key(ctx):", "    L = ctx.live", "    S = ctx.stored"]
    for n, (name, feature) in enumerate(zip(names, features, strict=True)):
        namespace[f"t{n}"], namespace[f"f{n}"] = feature.ids, feature
        if isinstance(name, tuple):  # ("custom", key): VisitorContext.custom, typed unless a string, int or None
            namespace[f"k{n}"] = name[1]
            found = f"(L[k{n}] if k{n} in L else S.get(k{n}))"
            value = f"(v if (v := {found}) is None or (c := v.__class__) is str or c is int else _typed(v))"
        elif name != "DATE_AND_TIME":
            value = _VALUE_SOURCES[name]
        elif thresholds is None:
            value = "ctx.now"
        else:  # the position of `now` among the thresholds, as one number
            namespace["_T"], namespace["_W"] = thresholds, len(thresholds) + 1
            value = "_bl(_T, ctx.now) * _W + _br(_T, ctx.now)"
        lines += [f"    v{n} = {value}", f"    i{n} = t{n}.get(v{n}) or f{n}.learn(v{n}, ctx)"]
    ids = ", ".join(f"i{n}" for n in range(len(names)))
    lines.append(f"    return ({ids}{',' if names else ''})")
    return "\n".join(lines) + "\n"


def _rule_predicate(rule: Rule) -> Predicate:
    return compile_group(RuleGroup("AND", (rule,)))  # the rule compiled on its own, as in its group


def feature_name(rule: Rule) -> Any:
    """The feature a rule reads (None: one this module does not know)."""
    if rule.attribute_kind == "custom":
        return ("custom", rule.attribute)
    if rule.attribute_kind == "lytics":
        return rule.attribute  # LYTICS_AUDIENCE or LYTICS_FLOW_STATE
    if rule.attribute_kind == "preset":
        return "DATE_AND_TIME" if rule.attribute == "DATE_AND_TIME" else _PRESET_FEATURES.get(rule.attribute)
    return None


def feature_key(rules: Iterable[Rule], slugs: Iterable[str] = ()) -> FeatureKey | None:
    """A key over what `rules` and the Lytics audiences of `slugs` read; None when a rule reads something this
    module does not know (then nothing can be memoised)."""
    by_feature: dict[Any, dict[Any, Predicate]] = {}
    time_rules: list[Rule] = []
    for rule in rules:
        name = feature_name(rule)
        if name is None:
            return None
        if name == "DATE_AND_TIME":
            time_rules.append(rule)
        same = replace(rule, where="")  # the same rule in two audiences is one atom
        predicates = by_feature.setdefault(name, {})
        if same not in predicates:
            predicates[same] = _rule_predicate(rule)
    for slug in dict.fromkeys(slugs):
        by_feature.setdefault("LYTICS_AUDIENCE", {})[("member of", slug)] = _member_of(slug)
    features = {name: Feature(list(predicates.values())) for name, predicates in by_feature.items()}
    return FeatureKey(features, time_thresholds(time_rules))


def _member_of(slug: str) -> Predicate:
    return lambda ctx: slug in ctx.lytics_audiences()


def experience_reads(snapshot: CompiledSnapshot, ce: CompiledExperience) -> tuple[list[Rule], list[str]]:
    """The rules an experience's decision can evaluate, and the slugs of the Lytics audiences it names."""
    rules: list[Rule] = []
    slugs: list[str] = []
    for condition in experience_conditions(ce):
        rules.extend(rule for group in condition_groups(condition, snapshot) for rule in iter_rules(group))
        slugs.extend(lytics_slugs(condition, snapshot))
    return rules, slugs


def feature_key_for(snapshot: CompiledSnapshot, experiences: Iterable[CompiledExperience]) -> FeatureKey | None:
    """A key over everything the decisions of `experiences` read (None: something this module does not know)."""
    rules: list[Rule] = []
    slugs: list[str] = []
    for ce in experiences:
        more_rules, more_slugs = experience_reads(snapshot, ce)
        rules += more_rules
        slugs += more_slugs
    return feature_key(rules, slugs)


# -- the decider ------------------------------------------------------------------------------------------------


class _Unit:
    """One experience's uid-independent part (`choose(ctx)`, or for a running A/B test `targeted(ctx)`), memoised
    on the ids of only the features it reads: a new key is mostly made of parts already seen."""

    __slots__ = ("evaluate", "memo", "sub_key")

    def __init__(self, ce: CompiledExperience, indexes: Sequence[int]) -> None:
        self.evaluate: Callable[[VisitorContext], Any] = ce.targeted if ce.uid_dependent else ce.choose
        self.sub_key: Callable[[tuple[int, ...]], Any] = itemgetter(*indexes) if indexes else _no_features
        self.memo: dict[Any, Any] = {}


def _no_features(key: tuple[int, ...]) -> tuple[()]:
    return ()


_MISSING = object()
Entries = tuple[tuple[str, CompiledVariant | None], ...]


@dataclass(slots=True)
class _Plan:
    """One tag selection: its experiences, its key, what is memoised under it, and whether that pays."""

    experiences: tuple[CompiledExperience, ...]  # the selection, in priority order
    units: tuple[_Unit, ...]  # per experience
    # Per experience: its short uid, and for a running A/B test its position among `bucketed` (else -1).
    slots: tuple[tuple[str, int], ...]
    bucketed: tuple[CompiledExperience, ...]  # the running A/B tests: their variant depends on the uid
    key: Callable[[VisitorContext], tuple[int, ...]] | None  # `FeatureKey.key`
    # key -> per experience, its unit's value
    memo: dict[tuple[int, ...], tuple[Any, ...]] = field(default_factory=dict)
    # uid -> `bucketed(uid)` of each running A/B test: a visitor comes back, and hashing is the costly part.
    arms: dict[str, tuple[CompiledVariant | None, ...]] = field(default_factory=dict)
    # (memoised values, arms) -> the manifest entries they make, and their variant param
    entries: dict[tuple[tuple[Any, ...], tuple[CompiledVariant | None, ...]], tuple[Entries, str]] = field(
        default_factory=dict
    )
    # (uid, key) -> the whole manifest: a returning visitor with the same features gets the same object again.
    visitors: dict[tuple[str, tuple[int, ...]], Manifest] = field(default_factory=dict)
    # Whether the memo pays (`StepAside`): memo decisions left in the current window, and how many of the window's
    # were answered from the memo; plain decisions left before the memo is tried again, and the next such bypass.
    window_left: int = 0
    window_size: int = 0
    window_hits: int = 0
    bypass_left: int = 0
    next_bypass: int = 0


class MemoDecider:
    """`decide(ctx, tags)` == `snapshot.decide(ctx, tags)`, memoised per feature key (see the module text). One
    per snapshot: the memos are this object's, and go with it."""

    __slots__ = ("_limit", "_manifest_json", "_plans", "_step_aside", "bypassed", "hits", "misses", "snapshot")

    def __init__(
        self, snapshot: CompiledSnapshot, *, limit: int = MEMO_LIMIT, step_aside: StepAside | None = StepAside()
    ) -> None:
        """`limit`: entries kept per table before it starts over; 0 turns the memo off (every decision is
        `snapshot.decide`, the reference replay's `--no-memo` compares against). `step_aside`: when the memo
        gives way to the plain engine because it does not pay; None: never (every decision through the memo)."""
        self.snapshot = snapshot
        self._limit = limit
        self._step_aside = step_aside
        self._plans: dict[tuple[str, ...] | None, _Plan] = {}
        self._manifest_json: dict[Entries, str] = {}
        self.hits = 0  # decisions answered from the memo
        self.misses = 0  # decisions the memo evaluated
        self.bypassed = 0  # decisions made plain while the memo stepped aside

    def _plan(self, tags: tuple[str, ...] | None) -> _Plan:
        selected = tuple(self.snapshot.select(tags))
        bucketed = tuple([ce for ce in selected if ce.uid_dependent])
        slots = tuple([(ce.short_uid, bucketed.index(ce) if ce.uid_dependent else -1) for ce in selected])
        key = feature_key_for(self.snapshot, selected) if self._limit > 0 else None
        units = []
        for ce in selected:
            indexes: list[int] = []
            if key is not None:
                rules, slugs = experience_reads(self.snapshot, ce)
                names = {feature_name(rule) for rule in rules} | ({"LYTICS_AUDIENCE"} if slugs else set())
                indexes = [n for n, name in enumerate(key.names) if name in names]
            units.append(_Unit(ce, indexes))
        plan = _Plan(selected, tuple(units), slots, bucketed, key.key if key is not None else None)
        policy = self._step_aside
        plan.window_left = plan.window_size = MEMO_LIMIT if policy is None else policy.warmup
        plan.next_bypass = 0 if policy is None else policy.bypass
        if len(self._plans) > 1024:  # tag selections come from routes and SDK calls: few, but bounded anyway
            self._plans.clear()
        self._plans[tags] = plan
        return plan

    def decide(self, ctx: VisitorContext, tags: Iterable[str] | None = None) -> Manifest:
        selection = tuple(tags) if tags is not None else None
        plan = self._plans.get(selection)
        if plan is None:
            plan = self._plan(selection)
        key_of = plan.key
        if key_of is None:
            return self.snapshot.decide(ctx, selection)
        if not plan.window_left:
            self._judge_window(plan)
        if plan.bypass_left:  # the memo does not pay here now (`StepAside`): the plain decision
            plan.bypass_left -= 1
            self.bypassed += 1
            return decide_experiences(ctx, plan.experiences)
        plan.window_left -= 1
        try:
            key = key_of(ctx)
        except Exception:  # a rule the decision itself might not reach failed: decide as the snapshot does
            return self.snapshot.decide(ctx, selection)
        uid = ctx.user_uid
        known = plan.visitors.get((uid, key))
        if known is not None:
            self.hits += 1
            plan.window_hits += 1
            return known
        limit = self._limit
        values = plan.memo.get(key)
        if values is None:
            self.misses += 1
            found = []
            for unit in plan.units:
                sub_key = unit.sub_key(key)
                value = unit.memo.get(sub_key, _MISSING)
                if value is _MISSING:
                    value = unit.evaluate(ctx)
                    if len(unit.memo) >= limit:
                        unit.memo.clear()
                    unit.memo[sub_key] = value
                found.append(value)
            values = tuple(found)
            if len(plan.memo) >= limit:
                plan.memo.clear()
            plan.memo[key] = values
        else:
            self.hits += 1
            plan.window_hits += 1
        arms = plan.arms.get(uid)
        if arms is None:
            arms = tuple([ce.bucketed(uid) for ce in plan.bucketed])
            if len(plan.arms) >= limit:
                plan.arms.clear()
            plan.arms[uid] = arms
        made = plan.entries.get((values, arms))
        if made is None:  # few distinct variant sets: each is built once, and shared by the manifests
            entries = tuple(
                [
                    (short_uid, value if arm < 0 else arms[arm] if value else None)
                    for (short_uid, arm), value in zip(plan.slots, values, strict=True)
                ]
            )
            made = (entries, variant_param_of(entries))
            if len(plan.entries) >= limit:
                plan.entries.clear()
            plan.entries[(values, arms)] = made
        manifest = Manifest(uid, *made)
        if len(plan.visitors) >= limit:
            plan.visitors.clear()
        plan.visitors[(uid, key)] = manifest
        return manifest

    def _judge_window(self, plan: _Plan) -> None:
        """At the end of a window of memo decisions: step aside (`StepAside`) or go on with the memo."""
        policy = self._step_aside
        hits, size = plan.window_hits, plan.window_size
        plan.window_hits = 0
        if policy is None:  # never steps aside; windows only count
            plan.window_left = MEMO_LIMIT
            return
        plan.window_left = plan.window_size = policy.window
        if hits * policy.window >= policy.min_hits * size:  # the rate of `min_hits` in a window, or better
            plan.next_bypass = policy.bypass
        else:  # the window did not pay: plain decisions for a while, longer each time in a row
            plan.bypass_left = plan.next_bypass
            plan.next_bypass = min(plan.next_bypass * 2, policy.longest)

    def manifest_json(self, manifest: Manifest) -> str:
        """`manifest.cookie_json()`, memoised per variant set: a snapshot has few, and encoding costs more than
        finding one."""
        found = self._manifest_json.get(manifest.entries)
        if found is None:
            if len(self._manifest_json) >= MANIFEST_JSON_LIMIT:
                self._manifest_json.clear()
            found = self._manifest_json[manifest.entries] = manifest.cookie_json()
        return found
