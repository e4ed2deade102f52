"""Decisions against Python peers: edgeproxy's engine and its memo beside GrowthBook's SDK and Flagsmith's engine.

    pip install -r benchmarks/requirements-peers.txt     # the peers; not dependencies of edgeproxy
    python benchmarks/peers.py [--seconds 6] [--rounds 6] [--baseline-memo REV] [--json ...] [--svg ...]

Two rule sets: the example project (rules/) and the limits project (benchmarks/limits_project.py: 100 experiences,
100 audiences of up to 10 rules). Each is translated into each peer's model (`GrowthBookRules`, `FlagsmithRules`):

- GrowthBook (`growthbook` on PyPI): one feature per experience. A segmented experience is a list of force rules,
  one per variant with a condition, in variant order (GrowthBook takes the first rule whose condition holds, as the
  contract takes the first variant); an A/B test is one experiment rule (its targeting as the rule's condition,
  `coverage` = the weights' total, weights normalised, hashed on `id`); a paused experience has no rule. Audiences
  become Mongo-style conditions ($and/$or/$not, $eq, $gt/$lt/$gte, $regex on the escaped text for substrings,
  $elemMatch for set membership, $exists).
- Flagsmith (`flagsmith-flag-engine`): one feature per experience; each variant's audience condition is a segment
  whose override gives the feature that variant, with the variant's index as priority (lowest wins: the first
  variant); an A/B test is a multivariate feature (weights as percentages), behind a segment when targeted. Rule
  groups become ALL/ANY rules, inverted rules NONE rules.

Neither peer parses a User-Agent, looks up geo, parses a query string or reads a Lytics cookie, and neither compares
case-insensitively: each visit's derived values are computed once before measuring (for all contenders alike: the
engine's contexts have them computed too) and handed to the peers as attributes/traits, the case-insensitive presets
(country, region, city, device type, OS) case-folded on both sides; query parameters and Lytics sets as lists
(GrowthBook) or as \\x1f-delimited text matched with CONTAINS (Flagsmith, whose traits are scalars); numbers as
floats for Flagsmith (its comparisons cast the rule's value to the trait's type, and "50.5" is not an int).
Where a model cannot express a rule (an empty group; JSON_MATCH on a custom attribute; a query parameter name
with a dot, which GrowthBook reads as a path) the translation refuses the rule set rather than approximate it.
Bucketing differs by design (each product hashes its own way): for A/B tests the peers are held to the same
targeting, not the same arm. Equivalence is checked before measuring, on a sample of every visit stream: the
variant of every segmented experience and the targeting of every A/B test must agree for every visitor.

Visits: `high` cardinality draws every visit afresh (a distinct User-Agent build, page URL with a click id,
attribute values from wide ranges, referrers, times around the rules' thresholds) for 20,000 returning visitor
uids; `low` cardinality draws 20,000 visitor uids over 50 visit profiles (4 User-Agents, few values). Every
contender gets the same stream. Measured per decision (every experience of the rule set) on one pinned core, the
contenders interleaved in rounds (the machine is shared: a change of load falls on all of them): p50/p99 µs,
decisions/s, the ratio to the fastest peer; the memo's hit rate and how often it stepped aside.
`--baseline-memo REV` also measures `MemoDecider` as it was at git revision REV, in the same run.
"""

from __future__ import annotations

import argparse
import gc
import html
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decide import machine, percentile
from limits_project import write_limits_project

from edgeproxy.engine.context import LYTICS_AUDIENCES_COOKIE, LYTICS_FLOWS_COOKIE, Geo, VisitorContext
from edgeproxy.engine.decide import CompiledExperience, CompiledSnapshot
from edgeproxy.engine.memo import MemoDecider
from edgeproxy.engine.model import (
    CASE_INSENSITIVE_PRESETS,
    AudienceCondition,
    Rule,
    RuleGroup,
    iter_rules,
    parse_iso_time,
)
from edgeproxy.files.snapshot_file import load_snapshot

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
VISITOR_UIDS = 20_000
LOW_PROFILES = 50
SEP = "\x1f"  # delimits list items in Flagsmith's scalar traits

# -- visits --------------------------------------------------------------------------------------------------------

UA_TEMPLATES = (  # (template, device/OS it classifies as); {a}.{b}.{c} vary the build in high cardinality
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{a}.0.{b}.{c} "
    "Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{a} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.{a} Mobile/15E{b} Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{a}.0.{b}.{c} Mobile "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{a} "
    "Safari/605.1.{c}",
    "Mozilla/5.0 (iPad; CPU OS 17_{a} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{a} "
    "Mobile/15E{b} Safari/604.1",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:{a}.0) Gecko/20100101 Firefox/{a}.0",
)
COUNTRIES = ("GB", "US", "CA", "DE", "FR", "AU", "IE", "NL", "ES", "IT", "JP", "BR")
REFERRER_HOSTS = ("https://www.google.com/", "https://bing.com/search", "https://news.example/a", "https://t.co/x")


@dataclass(frozen=True, slots=True)
class RuleReads:
    """What a rule set reads, to draw visits that exercise it: per custom attribute its rules, and the operands of
    the presets."""

    custom: dict[str, list[Rule]]
    geo: dict[str, set[str]]  # COUNTRY/REGION/CITY -> operands
    query_params: dict[str, set[str]]  # JSON_MATCH on the query: parameter -> expected values
    query_text: set[str]  # STRING_EQUALS/CONTAINS_SUBSTRING operands on the query string
    referrer: set[str]
    thresholds: list[float]
    lytics_slugs: list[str]
    flows: list[str]


