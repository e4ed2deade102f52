"""Compile a project into a snapshot and decide a visitor's manifest (docs/contract.md §4)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from edgeproxy.engine.bucketing import bucket, cumulative, pick
from edgeproxy.engine.conditions import Predicate, combine, compile_group
from edgeproxy.engine.context import VisitorContext
from edgeproxy.engine.model import (
    Audience,
    AudienceCondition,
    Experience,
    Project,
    RuleGroup,
    iter_rules,
    time_thresholds,
)

# Forcing is defined with the model, so that context.py can build one without an import cycle; it is part of the
# decision's API, re-exported here.
from edgeproxy.engine.model import Forcing as Forcing
from edgeproxy.engine.useragent import UserAgentClassifier

# The uid of a visitor who has not consented (SPEC §11): never a valid uid (1-256 characters), in no A/B test.
ANONYMOUS_UID = ""


def variant_alias(experience_short_uid: str, variant_short_uid: str) -> str:
    return f"cs_personalize_{experience_short_uid}_{variant_short_uid}"  # docs/contract.md §2


@dataclass(frozen=True, slots=True, eq=False)
class CompiledVariant:
    """One per variant of a compiled snapshot, compared and hashed by identity: a manifest's entries are keys of
    per-decision dicts (live counts, the manifest JSON memo), and identity hashing is done in C, without a call
    into Python per variant. Across snapshots, compare `param` (or `short_uid`)."""

    short_uid: str
    alias: str
    param: str  # "{exp}_{var}"


class DecisionTrace(Protocol):
    """What `CompiledExperience.choose` reports while it decides, when asked to: explain.py builds its explanation
    from it, so the variants and results an explanation reports are the decision's own."""

    def paused(self) -> None: ...

    def segment(self, index: int, holds: bool) -> None:
        """The condition of `experience.variants[index]` was evaluated (variants with no condition never are)."""

    def targeting(self, holds: bool) -> None: ...

    def bucketing(self, bucket: int, index: int | None) -> None:
        """The A/B bucket and the index of the variant it falls in (None: past the total weight)."""


@dataclass(frozen=True, slots=True)
class CompiledExperience:
    experience: Experience
    short_uid: str
    tags: frozenset[str]  # casefolded
    variants: tuple[CompiledVariant, ...]
    paused: bool
    segmented: bool  # a live SEGMENTED experience (not paused)
    # SEGMENTED: (index in `experience.variants`, condition, variant) for each variant with a condition, in order.
    segments: tuple[tuple[int, Predicate, CompiledVariant], ...] = ()
    # AB_TEST: `targeting` None: everyone is in the test.
    targeting: Predicate | None = None
    cumulative_weights: tuple[int, ...] = ()

    @property
    def uid_dependent(self) -> bool:
        """Whether the choice depends on the visitor's uid: only a running A/B test buckets by uid (§4.6)."""
        return not self.paused and self.experience.type == "AB_TEST"

    def choose(self, ctx: VisitorContext, trace: DecisionTrace | None = None) -> CompiledVariant | None:
        """This experience's variant for the visitor (docs/contract.md §4.4-4.6)."""
        if self.segmented:
            # §4.5: the first variant in array order whose condition holds; one with no condition never does. A
            # trace is told of every variant's condition, not only up to the first that holds.
            chosen = None
            for index, holds, variant in self.segments:
                held = holds(ctx)
                if trace is None:
                    if held:
                        return variant
                else:
                    trace.segment(index, held)
                    if held and chosen is None:
                        chosen = variant
            return chosen
        if self.paused:  # §4.4: a paused experience serves nothing
            if trace is not None:
                trace.paused()
            return None
        if self.targeting is not None and not self.targeted(ctx, trace):
            return None
        return self.bucketed(ctx.user_uid, trace)

    def targeted(self, ctx: VisitorContext, trace: DecisionTrace | None = None) -> bool:
        """§4.6: whether the visitor is inside the A/B test's targeting (outside it, no variant)."""
        targeting = self.targeting
        if targeting is None:
            return True
        held = targeting(ctx)
        if trace is not None:
            trace.targeting(held)
        return held

    def forced(self, forced: Mapping[str, str | None]) -> tuple[bool, CompiledVariant | None]:
        """What a preview (SPEC §10) forces this experience to: (True, the named variant, or None when the preview
        excludes it), or (False, None) when it forces nothing here: not named, or named with a variant shortUid
        this version does not have (then the experience decides normally)."""
        if self.short_uid not in forced:
            return False, None
        wanted = forced[self.short_uid]
        if wanted is None:
            return True, None
        for variant in self.variants:
            if variant.short_uid == wanted:
                return True, variant
        return False, None

    def bucketed(self, user_uid: str, trace: DecisionTrace | None = None) -> CompiledVariant | None:
        """§4.6: the variant whose cumulative weight range holds the uid's hash v1 bucket; None past the total.
        An anonymous visitor (`ANONYMOUS_UID`: consent mode without consent, SPEC §11) is in no A/B test."""
        if not user_uid:
            return None
        value = bucket(self.experience.uid, user_uid)
        index = pick(self.cumulative_weights, value)
        if trace is not None:
            trace.bucketing(value, index)
        return None if index is None else self.variants[index]


