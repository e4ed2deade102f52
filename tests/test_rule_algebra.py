"""Rule algebra properties (SPEC §3, §4.5–4.6): the engine agrees with a tiny reference evaluator, and
`explain()` agrees with `decide` for every experience.

The reference is written from SPEC's text only: AND = all, OR = any (Python's all([]) / any([]) for empty
lists), a rule whose attribute has no value is false before `invertCondition`, live attributes override stored
ones, and the match-condition table. Rule trees are random, nested up to three groups deep.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mmh3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rulesets import (
    ab_variant,
    attribute,
    audience,
    custom_rule,
    decide_one,
    experience,
    explain_one,
    group,
    segmented_experience,
    segmented_variant,
    uid_for,
    version,
    write_rules,
)

from edgeproxy.files.snapshot_file import load_snapshot

Json = dict[str, Any]

KEYS = ("k0", "k1", "k2", "k3")
MISSING = object()  # a key absent from the visitor's attributes

STRING_OPERANDS = ("a", "ab", "b", "true", "false", "1", "2.5", "")
NUMBER_OPERANDS = (-1, 0, 1, 2.5, 3)
VALUES = st.sampled_from(
    [
        MISSING,
        None,
        "",
        "a",
        "ab",
        "ba",
        "b",
        "A",
        True,
        False,
        "true",
        "false",
        "True",
        "FALSE",
        "x",
        "1",
        "2.5",
        "-1",
        "3.0",
    ]
) | st.sampled_from([-2, -1, 0, 1, 2, 3, 0.5, 2.5, -1.5])

# -- random rule trees -----------------------------------------------------------------------------


@st.composite
def simple_rules(draw: st.DrawFn) -> Json:
    key = draw(st.sampled_from(KEYS))
    invert = draw(st.booleans())
    condition = draw(
        st.sampled_from(
            [
                "STRING_EQUALS",
                "CONTAINS_SUBSTRING",
                "HAS_ANY_VALUE",
                "IS_TRUE",
                "IS_FALSE",
                "NUMBER_EQUAL_TO",
                "NUMBER_GREATER_THAN",
                "NUMBER_LESS_THAN",
            ]
        )
    )
    if condition in ("STRING_EQUALS", "CONTAINS_SUBSTRING"):
        operand: Any = {"__type": "StringMatchOptions", "value": draw(st.sampled_from(STRING_OPERANDS))}
    elif condition.startswith("NUMBER_"):
        operand = {"__type": "NumberMatchOptions", "value": draw(st.sampled_from(NUMBER_OPERANDS))}
    else:
        operand = None
    return custom_rule(key, condition, operand, invert)


def trees(depth: int) -> st.SearchStrategy[Json]:
    """A RuleCombination with at most `depth` levels of groups (the root counts as one)."""
    children = simple_rules() if depth <= 1 else st.one_of(simple_rules(), trees(depth - 1))
    return st.builds(
        lambda combination, rules: group(combination, *rules),
        st.sampled_from(["AND", "OR"]),
        st.lists(children, max_size=4),
    )


def attribute_dicts() -> st.SearchStrategy[Json]:
    return st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=len(KEYS)).map(
        lambda values: {key: value for key, value in values.items() if value is not MISSING}
    )


@st.composite
def visitors(draw: st.DrawFn) -> Json:
    description: Json = {"userUid": draw(st.text(alphabet="abcdef0123456789-", min_size=1, max_size=12))}
    stored = draw(attribute_dicts())
    live = draw(attribute_dicts())
    if stored:
        description["storedAttributes"] = stored
    if live:
        description["liveAttributes"] = live
    return description


# -- the reference evaluator (SPEC §3) -------------------------------------------------------------

KEY_OF_UID = {uid_for(key): key for key in KEYS}


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def reference_condition(condition: str, operand: Any, v: Any) -> bool:
    """The match-condition table of SPEC §3 for a present value v."""
    if condition == "STRING_EQUALS":
        return str(v) == operand
    if condition == "CONTAINS_SUBSTRING":
        return operand in str(v)
    if condition == "HAS_ANY_VALUE":
        return v != ""
    if condition == "IS_TRUE":
        return v is True or v == "true"
    if condition == "IS_FALSE":
        return v is False or v == "false"
    number = _float(v)
    if number is None:
        return False
    if condition == "NUMBER_EQUAL_TO":
        return number == float(operand)
    if condition == "NUMBER_GREATER_THAN":
        return number > float(operand)
    assert condition == "NUMBER_LESS_THAN"
    return number < float(operand)


def visitor_attributes(description: Json) -> Json:
    """Live attributes override stored ones."""
    return {**description.get("storedAttributes", {}), **description.get("liveAttributes", {})}


def reference_rule(item: Json, attributes: Json) -> bool:
    value = attributes.get(KEY_OF_UID[item["attribute"]["ref"]])
    options = item.get("attributeMatchOptions") or {}
    # no value: false, before invertCondition
    raw = value is not None and reference_condition(item["attributeMatchCondition"], options.get("value"), value)
    return raw != item["invertCondition"]


def reference_group(item: Json, attributes: Json) -> bool:
    results = [
        reference_group(child, attributes)
        if child["__type"] == "RuleCombination"
        else reference_rule(child, attributes)
        for child in item["rules"]
    ]
    return all(results) if item["combinationType"] == "AND" else any(results)


def reference_bucket(experience_uid: str, user_uid: str) -> int:
    return (mmh3.hash(f"{experience_uid}:{user_uid}", 0, signed=False) * 10000) >> 32


# -- properties ------------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(definition=trees(3), people=st.lists(visitors(), min_size=1, max_size=6))
def test_audience_membership_matches_reference_evaluator(definition: Json, people: list[Json]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = load_snapshot(segmented_experience(Path(tmp), definition, attribute_keys=KEYS))
    for person in people:
        expected = reference_group(definition, visitor_attributes(person))
        manifest = decide_one(snapshot, person)
        assert (manifest["activeVariants"]["0"] == "0") is expected, (definition, person)


@PROPERTY_SETTINGS
@given(item=simple_rules(), person=visitors(), value=VALUES, place=st.sampled_from(["stored", "live", "nowhere"]))
def test_single_rule_decision_and_explanation_match_reference(item: Json, person: Json, value: Any, place: str) -> None:
    key = KEY_OF_UID[item["attribute"]["ref"]]
    if place != "nowhere" and value is not MISSING:  # make the rule's own attribute likely to have a value
        field = "storedAttributes" if place == "stored" else "liveAttributes"
        person = {**person, field: {**person.get(field, {}), key: value}}
    definition = group("AND", item)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = load_snapshot(segmented_experience(Path(tmp), definition, attribute_keys=KEYS))
    expected = reference_rule(item, visitor_attributes(person))
    assert (decide_one(snapshot, person)["activeVariants"]["0"] == "0") is expected
    assert_trace_matches_reference(definition, rule_traces_of(explain_one(snapshot, person))[0], person)


def rule_traces_of(trace: Json) -> list[Json]:
    """The definition traces of every audience in every variant of a segmented-experience explanation."""
    return [
        member["definition"]
        for item in trace["experiences"]
        for variant in item.get("variants", [])
        for member in variant.get("audiences", [])
    ]


def assert_trace_matches_reference(definition: Json, trace: Json, person: Json) -> None:
    """Every rule and group result in an explanation equals the reference evaluator's."""
    attributes = visitor_attributes(person)
    assert trace["combination"] == definition["combinationType"]
    assert trace["result"] is reference_group(definition, attributes), (definition, trace)
    assert len(trace["rules"]) == len(definition["rules"])
    for child, child_trace in zip(definition["rules"], trace["rules"], strict=True):
        if child["__type"] == "RuleCombination":
            assert_trace_matches_reference(child, child_trace, person)
        else:
            assert child_trace["condition"] == child["attributeMatchCondition"]
            assert child_trace["invert"] is child["invertCondition"]
            assert child_trace["result"] is reference_rule(child, attributes), (child, child_trace, person)