def project_rules(snapshot: CompiledSnapshot) -> Iterator[Rule]:
    for audience in snapshot.project.audiences:
        if audience.definition is not None:
            yield from iter_rules(audience.definition)
    for ce in snapshot.experiences:
        conditions = [v.condition for v in ce.experience.variants] + [ce.experience.targeting]
        for condition in conditions:
            if condition is not None and condition.target is not None:
                yield from iter_rules(condition.target)


def rule_reads(snapshot: CompiledSnapshot) -> RuleReads:
    reads = RuleReads({}, {"COUNTRY": set(), "REGION": set(), "CITY": set()}, {}, set(), set(), [], [], [])
    thresholds: set[float] = set()
    slugs = {a.lytics_slug for a in snapshot.project.audiences if a.lytics_slug is not None}
    for rule in project_rules(snapshot):
        if rule.attribute_kind == "custom":
            reads.custom.setdefault(rule.attribute, []).append(rule)
        elif rule.attribute in reads.geo and rule.operand is not None:
            reads.geo[rule.attribute].add(str(rule.operand))
        elif rule.attribute == "QUERY_PARAMETERS" and rule.condition == "JSON_MATCH":
            assert isinstance(rule.operand, tuple)
            for pair in rule.operand:
                assert isinstance(pair, tuple)
                reads.query_params.setdefault(str(pair[0]), set()).add(str(pair[1]))
        elif rule.attribute == "QUERY_PARAMETERS":
            reads.query_text.add(str(rule.operand))
        elif rule.attribute == "REFERRER" and rule.operand is not None:
            reads.referrer.add(str(rule.operand))
        elif rule.attribute == "DATE_AND_TIME":
            operands = rule.operand if isinstance(rule.operand, tuple) else (rule.operand,)
            thresholds.update(parse_iso_time(str(item)).timestamp() for item in operands)
        elif rule.condition == "IS_MEMBER_OF":
            assert isinstance(rule.operand, tuple)
            slugs.add(str(rule.operand[1]))
        elif rule.condition == "IS_IN_FLOW_STATE":
            reads.flows.append(str(rule.operand))
    reads.thresholds.extend(sorted(thresholds) or [1_795_000_000.0])
    reads.lytics_slugs.extend(sorted(slugs))
    return reads


@dataclass(frozen=True, slots=True)
class Visit:
    """One request's inputs, as the engine's context takes them."""

    uid: str
    now: float
    user_agent: str
    referrer: str | None
    page_url: str
    geo: Geo
    stored: dict[str, Any]
    cookies: dict[str, str]


def custom_value(rng: random.Random, rules: list[Rule], high: bool) -> Any:
    """A value for a custom attribute that its rules can find true or false; None: absent."""
    if rng.random() < 0.08:
        return None
    conditions = {r.condition for r in rules}
    numbers = [float(r.operand) for r in rules if isinstance(r.operand, float)]
    if numbers:
        low, top = min(numbers), max(numbers)
        spread = max(top - low, 10.0)
        if high:
            value = rng.uniform(low - spread * 0.2, top + spread * 0.2)
            return round(value, 2) if rng.random() < 0.5 else int(value)
        return int(rng.choice(numbers)) + rng.choice((-1, 0, 1))
    if conditions <= {"IS_TRUE", "IS_FALSE", "HAS_ANY_VALUE"}:
        return rng.random() < 0.5
    words = [str(r.operand) for r in rules if isinstance(r.operand, str)] or ["x"]
    word = rng.choice(words)
    if not high:
        return rng.choice((word, "other"))
    roll = rng.random()
    if roll < 0.4:
        return word
    if roll < 0.7:
        return f"{word}-{rng.randrange(1_000_000)}"  # contains the operand, equals nothing
    return f"value-{rng.randrange(1_000_000)}"


def draw_visit(rng: random.Random, reads: RuleReads, uid: str, high: bool) -> Visit:
    a, b, c = rng.randrange(100, 131), rng.randrange(1000, 9999), rng.randrange(0, 250)
    if not high:
        a, b, c = 124, 6367, 60
    template = rng.choice(UA_TEMPLATES[:4] if not high else UA_TEMPLATES)
    user_agent = template.format(a=a if "Chrome" in template or "Firefox" in template else a % 8, b=b, c=c)
    country = rng.choice(sorted(reads.geo["COUNTRY"] | set(COUNTRIES if high else COUNTRIES[:3])))
    region = rng.choice(sorted(reads.geo["REGION"] | {"X"})) if reads.geo["REGION"] else "X"
    city = rng.choice(sorted(reads.geo["CITY"] | {"Springfield"})) if reads.geo["CITY"] else "Springfield"
    params = []
    for name, values in sorted(reads.query_params.items()):
        if rng.random() < 0.6:
            params.append(f"{name}={rng.choice([*sorted(values), 'none'])}")
    for text in sorted(reads.query_text):
        if rng.random() < 0.3:
            params.append(text.strip("?&"))
    if high:
        params.append(f"gclid={rng.getrandbits(48):x}")
    page_url = f"https://shop.example/p/{rng.randrange(5000) if high else 1}"
    if params:
        page_url += "?" + "&".join(params)
    referrer = None
    if rng.random() < 0.5:
        host = rng.choice(REFERRER_HOSTS)
        needle = rng.choice(sorted(reads.referrer)) if reads.referrer and rng.random() < 0.5 else ""
        referrer = f"{host}?q={needle}{rng.randrange(10**6) if high else ''}"
    around = rng.choice(reads.thresholds)
    now = around + (rng.uniform(-5 * 86400, 5 * 86400) if high else rng.choice((-86400.0, 86400.0)))
    stored = {}
    for key, rules in sorted(reads.custom.items()):
        value = custom_value(rng, rules, high)
        if value is not None:
            stored[key] = value
    cookies = {}
    members = [slug for slug in reads.lytics_slugs if rng.random() < 0.3]
    if members:
        cookies[LYTICS_AUDIENCES_COOKIE] = "|" + "|".join(members) + "|"
    flows = [flow for flow in reads.flows if rng.random() < 0.3]
    if flows:
        cookies[LYTICS_FLOWS_COOKIE] = "|" + "|".join(flows) + "|"
    return Visit(uid, now, user_agent, referrer, page_url, Geo(country, region, city), stored, cookies)