def variant_param_of(entries: tuple[tuple[str, CompiledVariant | None], ...]) -> str:
    return ",".join([v.param for _, v in entries if v is not None])


@dataclass(frozen=True, slots=True)
class Manifest:
    """A decision: one entry per experience in priority order, the variant or None."""

    user_uid: str
    entries: tuple[tuple[str, CompiledVariant | None], ...]
    variant_param: str  # docs/contract.md §7: the active variants' params in priority order (`variant_param_of`)

    @classmethod
    def of(cls, user_uid: str, entries: tuple[tuple[str, CompiledVariant | None], ...]) -> Manifest:
        return cls(user_uid, entries, variant_param_of(entries))

    @property
    def experiences(self) -> list[dict[str, str | None]]:
        return [
            {"shortUid": short_uid, "activeVariantShortUid": None if v is None else v.short_uid}
            for short_uid, v in self.entries
        ]

    @property
    def active_variants(self) -> dict[str, str | None]:
        return {short_uid: None if v is None else v.short_uid for short_uid, v in self.entries}

    @property
    def aliases(self) -> list[str]:
        return [v.alias for _, v in self.entries if v is not None]

    def edge_body(self) -> dict[str, Any]:
        """The Edge API manifest body (docs/contract.md §4.7)."""
        return {"experiences": self.experiences, "activeVariants": self.active_variants}

    def to_dict(self) -> dict[str, Any]:
        """What `edgeproxy decide` prints per request (docs/contract.md §9)."""
        return {
            "userUid": self.user_uid,
            "experiences": self.experiences,
            "activeVariants": self.active_variants,
            "aliases": self.aliases,
            "variantParam": self.variant_param,
        }

    def cookie_json(self) -> str:
        return json.dumps(self.edge_body(), separators=(",", ":"))


def decide_experiences(ctx: VisitorContext, experiences: Iterable[CompiledExperience]) -> Manifest:
    """The decision over a selection of experiences, in priority order: each one's variant, or None. The one
    decision of a visitor: `CompiledSnapshot.decide`, and the memo when it steps aside (engine/memo.py)."""
    return Manifest.of(ctx.user_uid, tuple([(ce.short_uid, ce.choose(ctx)) for ce in experiences]))