def test_reference_evaluator_is_not_trivial() -> None:
    # Sanity for the properties above: the reference gives both answers and honours invert on missing values.
    missing = custom_rule("k0", "STRING_EQUALS", "a", invert=True)
    assert reference_group(group("AND", missing), {}) is True
    assert reference_group(group("AND", missing), {"k0": "a"}) is False
    assert reference_group(group("OR"), {}) is False
    assert reference_group(group("AND"), {}) is True


def project_of(definitions: list[Json], target: Json, combination: str, weights: list[int], tmp: Path) -> Path:
    """Three experiences over random audiences: first-match segmented, inline target + AND/OR audiences, A/B."""
    audiences = [audience(f"aud{i}", definition) for i, definition in enumerate(definitions)]
    uids = [item["uid"] for item in audiences]
    first_match = version("ACTIVE", [segmented_variant(str(i * 2), [uid]) for i, uid in enumerate(uids)])
    combined = version(
        "ACTIVE",
        [
            segmented_variant("0", uids, combination=combination),
            segmented_variant("1", target=target),
            segmented_variant("2"),  # neither audiences nor target: matches nobody
        ],
    )
    ab = version(
        "ACTIVE",
        [ab_variant(str(i), weight) for i, weight in enumerate(weights)],
        variantSplit="CUSTOM_PERCENTAGE",
        targeting={"audience": {"audiences": uids[:1], "audienceCombinationType": "OR"}},
    )
    return write_rules(
        tmp,
        attributes=[attribute(key) for key in KEYS],
        audiences=audiences,
        experiences=[
            (experience("first match", "0"), [first_match]),
            (experience("combined", "1"), [combined]),
            (experience("ab", "2", "AB_TEST"), [ab]),
        ],
    )