def visit_stream(reads: RuleReads, high: bool, seed: int) -> Iterator[Visit]:
    """Endless visits, the same for every contender given the same seed."""
    rng = random.Random(seed)
    profiles = [draw_visit(rng, reads, "", high) for _ in range(LOW_PROFILES)] if not high else []
    n = 0
    while True:
        uid = f"visitor-{rng.randrange(VISITOR_UIDS)}"
        if high:
            yield draw_visit(rng, reads, uid, True)
        else:
            p = profiles[n % LOW_PROFILES]
            yield Visit(uid, p.now, p.user_agent, p.referrer, p.page_url, p.geo, p.stored, p.cookies)
        n += 1


def engine_context(visit: Visit, snapshot: CompiledSnapshot) -> VisitorContext:
    """The engine's context of a visit, with its derived values (geo, UA class, query, Lytics sets) computed: the
    peers get them computed too."""
    ctx = VisitorContext(
        user_uid=visit.uid,
        now=visit.now,
        user_agent=visit.user_agent,
        referrer=visit.referrer,
        page_url=visit.page_url,
        cookies=visit.cookies,
        stored=visit.stored,
        geo=visit.geo,
        classifier=snapshot.classifier,
    )
    ctx.geo()
    ctx.ua_class()
    ctx.query_params()
    ctx.lytics_audiences()
    ctx.lytics_flows()
    return ctx


def folded(value: str | None) -> str | None:
    return None if value is None else value.casefold()


def derived_attributes(ctx: VisitorContext) -> dict[str, Any]:
    """A visit's attributes as the peers read them (see the module text); custom attributes as `c:KEY`."""
    geo = ctx.geo()
    ua = ctx.ua_class()
    attributes: dict[str, Any] = {
        "id": ctx.user_uid,
        "country": folded(geo.country),
        "region": folded(geo.region),
        "city": folded(geo.city),
        "device_type": folded(ua.device_type if ua else None),
        "operating_system": folded(ua.operating_system if ua else None),
        "query": ctx.query_params(),
        "query_string": ctx.query_string(),
        "referrer": ctx.referrer,
        "now": ctx.now,
        "lytics": sorted(ctx.lytics_audiences()),
        "flows": sorted(ctx.lytics_flows()),
    }
    for key, value in ctx.stored.items():
        attributes[f"c:{key}"] = value
    return {k: v for k, v in attributes.items() if v is not None}


# -- translation ---------------------------------------------------------------------------------------------------


class NotExpressible(ValueError):
    """A rule the peer's model cannot express exactly."""


PRESET_ATTRIBUTE = {
    "COUNTRY": "country",
    "REGION": "region",
    "CITY": "city",
    "DEVICE_TYPE": "device_type",
    "OPERATING_SYSTEM": "operating_system",
    "REFERRER": "referrer",
    "DATE_AND_TIME": "now",
}


def attribute_name(rule: Rule) -> str:
    if rule.attribute_kind == "custom":
        return f"c:{rule.attribute}"
    if rule.attribute == "QUERY_PARAMETERS":
        return "query_string"
    return PRESET_ATTRIBUTE[rule.attribute]


def operand_text(rule: Rule) -> str:
    text = str(rule.operand)
    return text.casefold() if rule.attribute_kind == "preset" and rule.attribute in CASE_INSENSITIVE_PRESETS else text


def audience_groups(condition: AudienceCondition, snapshot: CompiledSnapshot) -> tuple[list[RuleGroup], list[str]]:
    """(definitions of the condition's audiences, Lytics slugs it names), or the inline target alone."""
    if condition.target is not None:
        return [condition.target], []
    audiences = {a.uid: a for a in snapshot.project.audiences}
    groups: list[RuleGroup] = []
    slugs: list[str] = []
    for uid in condition.audiences + condition.lytics_audiences:
        audience = audiences[uid]
        if audience.definition is not None:
            groups.append(audience.definition)
        elif audience.lytics_slug is not None:
            slugs.append(audience.lytics_slug)
    return groups, slugs


