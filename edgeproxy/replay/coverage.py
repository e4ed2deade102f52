"""Which parts of a rule set the traffic never exercised: audiences never matched, rules never true.

Approach (exact, and cheap on the main path): every rule of the project (each audience's definition and every
inline `target`) is compiled on its own with the engine's rule compiler (`compile_group` of a one-rule group, the
same getters and tests as decisions and `explain`), and so is every audience (the snapshot's own predicates).
A rule or audience is evaluated on each request only *until it is first true*, then retired: what stays pending
after the whole traffic is exactly what never held. Live rules cost nothing after warm-up, and the pending ones
are evaluated once per distinct key of the features *they* read (`edgeproxy.engine.memo.feature_key`, rebuilt
whenever something retires): a request whose features were already seen cannot make a pending rule true.

How often each rule was true is measured on a systematic sample (every Nth request, `--rule-sample N`, default
32), where every rule and audience is evaluated (once per distinct key of the features they all read); those are
the `trueInSample` counts in the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edgeproxy.engine.conditions import compile_group
from edgeproxy.engine.context import VisitorContext
from edgeproxy.engine.decide import CompiledSnapshot
from edgeproxy.engine.memo import feature_key
from edgeproxy.engine.model import AudienceCondition, Rule, RuleGroup, iter_rules

DEFAULT_RULE_SAMPLE = 32
SEEN_LIMIT = 50_000
Predicate = Callable[[VisitorContext], bool]
CoverageTruth = tuple[tuple[int, ...], tuple[int, ...]]


def describe_rule(rule: Rule) -> str:
    attribute = rule.attribute if rule.attribute_kind != "custom" else f"custom:{rule.attribute}"
    operand = "" if rule.operand is None else f" {rule.operand!r}"
    return f"{'NOT ' if rule.invert else ''}{attribute} {rule.condition}{operand}"


@dataclass(frozen=True, slots=True)
class RuleSite:
    rule: Rule
    owner: str  # "audience 'UK shoppers'" or "experience 6 variant 1 target"
    predicate: Predicate


@dataclass(frozen=True, slots=True)
class AudienceSite:
    uid: str
    name: str
    lytics: bool
    used_by: tuple[str, ...]  # live experiences whose variants/targeting name it
    predicate: Predicate


def _condition_audiences(condition: AudienceCondition | None) -> Iterable[str]:
    if condition is not None and condition.target is None:
        yield from condition.audiences
        yield from condition.lytics_audiences


def _targets(snapshot: CompiledSnapshot) -> Iterable[tuple[str, RuleGroup]]:
    for experience in snapshot.project.experiences:
        if experience.targeting is not None and experience.targeting.target is not None:
            yield f"experience {experience.short_uid} targeting", experience.targeting.target
        for variant in experience.variants:
            if variant.condition is not None and variant.condition.target is not None:
                yield f"experience {experience.short_uid} variant {variant.short_uid} target", variant.condition.target


def rule_sites(snapshot: CompiledSnapshot) -> list[RuleSite]:
    """Every rule of the project, each compiled on its own: audience definitions, then inline targets."""
    groups: list[tuple[str, RuleGroup]] = [
        (f"audience {a.name!r}", a.definition) for a in snapshot.project.audiences if a.definition is not None
    ]
    groups.extend(_targets(snapshot))
    return [
        RuleSite(rule, owner, compile_group(RuleGroup("AND", (rule,))))
        for owner, group in groups
        for rule in iter_rules(group)
    ]


class Coverage:
    def __init__(self, snapshot: CompiledSnapshot, sample_every: int = DEFAULT_RULE_SAMPLE) -> None:
        self.snapshot = snapshot
        self.sample_every = max(1, sample_every)
        users: dict[str, list[str]] = {}
        for experience in snapshot.project.experiences:
            conditions = [experience.targeting, *(v.condition for v in experience.variants)]
            for condition in conditions:
                for uid in _condition_audiences(condition):
                    names = users.setdefault(uid, [])
                    if experience.short_uid not in names:
                        names.append(experience.short_uid)
        self.audiences = [
            AudienceSite(a.uid, a.name, a.lytics_slug is not None, tuple(users.get(a.uid, ())),
                         snapshot.audience_predicates[a.uid])
            for a in snapshot.project.audiences
        ]  # fmt: skip
        self.rules = rule_sites(snapshot)
        self._definitions = {a.uid: a.definition for a in snapshot.project.audiences}
        self._slugs = {a.uid: a.lytics_slug for a in snapshot.project.audiences}
        self._seen: set[Any] = set()
        self.pending_rules = list(range(len(self.rules)))
        self.pending_audiences = list(range(len(self.audiences)))
        self._pending_key: Any = None
        self._rekey()
        # The sample's truth, memoised on the key of what every rule and audience reads: equal keys, equal truth.
        slugs = [a.lytics_slug for a in snapshot.project.audiences if a.lytics_slug is not None]
        self._truth_key = feature_key([site.rule for site in self.rules], slugs)
        self._truths: dict[Any, CoverageTruth] = {}
        self.rule_true = [0] * len(self.rules)
        self.audience_true = [0] * len(self.audiences)
        self.rule_ever = [False] * len(self.rules)
        self.audience_ever = [False] * len(self.audiences)
        self.sampled = 0
        self.requests = 0

    def _rekey(self) -> None:
        """The key over what the *pending* rules and audiences read: after warm-up only the dead ones are left,
        they read a few features, and so most requests repeat a key already evaluated."""
        rules = [self.rules[i].rule for i in self.pending_rules]
        slugs: list[str] = []
        for i in self.pending_audiences:
            audience = self.audiences[i]
            definition = self._definitions.get(audience.uid)
            slug = self._slugs.get(audience.uid)
            if slug is not None:
                slugs.append(slug)
            if definition is not None:
                rules.extend(iter_rules(definition))
        self._pending_key = feature_key(rules, slugs)
        self._seen.clear()

    def in_sample(self, number: int) -> bool:
        """Whether request number `number` (1-based, as counted in `requests`) is one of the sample: the 1st,
        then every `sample_every`th."""
        return (number - 1) % self.sample_every == 0

    def observe(self, ctx: VisitorContext) -> None:
        self.requests += 1
        if self.in_sample(self.requests):
            self.add_sample(self.sampled_truth(ctx))
            return
        if not self.pending_rules and not self.pending_audiences:
            return
        if self._pending_key is not None:
            key = self._pending_key(ctx)
            if key in self._seen:
                return  # the same features were evaluated already: nothing pending can be true now
            if len(self._seen) >= SEEN_LIMIT:
                self._seen.clear()
            self._seen.add(key)
        self.retire(ctx)

    def retire(self, ctx: VisitorContext) -> None:
        """Evaluate the pending rules and audiences on one request; those true are pending no more."""
        rules = self.rules
        audiences = self.audiences
        self.mark(
            [i for i in self.pending_rules if rules[i].predicate(ctx)],
            [i for i in self.pending_audiences if audiences[i].predicate(ctx)],
        )

    def mark(self, rules: Iterable[int], audiences: Iterable[int]) -> None:
        """Rules and audiences (indexes into `rules`, `audiences`) true on a request outside the sample."""
        changed = False
        for i in rules:
            changed = changed or not self.rule_ever[i]
            self.rule_ever[i] = True
        for i in audiences:
            changed = changed or not self.audience_ever[i]
            self.audience_ever[i] = True
        if changed:
            self._update_pending()

    def truth(self, ctx: VisitorContext) -> CoverageTruth:
        """(rules true, audiences true) on one request, as indexes into `rules` and `audiences`."""
        return (
            tuple([i for i, site in enumerate(self.rules) if site.predicate(ctx)]),
            tuple([i for i, audience in enumerate(self.audiences) if audience.predicate(ctx)]),
        )

    def sampled_truth(self, ctx: VisitorContext) -> CoverageTruth:
        """`truth(ctx)`, evaluated once per distinct key of the features the rules read."""
        if self._truth_key is None:
            return self.truth(ctx)
        key = self._truth_key(ctx)
        found = self._truths.get(key)
        if found is None:
            if len(self._truths) >= SEEN_LIMIT:
                self._truths.clear()
            found = self._truths[key] = self.truth(ctx)
        return found

    def add_sample(self, truth: CoverageTruth) -> None:
        """Count one sampled request whose truth is `truth` (`truth(ctx)`, or that of a request with its key)."""
        self.sampled += 1
        rules, audiences = truth
        for i in rules:
            self.rule_true[i] += 1
            self.rule_ever[i] = True
        for i in audiences:
            self.audience_true[i] += 1
            self.audience_ever[i] = True
        self._update_pending()

    def _update_pending(self) -> None:
        pending = (len(self.pending_rules), len(self.pending_audiences))
        self.pending_rules = [i for i in self.pending_rules if not self.rule_ever[i]]
        self.pending_audiences = [i for i in self.pending_audiences if not self.audience_ever[i]]
        if pending != (len(self.pending_rules), len(self.pending_audiences)):
            self._rekey()

    # -- results ---------------------------------------------------------------------------------------------------

    def never_matched_audiences(self) -> list[dict[str, Any]]:
        return [
            {"uid": a.uid, "name": a.name, "lytics": a.lytics, "usedBy": list(a.used_by)}
            for i, a in enumerate(self.audiences)
            if not self.audience_ever[i]
        ]

    def dead_rules(self) -> list[dict[str, Any]]:
        return [
            {"rule": describe_rule(site.rule), "where": site.rule.where, "in": site.owner}
            for i, site in enumerate(self.rules)
            if not self.rule_ever[i]
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "sampleEvery": self.sample_every,
            "sampledRequests": self.sampled,
            "audiencesNeverMatched": self.never_matched_audiences(),
            "rulesNeverTrue": self.dead_rules(),
            "audiences": [
                {
                    "uid": a.uid,
                    "name": a.name,
                    "everMatched": self.audience_ever[i],
                    "trueInSample": self.audience_true[i],
                    "usedBy": list(a.used_by),
                }
                for i, a in enumerate(self.audiences)
            ],
            "rules": [
                {
                    "rule": describe_rule(s.rule),
                    "where": s.rule.where,
                    "in": s.owner,
                    "everTrue": self.rule_ever[i],
                    "trueInSample": self.rule_true[i],
                }
                for i, s in enumerate(self.rules)
            ],
        }