@dataclass(frozen=True, slots=True)
class CompiledSnapshot:
    """An immutable, ready-to-decide project. Swap the whole object to change rules."""

    project: Project
    version: str
    experiences: tuple[CompiledExperience, ...]
    audience_predicates: dict[str, Predicate]
    classifier: UserAgentClassifier = field(compare=False)
    # Whether any live experience can read a custom attribute: if not, no store lookup is needed.
    reads_custom_attributes: bool = True
    # The custom attribute keys any rule of the project reads (its audiences', its experiences' own targets), so
    # that computed attributes nobody reads need not be computed (behaviour, SPEC §13); None: not known, any key.
    custom_keys_read: frozenset[str] | None = field(default=None, compare=False)
    # Where the clock can change a decision: the thresholds of every DATE_AND_TIME rule the project names (sorted;
    # between two of them no rule on the time changes its truth), or None when a time rule compares otherwise.
    time_thresholds: tuple[float, ...] | None = field(default=(), compare=False)
    # The project as `--draft` previews decide it (`Project.drafts`), compiled with it; None when there are no drafts.
    draft: CompiledSnapshot | None = field(default=None, compare=False)

    def select(self, tags: Iterable[str] | None) -> Sequence[CompiledExperience]:
        """docs/contract.md §4.2: keep experiences with at least one tag equal, case-insensitively."""
        if tags is None:
            return self.experiences
        wanted = {tag.casefold() for tag in tags}
        if not wanted:
            return self.experiences
        return [ce for ce in self.experiences if not ce.tags.isdisjoint(wanted)]

    def decide(self, ctx: VisitorContext, tags: Iterable[str] | None = None) -> Manifest:
        return decide_experiences(ctx, self.select(tags))

    def preview_snapshot(self, forcing: Forcing) -> CompiledSnapshot:
        """The snapshot a preview decides on: the drafts' when it asks for them and there are any."""
        return self.draft if forcing.draft and self.draft is not None else self

    def decide_forced(self, ctx: VisitorContext, tags: Iterable[str] | None, forcing: Forcing) -> Manifest:
        """A preview's decision (SPEC §10): as `decide`, on the DRAFT versions when `forcing.draft`, with each forced
        experience of the selection given its forced variant or excluded. `ctx.now` is the preview's time already.
        Kept apart from `decide` so that the visitors' path pays nothing for previews."""
        forced = dict(forcing.forced)
        entries = []
        for ce in self.preview_snapshot(forcing).select(tags):
            is_forced, variant = ce.forced(forced)
            entries.append((ce.short_uid, variant if is_forced else ce.choose(ctx)))
        return Manifest.of(ctx.user_uid, tuple(entries))


def _audience_predicate(audience: Audience) -> Predicate:
    if audience.lytics_slug is not None:
        slug = audience.lytics_slug
        return lambda ctx: slug in ctx.lytics_audiences()
    assert audience.definition is not None
    inner = compile_group(audience.definition)

    def member(ctx: VisitorContext) -> bool:
        # Layered experiences often test the same audience several times in one decision: the result is kept for
        # the request, keyed by this function (one snapshot's audience), so a context decided under two snapshots
        # never mixes them up and nothing needs clearing.
        memberships = ctx.memberships
        found = memberships.get(member)
        if found is None:
            found = memberships[member] = inner(ctx)
        return found

    return member


def compile_audience_condition(condition: AudienceCondition, audiences: dict[str, Predicate]) -> Predicate:
    if condition.target is not None:
        return compile_group(condition.target)
    members = [audiences[uid] for uid in condition.audiences] + [audiences[uid] for uid in condition.lytics_audiences]
    return combine(members, condition.combination)


def _compile_experience(experience: Experience, audiences: dict[str, Predicate]) -> CompiledExperience:
    variants = tuple(
        CompiledVariant(
            short_uid=v.short_uid,
            alias=variant_alias(experience.short_uid, v.short_uid),
            param=f"{experience.short_uid}_{v.short_uid}",
        )
        for v in experience.variants
    )
    segments: tuple[tuple[int, Predicate, CompiledVariant], ...] = ()
    targeting: Predicate | None = None
    sums: tuple[int, ...] = ()
    if experience.type == "SEGMENTED":
        segments = tuple(
            (index, compile_audience_condition(v.condition, audiences), cv)
            for index, (v, cv) in enumerate(zip(experience.variants, variants, strict=True))
            if v.condition is not None
        )
    else:
        sums = cumulative([v.weight for v in experience.variants])
        if experience.targeting is not None:
            targeting = compile_audience_condition(experience.targeting, audiences)
    return CompiledExperience(
        experience=experience,
        short_uid=experience.short_uid,
        tags=frozenset(tag.casefold() for tag in experience.tags),
        variants=variants,
        paused=experience.status == "PAUSED",
        segmented=experience.type == "SEGMENTED" and experience.status != "PAUSED",
        segments=segments,
        targeting=targeting,
        cumulative_weights=sums,
    )