class GrowthBookRules:
    """A snapshot as GrowthBook features (see the module text)."""

    def __init__(self, snapshot: CompiledSnapshot) -> None:
        self.snapshot = snapshot
        self.features: dict[str, dict[str, Any]] = {}
        self.targeting: dict[str, dict[str, Any]] = {}  # A/B experience -> its targeting condition
        for ce in snapshot.experiences:
            self.features[ce.short_uid] = {"defaultValue": None, "rules": self.feature_rules(ce)}

    def feature_rules(self, ce: CompiledExperience) -> list[dict[str, Any]]:
        experience = ce.experience
        if ce.paused:
            return []
        if experience.type == "SEGMENTED":
            return [
                {"condition": self.condition(v.condition), "force": v.short_uid}
                for v in experience.variants
                if v.condition is not None
            ]
        weights = [v.weight for v in experience.variants]
        total = sum(weights)
        rule: dict[str, Any] = {
            "key": experience.uid,
            "variations": [v.short_uid for v in experience.variants],
            "weights": [w / total for w in weights] if total else [1 / len(weights)] * len(weights),
            "coverage": total / 10_000,
            "hashAttribute": "id",
        }
        if experience.targeting is not None:
            rule["condition"] = self.targeting[ce.short_uid] = self.condition(experience.targeting)
        return [rule]

    def condition(self, condition: AudienceCondition) -> dict[str, Any]:
        groups, slugs = audience_groups(condition, self.snapshot)
        parts = [self.group(g) for g in groups] + [{"lytics": {"$elemMatch": {"$eq": s}}} for s in slugs]
        if condition.target is not None:
            return parts[0]
        if not parts:
            raise NotExpressible("an audience condition naming no audience")
        return {"$and" if condition.combination == "AND" else "$or": parts}

    def group(self, group: RuleGroup) -> dict[str, Any]:
        if not group.rules:
            raise NotExpressible("an empty rule group (GrowthBook's empty $or is true)")
        parts = [self.group(item) if isinstance(item, RuleGroup) else self.rule(item) for item in group.rules]
        return {"$and" if group.combination == "AND" else "$or": parts}

    def rule(self, rule: Rule) -> dict[str, Any]:
        raw = self.raw_rule(rule)
        return {"$not": raw} if rule.invert else raw

    def raw_rule(self, rule: Rule) -> dict[str, Any]:
        condition = rule.condition
        if condition == "JSON_MATCH":
            if rule.attribute != "QUERY_PARAMETERS":
                raise NotExpressible("JSON_MATCH on a custom attribute")
            assert isinstance(rule.operand, tuple)
            pairs = [(str(item[0]), str(item[1])) for item in rule.operand]
            if any("." in key for key, _ in pairs):
                raise NotExpressible("a query parameter name with a dot (GrowthBook reads it as a path)")
            return {"$and": [{f"query.{key}": {"$elemMatch": {"$eq": value}}} for key, value in pairs]}
        if condition == "IS_MEMBER_OF":
            assert isinstance(rule.operand, tuple)
            return {"lytics": {"$elemMatch": {"$eq": str(rule.operand[1])}}}
        if condition == "IS_IN_FLOW_STATE":
            return {"flows": {"$elemMatch": {"$eq": str(rule.operand)}}}
        name = attribute_name(rule)
        if condition == "STRING_EQUALS":
            return {name: {"$eq": operand_text(rule)}}
        if condition == "CONTAINS_SUBSTRING":
            return {name: {"$regex": re.escape(operand_text(rule))}}
        if condition == "HAS_ANY_VALUE":
            return {name: {"$exists": True, "$ne": ""}}
        if condition == "IS_TRUE":
            return {"$or": [{name: {"$eq": True}}, {name: {"$eq": "true"}}]}
        if condition == "IS_FALSE":
            return {"$or": [{name: {"$eq": False}}, {name: {"$eq": "false"}}]}
        if condition in ("NUMBER_EQUAL_TO", "NUMBER_GREATER_THAN", "NUMBER_LESS_THAN"):
            op = {"NUMBER_EQUAL_TO": "$eq", "NUMBER_GREATER_THAN": "$gt", "NUMBER_LESS_THAN": "$lt"}[condition]
            return {name: {op: rule.operand}}
        if condition in ("BEFORE_TIME", "AFTER_TIME"):
            moment = parse_iso_time(str(rule.operand)).timestamp()
            return {name: {"$lt" if condition == "BEFORE_TIME" else "$gt": moment}}
        if condition == "BETWEEN_TIME":
            assert isinstance(rule.operand, tuple)
            start, end = (parse_iso_time(str(item)).timestamp() for item in rule.operand)
            return {name: {"$gte": start, "$lt": end}}
        raise NotExpressible(f"condition {condition}")


