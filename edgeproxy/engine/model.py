"""The validated, normalized project model: what a rules directory means, independent of its JSON.

Every object is immutable; a `Project` is built once by the loader and never changed, so a compiled
snapshot can be swapped atomically and shared across requests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

# Attribute kinds of a rule's reference (docs/contract.md §3, audience definition grammar).
AttributeKind = Literal["preset", "custom", "lytics"]
Combination = Literal["AND", "OR"]
ExperienceType = Literal["SEGMENTED", "AB_TEST"]
CurrentStatus = Literal["ACTIVE", "PAUSED"]

PRESET_ATTRIBUTES = (
    "COUNTRY",
    "REGION",
    "CITY",
    "DEVICE_TYPE",
    "OPERATING_SYSTEM",
    "QUERY_PARAMETERS",
    "REFERRER",
    "DATE_AND_TIME",
)
# Enumerated presets compare case-insensitively (docs/contract.md §3 "ours").
CASE_INSENSITIVE_PRESETS = frozenset({"COUNTRY", "REGION", "CITY", "DEVICE_TYPE", "OPERATING_SYSTEM"})
LYTICS_REFS = ("LYTICS_AUDIENCE", "LYTICS_FLOW_STATE")

STRING_CONDITIONS = frozenset({"STRING_EQUALS", "CONTAINS_SUBSTRING"})
NUMBER_CONDITIONS = frozenset({"NUMBER_EQUAL_TO", "NUMBER_GREATER_THAN", "NUMBER_LESS_THAN"})
TIME_CONDITIONS = frozenset({"BEFORE_TIME", "AFTER_TIME", "BETWEEN_TIME"})
VALUELESS_CONDITIONS = frozenset({"HAS_ANY_VALUE", "IS_TRUE", "IS_FALSE"})
ALL_CONDITIONS = (
    STRING_CONDITIONS
    | NUMBER_CONDITIONS
    | TIME_CONDITIONS
    | VALUELESS_CONDITIONS
    | frozenset({"JSON_MATCH", "IS_MEMBER_OF", "IS_IN_FLOW_STATE"})
)

# A normalized condition operand:
#   str                      STRING_*; BEFORE_TIME/AFTER_TIME as an ISO-8601 string
#   float                    NUMBER_*
#   tuple[str, str]          BETWEEN_TIME (start, end); IS_MEMBER_OF (lytics audience uid, slug)
#   tuple[tuple[str, str]]   JSON_MATCH (param, expected) pairs
#   None                     HAS_ANY_VALUE, IS_TRUE, IS_FALSE
# IS_IN_FLOW_STATE is a str "flowId:flowState".
Operand = str | float | tuple[str, str] | tuple[tuple[str, str], ...] | None


@dataclass(frozen=True, slots=True)
class Rule:
    attribute_kind: AttributeKind
    attribute: str  # preset name, custom attribute *key*, or lytics ref
    attribute_uid: str  # custom attribute uid, "" for presets and lytics
    condition: str
    operand: Operand
    invert: bool
    where: str  # "file#json.path", for explanations


@dataclass(frozen=True, slots=True)
class RuleGroup:
    combination: Combination
    rules: tuple[Rule | RuleGroup, ...]


@dataclass(frozen=True, slots=True)
class Attribute:
    uid: str
    key: str
    name: str


@dataclass(frozen=True, slots=True)
class Audience:
    uid: str
    name: str
    definition: RuleGroup | None  # None for Lytics audiences
    lytics_slug: str | None  # set for Lytics audiences (membership by slug)


@dataclass(frozen=True, slots=True)
class Event:
    uid: str
    key: str


@dataclass(frozen=True, slots=True)
class AudienceCondition:
    """Membership of audiences and Lytics audiences, combined; or an inline target group."""

    audiences: tuple[str, ...]
    lytics_audiences: tuple[str, ...]
    combination: Combination
    target: RuleGroup | None


@dataclass(frozen=True, slots=True)
class Variant:
    short_uid: str
    name: str
    condition: AudienceCondition | None  # segmented variants
    weight: int  # basis points, A/B variants (0 for segmented)


@dataclass(frozen=True, slots=True)
class Metric:
    kind: str  # "Primary" | "Secondary"
    name: str
    event_uid: str


@dataclass(frozen=True, slots=True)
class Experience:
    uid: str
    short_uid: str
    name: str
    type: ExperienceType
    status: CurrentStatus
    version_uid: str
    tags: tuple[str, ...]
    variants: tuple[Variant, ...]
    targeting: AudienceCondition | None
    metrics: tuple[Metric, ...]
    # Built from a DRAFT version, for previews (SPEC §10): decided as if ACTIVE, `status` is then "ACTIVE".
    draft: bool = False


@dataclass(frozen=True, slots=True)
class OmittedExperience:
    """An experience in experiences.json without an ACTIVE or PAUSED version (docs/contract.md §4.1)."""

    uid: str
    short_uid: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Project:
    uid: str
    attributes: tuple[Attribute, ...]
    audiences: tuple[Audience, ...]
    events: tuple[Event, ...]
    experiences: tuple[Experience, ...]  # decision order: priorityOrder, then experiences.json order
    omitted: tuple[OmittedExperience, ...]
    source: str  # where it was loaded from, for status pages
    # The experiences as a `--draft` preview decides them (SPEC §10), in decision order: each experience with a valid
    # DRAFT version as that version (draft-only ones included), the others as in `experiences`. Empty when no
    # experience has a valid DRAFT version.
    drafts: tuple[Experience, ...] = ()
    # DRAFT versions left out of `drafts` because they do not validate: a draft is work in progress and must not
    # fail the snapshot. One message per version: experience shortUid, file, JSON path, problem.
    draft_problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Forcing:
    """What a preview (SPEC §10) changes in a decision: `forced` pairs an experience shortUid with the variant
    shortUid to show, or None to leave the visitor out of it (null); `draft` decides on the DRAFT versions.
    Defined here, not in decide.py, so that context.py can build one from a request description without an import
    cycle; decide.py re-exports it."""

    forced: tuple[tuple[str, str | None], ...]
    draft: bool


def iter_rules(group: RuleGroup) -> Iterator[Rule]:
    """Every rule of a group, depth first."""
    for item in group.rules:
        if isinstance(item, RuleGroup):
            yield from iter_rules(item)
        else:
            yield item


def parse_iso_time(text: str) -> datetime:
    """ISO-8601 to an aware UTC datetime; a time without zone is taken as UTC."""
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_timestamp(text: str) -> float:
    """`parse_iso_time(text).timestamp()`, without the conversion to UTC that a timestamp does not need."""
    value = datetime.fromisoformat(text.strip())
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()


def time_thresholds(time_rules: Sequence[Rule]) -> list[float] | None:
    """The sorted thresholds of DATE_AND_TIME rules when every one is BEFORE/AFTER/BETWEEN_TIME: then the position
    of `now` among them (`bisect_left`, `bisect_right`) decides each of those rules. None otherwise."""
    if not all(r.condition in TIME_CONDITIONS for r in time_rules):
        return None
    thresholds: set[float] = set()
    for r in time_rules:
        operands = r.operand if isinstance(r.operand, tuple) else (r.operand,)
        thresholds.update(parse_iso_time(str(item)).timestamp() for item in operands)
    return sorted(thresholds)