def reference_manifest(
    definitions: list[Json], target: Json, combination: str, weights: list[int], person: Json
) -> dict[str, str | None]:
    attributes = visitor_attributes(person)
    members = [reference_group(definition, attributes) for definition in definitions]
    first = next((str(i * 2) for i, member in enumerate(members) if member), None)
    combined_hit = all(members) if combination == "AND" else any(members)
    combined = "0" if combined_hit else ("1" if reference_group(target, attributes) else None)
    ab: str | None = None
    if members[0]:
        b = reference_bucket(experience("ab", "2")["uid"], person["userUid"])
        total = 0
        for index, weight in enumerate(weights):
            total += weight * 100
            if b < total:
                ab = str(index)
                break
    return {"0": first, "1": combined, "2": ab}


@PROPERTY_SETTINGS
@given(
    definitions=st.lists(trees(3), min_size=1, max_size=3),
    target=trees(2),
    combination=st.sampled_from(["AND", "OR"]),
    weights=st.lists(st.integers(min_value=0, max_value=33), min_size=1, max_size=3),
    people=st.lists(visitors(), min_size=1, max_size=4),
)
def test_explain_agrees_with_decide_for_every_experience(
    definitions: list[Json], target: Json, combination: str, weights: list[int], people: list[Json]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = load_snapshot(project_of(definitions, target, combination, weights, Path(tmp)))
    for person in people:
        manifest = decide_one(snapshot, person)
        trace = explain_one(snapshot, person)
        explained = {item["shortUid"]: item["activeVariantShortUid"] for item in trace["experiences"]}
        assert explained == manifest["activeVariants"], (definitions, person, trace)
        assert manifest["activeVariants"] == reference_manifest(definitions, target, combination, weights, person)
        for definition, definition_trace in zip(definitions, rule_traces_of(trace)[: len(definitions)], strict=True):
            assert_trace_matches_reference(definition, definition_trace, person)
        for item in trace["experiences"]:
            chosen = item["activeVariantShortUid"]
            assert item["alias"] == (None if chosen is None else f"cs_personalize_{item['shortUid']}_{chosen}")