class FlagsmithRules:
    """A snapshot as a Flagsmith evaluation context's environment, segments and features (see the module text)."""

    def __init__(self, snapshot: CompiledSnapshot) -> None:
        self.snapshot = snapshot
        self.features: dict[str, dict[str, Any]] = {}
        self.segments: dict[str, dict[str, Any]] = {}
        for ce in snapshot.experiences:
            self.add_experience(ce)
        self.base: dict[str, Any] = {
            "environment": {"key": "bench", "name": "bench"},
            "features": self.features,
            "segments": self.segments,
        }

    def add_experience(self, ce: CompiledExperience) -> None:
        key = ce.short_uid
        feature: dict[str, Any] = {"key": key, "name": key, "enabled": True, "value": None}
        self.features[key] = feature
        if ce.paused:
            return
        experience = ce.experience
        if experience.type == "SEGMENTED":
            for index, variant in enumerate(experience.variants):
                if variant.condition is None:
                    continue
                override = {"key": key, "name": key, "enabled": True, "value": variant.short_uid, "priority": index}
                self.segments[f"{key}:{index}"] = {
                    "key": f"{key}:{index}",
                    "name": f"{key}:{index}",
                    "rules": [self.condition(variant.condition)],
                    "overrides": [override],
                }
            return
        variants = [
            {"key": v.short_uid, "value": v.short_uid, "weight": v.weight / 100, "priority": i}
            for i, v in enumerate(experience.variants)
        ]
        if experience.targeting is None:
            feature["variants"] = variants
            return
        override = {**feature, "variants": variants, "priority": 0}
        self.segments[f"{key}:targeting"] = {
            "key": f"{key}:targeting",
            "name": f"{key}:targeting",
            "rules": [self.condition(experience.targeting)],
            "overrides": [override],
        }

    def condition(self, condition: AudienceCondition) -> dict[str, Any]:
        groups, slugs = audience_groups(condition, self.snapshot)
        parts = [self.group(g) for g in groups] + [self.leaf("lytics", "CONTAINS", f"{SEP}{s}{SEP}") for s in slugs]
        if condition.target is not None:
            return parts[0]
        if not parts:
            raise NotExpressible("an audience condition naming no audience")
        return {"type": "ALL" if condition.combination == "AND" else "ANY", "rules": parts}

    def group(self, group: RuleGroup) -> dict[str, Any]:
        if not group.rules:
            raise NotExpressible("an empty rule group")
        parts = [self.group(item) if isinstance(item, RuleGroup) else self.rule(item) for item in group.rules]
        return {"type": "ALL" if group.combination == "AND" else "ANY", "rules": parts}

    @staticmethod
    def leaf(prop: str, operator: str, value: str) -> dict[str, Any]:
        return {"type": "ALL", "conditions": [{"property": prop, "operator": operator, "value": value}]}

    def rule(self, rule: Rule) -> dict[str, Any]:
        raw = self.raw_rule(rule)
        return {"type": "NONE", "rules": [raw]} if rule.invert else raw

    def raw_rule(self, rule: Rule) -> dict[str, Any]:
        condition = rule.condition
        if condition == "JSON_MATCH":
            if rule.attribute != "QUERY_PARAMETERS":
                raise NotExpressible("JSON_MATCH on a custom attribute")
            assert isinstance(rule.operand, tuple)
            pairs = [(str(item[0]), str(item[1])) for item in rule.operand]
            return {"type": "ALL", "rules": [self.leaf(f"q:{k}", "CONTAINS", f"{SEP}{v}{SEP}") for k, v in pairs]}
        if condition == "IS_MEMBER_OF":
            assert isinstance(rule.operand, tuple)
            return self.leaf("lytics", "CONTAINS", f"{SEP}{rule.operand[1]}{SEP}")
        if condition == "IS_IN_FLOW_STATE":
            return self.leaf("flows", "CONTAINS", f"{SEP}{rule.operand}{SEP}")
        name = attribute_name(rule)
        if condition == "STRING_EQUALS":
            return self.leaf(name, "EQUAL", operand_text(rule))
        if condition == "CONTAINS_SUBSTRING":
            return self.leaf(name, "CONTAINS", operand_text(rule))
        if condition == "HAS_ANY_VALUE":
            # set, and not the empty string (EQUAL "" would cast "" to the trait's type: True for a boolean)
            empty = {**self.leaf(name, "REGEX", r"\A\Z"), "type": "NONE"}
            return {"type": "ALL", "rules": [self.leaf(name, "IS_SET", ""), empty]}
        if condition in ("IS_TRUE", "IS_FALSE"):
            return self.leaf(name, "EQUAL", "true" if condition == "IS_TRUE" else "false")
        if condition in ("NUMBER_EQUAL_TO", "NUMBER_GREATER_THAN", "NUMBER_LESS_THAN"):
            op = {"NUMBER_EQUAL_TO": "EQUAL", "NUMBER_GREATER_THAN": "GREATER_THAN", "NUMBER_LESS_THAN": "LESS_THAN"}
            return self.leaf(name, op[condition], repr(float(str(rule.operand))))
        if condition in ("BEFORE_TIME", "AFTER_TIME"):
            moment = parse_iso_time(str(rule.operand)).timestamp()
            return self.leaf(name, "LESS_THAN" if condition == "BEFORE_TIME" else "GREATER_THAN", repr(moment))
        if condition == "BETWEEN_TIME":
            assert isinstance(rule.operand, tuple)
            start, end = (parse_iso_time(str(item)).timestamp() for item in rule.operand)
            after_start = self.leaf(name, "GREATER_THAN_INCLUSIVE", repr(start))
            return {"type": "ALL", "rules": [after_start, self.leaf(name, "LESS_THAN", repr(end))]}
        raise NotExpressible(f"condition {condition}")

    @staticmethod
    def traits(attributes: dict[str, Any]) -> dict[str, Any]:
        """The peers' attributes as Flagsmith traits: scalars only (lists as delimited text), numbers as floats."""
        traits: dict[str, Any] = {}
        for name, value in attributes.items():
            if name == "id":
                continue
            if name == "query":
                for param, values in value.items():
                    traits[f"q:{param}"] = SEP + SEP.join(values) + SEP
            elif isinstance(value, list):
                traits[name] = SEP + SEP.join(value) + SEP
            elif isinstance(value, int | float) and not isinstance(value, bool):
                traits[name] = float(value)
            else:
                traits[name] = value
        traits.setdefault("lytics", SEP)
        traits.setdefault("flows", SEP)
        return traits

    def context(self, attributes: dict[str, Any]) -> dict[str, Any]:
        uid = attributes["id"]
        return {**self.base, "identity": {"identifier": uid, "key": uid, "traits": self.traits(attributes)}}


# -- contenders ----------------------------------------------------------------------------------------------------

