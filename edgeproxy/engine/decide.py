"""Compile a project into a snapshot and decide a visitor's manifest (docs/contract.md §4)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeproxy.engine.bucketing import bucket, cumulative, pick
from edgeproxy.engine.conditions import Predicate, combine, compile_group
from edgeproxy.engine.context import VisitorContext
from edgeproxy.engine.loader import iter_rules
from edgeproxy.engine.model import Audience, AudienceCondition, Experience, Project, RuleGroup, Variant
from edgeproxy.engine.useragent import UserAgentClassifier


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


@dataclass(frozen=True, slots=True)
class CompiledExperience:
    experience: Experience
    short_uid: str
    tags: frozenset[str]  # casefolded
    choose: Callable[[VisitorContext], CompiledVariant | None]
    variants: tuple[CompiledVariant, ...]
    # A/B tests (docs/contract.md §4.6): what `choose` uses, for deciders that split the uid-independent targeting
    # from the per-visitor bucket (memo.py). `targeting` None: everyone is in the test.
    targeting: Predicate | None = None
    cumulative_weights: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Manifest:
    """A decision: one entry per experience in priority order, the variant or None."""

    user_uid: str
    entries: tuple[tuple[str, CompiledVariant | None], ...]
    # `variant_param`, worked out once: deciders hand a returning visitor the same manifest object again.
    _param: str | None = field(default=None, init=False, compare=False, repr=False)

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

    @property
    def variant_param(self) -> str:
        param = self._param
        if param is None:
            param = ",".join([v.param for _, v in self.entries if v is not None])
            object.__setattr__(self, "_param", param)  # a cache of a pure function of the frozen fields
        return param

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
    # Manifest JSON per decided entries: a project has few distinct variant sets, serialising them once each
    # saves the JSON encoder on every page (bounded, cleared when full).
    _json_cache: dict[tuple[tuple[str, CompiledVariant | None], ...], str] = field(
        default_factory=dict, compare=False, repr=False
    )

    def manifest_json(self, manifest: Manifest) -> str:
        """`manifest.cookie_json()`, memoised per variant set."""
        found = self._json_cache.get(manifest.entries)
        if found is None:
            if len(self._json_cache) > 4096:
                self._json_cache.clear()
            found = self._json_cache[manifest.entries] = manifest.cookie_json()
        return found

    def select(self, tags: Iterable[str] | None) -> Sequence[CompiledExperience]:
        """docs/contract.md §4.2: keep experiences with at least one tag equal, case-insensitively."""
        if tags is None:
            return self.experiences
        wanted = {tag.casefold() for tag in tags}
        if not wanted:
            return self.experiences
        return [ce for ce in self.experiences if not ce.tags.isdisjoint(wanted)]

    def decide(self, ctx: VisitorContext, tags: Iterable[str] | None = None) -> Manifest:
        return Manifest(ctx.user_uid, tuple([(ce.short_uid, ce.choose(ctx)) for ce in self.select(tags)]))


def _audience_predicate(audience: Audience) -> Predicate:
    uid = audience.uid
    if audience.lytics_slug is not None:
        slug = audience.lytics_slug
        return lambda ctx: slug in ctx.lytics_audiences()
    assert audience.definition is not None
    inner = compile_group(audience.definition)

    def member(ctx: VisitorContext) -> bool:
        # Per-request memo: layered experiences often test the same audience several times.
        memo = ctx.memo
        found = memo.get(uid)
        if found is None:
            found = memo[uid] = inner(ctx)
        return found

    return member


def compile_audience_condition(condition: AudienceCondition, audiences: dict[str, Predicate]) -> Predicate:
    if condition.target is not None:
        return compile_group(condition.target)
    members = [audiences[uid] for uid in condition.audiences] + [audiences[uid] for uid in condition.lytics_audiences]
    return combine(members, condition.combination)


def _compile_experience(experience: Experience, audiences: dict[str, Predicate]) -> CompiledExperience:
    compiled_variants = tuple(
        CompiledVariant(
            short_uid=v.short_uid,
            alias=variant_alias(experience.short_uid, v.short_uid),
            param=f"{experience.short_uid}_{v.short_uid}",
        )
        for v in experience.variants
    )
    choose: Callable[[VisitorContext], CompiledVariant | None]
    targeting: Predicate | None = None
    sums: tuple[int, ...] = ()
    if experience.status == "PAUSED":
        choose = _paused  # docs/contract.md §4.4
    elif experience.type == "SEGMENTED":
        choose = _segmented_chooser(experience.variants, compiled_variants, audiences)
    else:
        sums = cumulative([v.weight for v in experience.variants])
        if experience.targeting is not None:
            targeting = compile_audience_condition(experience.targeting, audiences)
        choose = _ab_chooser(experience.uid, sums, targeting, compiled_variants)
    return CompiledExperience(
        experience=experience,
        short_uid=experience.short_uid,
        tags=frozenset(tag.casefold() for tag in experience.tags),
        choose=choose,
        variants=compiled_variants,
        targeting=targeting,
        cumulative_weights=sums,
    )


def _paused(ctx: VisitorContext) -> CompiledVariant | None:
    return None


def _segmented_chooser(
    variants: tuple[Variant, ...], compiled: tuple[CompiledVariant, ...], audiences: dict[str, Predicate]
) -> Callable[[VisitorContext], CompiledVariant | None]:
    # docs/contract.md §4.5: the first variant in array order whose condition holds; one with no condition never does.
    candidates = tuple(
        (compile_audience_condition(v.condition, audiences), cv)
        for v, cv in zip(variants, compiled, strict=True)
        if v.condition is not None
    )

    def choose(ctx: VisitorContext) -> CompiledVariant | None:
        for predicate, variant in candidates:
            if predicate(ctx):
                return variant
        return None

    return choose


def _ab_chooser(
    uid: str, sums: tuple[int, ...], targeting: Predicate | None, compiled: tuple[CompiledVariant, ...]
) -> Callable[[VisitorContext], CompiledVariant | None]:
    # docs/contract.md §4.6: outside the targeting -> null; else hash v1 bucket against cumulative weights.
    def choose(ctx: VisitorContext) -> CompiledVariant | None:
        if targeting is not None and not targeting(ctx):
            return None
        index = pick(sums, bucket(uid, ctx.user_uid))
        return None if index is None else compiled[index]

    return choose


def compile_project(project: Project, version: str, classifier: UserAgentClassifier | None = None) -> CompiledSnapshot:
    audiences = {audience.uid: _audience_predicate(audience) for audience in project.audiences}
    return CompiledSnapshot(
        project=project,
        version=version,
        experiences=tuple(_compile_experience(e, audiences) for e in project.experiences),
        audience_predicates=audiences,
        classifier=classifier or UserAgentClassifier(),
        reads_custom_attributes=_reads_custom_attributes(project),
    )


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