def compile_project(project: Project, version: str, classifier: UserAgentClassifier | None = None) -> CompiledSnapshot:
    """The ready-to-decide snapshot of a project, and of its drafts (`CompiledSnapshot.draft`) when it has any."""
    audiences = {audience.uid: _audience_predicate(audience) for audience in project.audiences}
    classifier = classifier or UserAgentClassifier()
    draft = None
    if project.drafts:
        # The same audiences (and compiled predicates: a context's memberships stay valid across both), the DRAFT
        # versions as experiences; an experience omitted only for lack of a live version is omitted no longer.
        in_drafts = {e.uid for e in project.drafts}
        draft_project = replace(
            project,
            experiences=project.drafts,
            omitted=tuple(o for o in project.omitted if o.uid not in in_drafts),
            drafts=(),
        )
        draft = _compile(draft_project, version, classifier, audiences, None)
    return _compile(project, version, classifier, audiences, draft)


def _compile(
    project: Project,
    version: str,
    classifier: UserAgentClassifier,
    audiences: dict[str, Predicate],
    draft: CompiledSnapshot | None,
) -> CompiledSnapshot:
    return CompiledSnapshot(
        project=project,
        version=version,
        experiences=tuple(_compile_experience(e, audiences) for e in project.experiences),
        audience_predicates=audiences,
        classifier=classifier,
        reads_custom_attributes=_reads_custom_attributes(project),
        custom_keys_read=_custom_keys_read(project),
        time_thresholds=_time_thresholds(project),
        draft=draft,
    )


def _rule_groups(project: Project) -> list[RuleGroup]:
    """Every rule group of the project: its audiences', its experiences' own targets (live, paused or draft alike:
    a superset of what a decision can read)."""
    groups = [a.definition for a in project.audiences if a.definition is not None]
    for experience in (*project.experiences, *project.drafts):
        conditions = [experience.targeting, *(v.condition for v in experience.variants)]
        groups.extend(c.target for c in conditions if c is not None and c.target is not None)
    return groups


def _custom_keys_read(project: Project) -> frozenset[str]:
    """Every custom attribute key a rule of the project names."""
    return frozenset(
        rule.attribute for group in _rule_groups(project) for rule in iter_rules(group)
        if rule.attribute_kind == "custom"
    )  # fmt: skip


def _time_thresholds(project: Project) -> tuple[float, ...] | None:
    """`CompiledSnapshot.time_thresholds`: those of every DATE_AND_TIME rule the project names."""
    rules = [
        rule for group in _rule_groups(project) for rule in iter_rules(group)
        if rule.attribute_kind == "preset" and rule.attribute == "DATE_AND_TIME"
    ]  # fmt: skip
    found = time_thresholds(rules)
    return None if found is None else tuple(found)


def _reads_custom_attributes(project: Project) -> bool:
    by_uid = {a.uid: a for a in project.audiences}

    def group_reads(group: RuleGroup | None) -> bool:
        return group is not None and any(rule.attribute_kind == "custom" for rule in iter_rules(group))

    def condition_reads(condition: AudienceCondition | None) -> bool:
        if condition is None:
            return False
        if group_reads(condition.target):
            return True
        return any(group_reads(by_uid[uid].definition) for uid in condition.audiences)

    for experience in project.experiences:
        if experience.status == "PAUSED":
            continue
        if condition_reads(experience.targeting) or any(condition_reads(v.condition) for v in experience.variants):
            return True
    return False