Decide = Callable[[Any], object]


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    prepare: Callable[[Visit], Any]  # a visit -> this contender's input (not measured)
    decide: Decide  # measured
    stats: Callable[[], dict[str, Any]]


def load_baseline_memo(revision: str) -> type[MemoDecider]:
    """`MemoDecider` as edgeproxy/engine/memo.py was at a git revision, to compare in one run."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:edgeproxy/engine/memo.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("edgeproxy.engine.memo_baseline")
    module.__dict__["__file__"] = f"<memo.py at {revision}>"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__dict__["__file__"], "exec"), module.__dict__)
    baseline: type[MemoDecider] = module.MemoDecider
    return baseline


def memo_stats(decider: Any) -> Callable[[], dict[str, Any]]:
    def stats() -> dict[str, Any]:
        hits, misses = decider.hits, decider.misses
        bypassed = getattr(decider, "bypassed", 0)
        total = hits + misses + bypassed
        return {
            "memo_hit_rate": round(hits / total, 4) if total else None,
            "memo_bypassed": round(bypassed / total, 4) if total else None,
        }

    return stats


def no_stats() -> dict[str, Any]:
    return {}


def contenders(snapshot: CompiledSnapshot, baseline_memo: type[MemoDecider] | None) -> list[Contender]:
    from flag_engine.engine import get_evaluation_result
    from growthbook.common_types import EvaluationContext, Feature, GlobalContext, Options, StackContext, UserContext
    from growthbook.core import eval_feature

    def context_of(visit: Visit) -> VisitorContext:
        return engine_context(visit, snapshot)

    def plain(ctx: VisitorContext) -> object:
        ctx.memberships.clear()  # a fresh request: no audience results carried over
        return snapshot.decide(ctx)

    found = [Contender("edgeproxy engine", context_of, plain, no_stats)]
    memo = MemoDecider(snapshot)

    def memoised(ctx: VisitorContext) -> object:
        ctx.memberships.clear()
        return memo.decide(ctx)

    found.append(Contender("edgeproxy MemoDecider", context_of, memoised, memo_stats(memo)))
    if baseline_memo is not None:
        old = baseline_memo(snapshot)

        def old_memoised(ctx: VisitorContext) -> object:
            ctx.memberships.clear()
            return old.decide(ctx)

        found.append(Contender("edgeproxy MemoDecider (baseline)", context_of, old_memoised, memo_stats(old)))

    growthbook = GrowthBookRules(snapshot)
    keys = list(growthbook.features)
    # GrowthBook's fastest path measured: its core `eval_feature` on one evaluation context whose attributes are
    # swapped per visitor (about 10% faster than `GrowthBook.set_attributes` + `eval_feature`, and 30-80% faster
    # than a `GrowthBook` per request); a fresh stack per feature, as the client builds one per call.
    features = {key: Feature(**definition) for key, definition in growthbook.features.items()}
    user = UserContext()
    evaluation = EvaluationContext(
        user=user,
        global_ctx=GlobalContext(options=Options(), features=features),
        stack=StackContext(evaluated_features=set()),
    )

    def gb_prepare(visit: Visit) -> dict[str, Any]:
        return derived_attributes(context_of(visit))

    def gb_decide(attributes: dict[str, Any]) -> object:
        user.attributes = attributes
        values = []
        for key in keys:
            evaluation.stack = StackContext(evaluated_features=set())
            values.append(eval_feature(key, evaluation).value)
        return values

    found.append(Contender("GrowthBook", gb_prepare, gb_decide, no_stats))
    flagsmith = FlagsmithRules(snapshot)

    def fs_prepare(visit: Visit) -> dict[str, Any]:
        return flagsmith.context(derived_attributes(context_of(visit)))

    def fs_decide(context: dict[str, Any]) -> object:
        return get_evaluation_result(context)  # type: ignore[arg-type]

    found.append(Contender("Flagsmith", fs_prepare, fs_decide, no_stats))
    return found


# -- equivalence ---------------------------------------------------------------------------------------------------


def check_equivalence(snapshot: CompiledSnapshot, visits: list[Visit]) -> dict[str, Any]:
    """Every segmented experience's variant and every A/B test's targeting, for each visit, by all three."""
    from flag_engine.engine import get_evaluation_result
    from growthbook import GrowthBook
    from growthbook.core import evalCondition

    growthbook = GrowthBookRules(snapshot)
    flagsmith = FlagsmithRules(snapshot)
    gb = GrowthBook(features=growthbook.features)
    compared = 0
    mismatched = 0
    mismatches: list[str] = []
    for visit in visits:
        ctx = engine_context(visit, snapshot)
        attributes = derived_attributes(ctx)
        gb.set_attributes(attributes)
        flags = get_evaluation_result(flagsmith.context(attributes))  # type: ignore[arg-type]
        matched = {s["name"] for s in flags["segments"]}
        for ce in snapshot.experiences:
            key = ce.short_uid
            if ce.uid_dependent:
                ours: object = ce.targeted(ctx)
                theirs = (
                    evalCondition(attributes, growthbook.targeting[key]) if key in growthbook.targeting else True,
                    f"{key}:targeting" in matched if ce.targeting is not None else True,
                )
            else:
                chosen = ce.choose(ctx)
                ours = None if chosen is None else chosen.short_uid
                theirs = (gb.eval_feature(key).value, flags["flags"][key]["value"])
            compared += 1
            if theirs != (ours, ours):
                mismatched += 1
                if len(mismatches) < 20:
                    mismatches.append(f"{visit.uid} experience {key}: engine {ours!r}, GrowthBook/Flagsmith {theirs!r}")
    return {
        "visits": len(visits),
        "experience_decisions_compared": compared,
        "mismatched": mismatched,
        "mismatches": mismatches,
    }


# -- measuring -----------------------------------------------------------------------------------------------------


class Measurement:
    """One contender's timed decisions over the rounds of a case, on its own copy of the case's visit stream."""

    def __init__(self, contender: Contender, visits: Iterator[Visit]) -> None:
        self.contender = contender
        self.visits = visits
        self.samples: list[int] = []
        self.batch = 10
        started = time.perf_counter()
        for _ in range(200):  # warm up (imports, caches, first memo entries), and size the batches
            contender.decide(contender.prepare(next(visits)))
        per_decision = (time.perf_counter() - started) / 200
        self.batch = max(10, min(1000, int(0.2 / per_decision)))

    def run(self, seconds: float) -> None:
        """Decisions back to back for about `seconds` of decision time, each timed; inputs prepared in batches
        outside the timing, the garbage collector run between batches and off during them (for every contender
        alike: its pauses are the benchmark's allocations as much as the contender's)."""
        decide, prepare, samples, clock = (
            self.contender.decide,
            self.contender.prepare,
            self.samples,
            time.perf_counter_ns,
        )
        budget = int(seconds * 1e9)
        spent = 0
        while spent < budget:
            batch = [prepare(next(self.visits)) for _ in range(self.batch)]
            gc.collect()
            gc.disable()
            try:
                for item in batch:
                    t0 = clock()
                    decide(item)
                    samples.append(clock() - t0)
            finally:
                gc.enable()
            spent += sum(samples[-len(batch) :])

    def result(self) -> dict[str, Any]:
        samples = sorted(self.samples)
        total_ns = sum(samples)
        return {
            "contender": self.contender.name,
            "decisions": len(samples),
            "p50_us": round(percentile(samples, 0.50), 2),
            "p99_us": round(percentile(samples, 0.99), 2),
            "mean_us": round(total_ns / len(samples) / 1000, 2),
            "decisions_per_s": round(len(samples) / (total_ns / 1e9)),
            **self.contender.stats(),
        }


def run_case(
    rule_set: str,
    snapshot: CompiledSnapshot,
    high: bool,
    seconds: float,
    baseline_memo: type[MemoDecider] | None,
    sample: int,
    rounds: int,
) -> dict[str, Any]:
    reads = rule_reads(snapshot)
    cardinality = "high" if high else "low"
    label = f"{rule_set}, {cardinality} cardinality:"
    stream = visit_stream(reads, high, seed=20)
    probe = [next(stream) for _ in range(sample)]
    equivalence = check_equivalence(snapshot, probe)
    print(
        f"  {label} equivalence on {sample:,} visits ({equivalence['experience_decisions_compared']:,} experience "
        f"decisions): {equivalence['mismatched']} mismatched",
        file=sys.stderr,
        flush=True,
    )
    distinct = {
        "user_agents": len({v.user_agent for v in probe}),
        "page_urls": len({v.page_url for v in probe}),
        "uids": len({v.uid for v in probe}),
        "attribute_values": len({(k, repr(x)) for v in probe for k, x in v.stored.items()}),
    }
    # Interleaved: every contender gets a slice of each round, so a change in the machine's load (it is shared)
    # falls on all of them alike.
    measurements = [Measurement(c, visit_stream(reads, high, seed=21)) for c in contenders(snapshot, baseline_memo)]
    for round_number in range(1, rounds + 1):
        for measurement in measurements:
            measurement.run(seconds / rounds)
        done = ", ".join(f"{m.contender.name} {len(m.samples):,}" for m in measurements)
        print(f"    {label} round {round_number}/{rounds}: {done}", file=sys.stderr, flush=True)
    results = [m.result() for m in measurements]
    peers = [r for r in results if not r["contender"].startswith("edgeproxy")]
    fastest = min(peers, key=lambda r: r["p50_us"])
    plain = results[0]
    for r in results:
        r["p50_vs_fastest_peer"] = round(fastest["p50_us"] / r["p50_us"], 2)
        r["throughput_vs_fastest_peer"] = round(r["decisions_per_s"] / fastest["decisions_per_s"], 2)
        r["p50_vs_engine"] = round(plain["p50_us"] / r["p50_us"], 3)
    return {
        "rule_set": rule_set,
        "cardinality": cardinality,
        "experiences": len(snapshot.experiences),
        "audiences": len(snapshot.project.audiences),
        "distinct_in_sample": {"visits": sample, **distinct},
        "equivalence": equivalence,
        "fastest_peer": fastest["contender"],
        "results": results,
    }


# -- report --------------------------------------------------------------------------------------------------------

COLORS = {
    "edgeproxy engine": "#d9822b",
    "edgeproxy MemoDecider": "#b35c12",
    "edgeproxy MemoDecider (baseline)": "#e8b27d",
    "GrowthBook": "#4a6fa5",
    "Flagsmith": "#4f8a5b",
}


def svg_chart(report: dict[str, Any]) -> str:
    """Per case, horizontal bars of p50 µs per decision on a log scale (shorter is faster), p99 as a tick."""
    cases = report["cases"]
    rows = sum(len(c["results"]) for c in cases)
    width, label_w, bar_w, row_h, case_gap, top = 920, 260, 520, 22, 34, 90
    height = top + rows * row_h + len(cases) * case_gap + 40
    top_us = max(r["p99_us"] for c in cases for r in c["results"]) * 1.2
    low_us = min(r["p50_us"] for c in cases for r in c["results"]) / 1.5

    def x(us: float) -> float:
        return label_w + bar_w * math.log(us / low_us) / math.log(top_us / low_us)

    m = report["machine"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        '<text x="20" y="28" font-size="17" font-weight="600">Decisions: edgeproxy against Python peers '
        "(µs per decision, log scale; bar p50, tick p99)</text>",
        f'<text x="20" y="48" fill="#555">{html.escape(m["cpu"])}, {m["cores"]} cores, Python {m["python"]}; one '
        "pinned core; every experience of the rule set decided per visitor</text>",
    ]
    for us in (1, 3, 10, 30, 100, 300, 1000, 3000, 10000):
        if low_us <= us <= top_us:
            out.append(f'<line x1="{x(us):.1f}" y1="{top - 14}" x2="{x(us):.1f}" y2="{height - 30}" stroke="#eee"/>')
            out.append(f'<text x="{x(us):.1f}" y="{top - 18}" text-anchor="middle" fill="#777">{us} µs</text>')
    y = top
    for case in cases:
        title = f"{case['rule_set']} ({case['experiences']} experiences), {case['cardinality']} cardinality"
        out.append(f'<text x="20" y="{y + 14}" font-weight="600">{html.escape(title)}</text>')
        y += 20
        for r in case["results"]:
            color = COLORS.get(r["contender"], "#888")
            out.append(f'<text x="30" y="{y + 14}">{html.escape(r["contender"])}</text>')
            out.append(
                f'<rect x="{label_w}" y="{y + 4}" width="{x(r["p50_us"]) - label_w:.1f}" height="{row_h - 8}" '
                f'fill="{color}"/>'
            )
            out.append(
                f'<line x1="{x(r["p99_us"]):.1f}" y1="{y + 2}" x2="{x(r["p99_us"]):.1f}" y2="{y + row_h - 2}" '
                'stroke="#333" stroke-width="2"/>'
            )
            note = f"{r['p50_us']} µs, {r['decisions_per_s']:,}/s, {r['p50_vs_fastest_peer']}x fastest peer"
            out.append(f'<text x="{x(r["p99_us"]) + 6:.1f}" y="{y + 14}" fill="#444">{note}</text>')
            y += row_h
        y += case_gap - 20
    out.append("</svg>")
    return "\n".join(out) + "\n"


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']} (pinned to one core)")
    print(f"{'case':<34} {'contender':<34} {'p50 µs':>8} {'p99 µs':>8} {'decisions/s':>12} {'x fastest peer':>15}")
    for case in report["cases"]:
        name = f"{case['rule_set']}, {case['cardinality']}"
        for r in case["results"]:
            memo = f"  memo hits {r['memo_hit_rate']:.0%}" if r.get("memo_hit_rate") is not None else ""
            memo += f", stepped aside {r['memo_bypassed']:.0%}" if r.get("memo_bypassed") else ""
            print(
                f"{name:<34} {r['contender']:<34} {r['p50_us']:>8} {r['p99_us']:>8} {r['decisions_per_s']:>12,} "
                f"{r['p50_vs_fastest_peer']:>14}x{memo}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured decision time per contender and case")
    parser.add_argument("--rounds", type=int, default=6, help="rounds the measuring time is interleaved over")
    parser.add_argument("--sample", type=int, default=2000, help="visits per case checked for equivalence")
    parser.add_argument("--baseline-memo", metavar="REV", help="also measure MemoDecider as of this git revision")
    parser.add_argument("--json", default=str(RESULTS / "peers.json"))
    parser.add_argument("--svg", default=str(RESULTS / "peers.svg"))
    args = parser.parse_args()
    try:
        import flag_engine  # noqa: F401
        import growthbook  # noqa: F401
    except ImportError as missing:
        print(f"{missing.name} is not installed: pip install -r benchmarks/requirements-peers.txt", file=sys.stderr)
        return 2
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    baseline = load_baseline_memo(args.baseline_memo) if args.baseline_memo else None
    if args.baseline_memo:  # the commit, not a name that moves (HEAD)
        args.baseline_memo = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline_memo],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    example = load_snapshot(ROOT / "rules")
    with tempfile.TemporaryDirectory() as tmp:
        limits = load_snapshot(write_limits_project(Path(tmp)))
    cases = []
    for rule_set, snapshot in (("example rules", example), ("limits project", limits)):
        for high in (True, False):
            print(f"{rule_set}, {'high' if high else 'low'} cardinality ...", file=sys.stderr, flush=True)
            cases.append(run_case(rule_set, snapshot, high, args.seconds, baseline, args.sample, args.rounds))
    from importlib.metadata import version

    report = {
        "benchmark": "peers",
        "machine": machine(),
        "pinned_to_one_core": True,
        "versions": {name: version(name) for name in ("growthbook", "flagsmith-flag-engine")},
        "baseline_memo_revision": args.baseline_memo,
        "cases": cases,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    Path(args.svg).write_text(svg_chart(report))
    print_table(report)
    failed = [c for c in cases if c["equivalence"]["mismatches"]]
    for case in failed:
        print(f"\nNOT EQUIVALENT: {case['rule_set']}, {case['cardinality']}:", file=sys.stderr)
        for line in case["equivalence"]["mismatches"]:
            print(f"  {line}", file=sys.stderr)
    print(f"\nwritten: {args.json}\n         {args.svg}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
