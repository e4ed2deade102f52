"""Rules to predicates (compile once, evaluate many).

A rule is split in two reusable parts: the *getter* reads the attribute value from the visitor context,
the *test* checks a present value against the rule's operand. The compiled decision path and the
explanation path both use these same two functions, so an explanation can never disagree with a decision.
docs/contract.md §3: a rule whose attribute has no value is false before `invertCondition` is applied.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from edgeproxy.engine.context import VisitorContext
from edgeproxy.engine.model import CASE_INSENSITIVE_PRESETS, Rule, RuleGroup, parse_iso_time

Predicate = Callable[[VisitorContext], bool]
Getter = Callable[[VisitorContext], Any]
Test = Callable[[Any], bool]


def _country(ctx: VisitorContext) -> Any:
    return ctx.geo().country


def _region(ctx: VisitorContext) -> Any:
    return ctx.geo().region


def _city(ctx: VisitorContext) -> Any:
    return ctx.geo().city


def _device_type(ctx: VisitorContext) -> Any:
    ua = ctx.ua_class()
    return None if ua is None else ua.device_type


def _operating_system(ctx: VisitorContext) -> Any:
    ua = ctx.ua_class()
    return None if ua is None else ua.operating_system


def _query_string(ctx: VisitorContext) -> Any:
    return ctx.query_string()


def _query_params(ctx: VisitorContext) -> Any:
    return ctx.query_params() or None


def _referrer(ctx: VisitorContext) -> Any:
    return ctx.referrer


def _now(ctx: VisitorContext) -> Any:
    return ctx.now


def _lytics_audiences(ctx: VisitorContext) -> Any:
    return ctx.lytics_audiences()


def _lytics_flows(ctx: VisitorContext) -> Any:
    return ctx.lytics_flows()


_PRESET_GETTERS: dict[str, Getter] = {
    "COUNTRY": _country,
    "REGION": _region,
    "CITY": _city,
    "DEVICE_TYPE": _device_type,
    "OPERATING_SYSTEM": _operating_system,
    "QUERY_PARAMETERS": _query_string,
    "REFERRER": _referrer,
    "DATE_AND_TIME": _now,
}


def attribute_getter(rule: Rule) -> Getter:
    if rule.attribute_kind == "custom":
        key = rule.attribute
        return lambda ctx: ctx.custom(key)
    if rule.attribute_kind == "lytics":
        return _lytics_audiences if rule.attribute == "LYTICS_AUDIENCE" else _lytics_flows
    if rule.attribute == "QUERY_PARAMETERS" and rule.condition == "JSON_MATCH":
        return _query_params
    return _PRESET_GETTERS[rule.attribute]


def _as_timestamp(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return parse_iso_time(value).timestamp()
        except ValueError:
            return None
    return None


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _json_object(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def operand_test(rule: Rule) -> Test:
    """The check of a present attribute value against the rule's operand (docs/contract.md §3 match conditions)."""
    condition = rule.condition
    operand = rule.operand
    folded = rule.attribute_kind == "preset" and rule.attribute in CASE_INSENSITIVE_PRESETS
    if condition == "STRING_EQUALS":
        expected = str(operand)
        if folded:
            expected_cf = expected.casefold()
            return lambda v: str(v).casefold() == expected_cf
        return lambda v: str(v) == expected
    if condition == "CONTAINS_SUBSTRING":
        needle = str(operand)
        if folded:
            needle_cf = needle.casefold()
            return lambda v: needle_cf in str(v).casefold()
        return lambda v: needle in str(v)
    if condition == "HAS_ANY_VALUE":
        return lambda v: v != ""
    if condition == "IS_TRUE":
        return lambda v: v is True or v == "true"
    if condition == "IS_FALSE":
        return lambda v: v is False or v == "false"
    if condition in ("NUMBER_EQUAL_TO", "NUMBER_GREATER_THAN", "NUMBER_LESS_THAN"):
        assert isinstance(operand, float)
        number = operand
        if condition == "NUMBER_EQUAL_TO":
            return lambda v: (f := _as_float(v)) is not None and f == number
        if condition == "NUMBER_GREATER_THAN":
            return lambda v: (f := _as_float(v)) is not None and f > number
        return lambda v: (f := _as_float(v)) is not None and f < number
    if condition in ("BEFORE_TIME", "AFTER_TIME"):
        assert isinstance(operand, str)
        moment = parse_iso_time(operand).timestamp()
        if condition == "BEFORE_TIME":
            return lambda v: (t := _as_timestamp(v)) is not None and t < moment
        return lambda v: (t := _as_timestamp(v)) is not None and t > moment
    if condition == "BETWEEN_TIME":
        assert isinstance(operand, tuple)
        start = parse_iso_time(str(operand[0])).timestamp()
        end = parse_iso_time(str(operand[1])).timestamp()
        return lambda v: (t := _as_timestamp(v)) is not None and start <= t < end
    if condition == "JSON_MATCH":
        assert isinstance(operand, tuple)
        pairs = tuple((str(item[0]), str(item[1])) for item in operand)
        if rule.attribute == "QUERY_PARAMETERS" and rule.attribute_kind == "preset":
            return lambda params: all(expected in params.get(key, ()) for key, expected in pairs)

        def json_match(v: Any) -> bool:
            obj = _json_object(v)
            return obj is not None and all(
                key in obj and obj[key] is not None and _scalar_text(obj[key]) == expected for key, expected in pairs
            )

        return json_match
    if condition == "IS_MEMBER_OF":
        assert isinstance(operand, tuple)
        slug = str(operand[1])
        return lambda audiences: slug in audiences
    if condition == "IS_IN_FLOW_STATE":
        flow = str(operand)
        return lambda flows: flow in flows
    raise AssertionError(f"condition {condition!r} passed validation but has no test")


_PRESET_EXPRESSIONS = {
    "COUNTRY": "ctx.geo().country",
    "REGION": "ctx.geo().region",
    "CITY": "ctx.geo().city",
    "DEVICE_TYPE": "_device_type(ctx)",
    "OPERATING_SYSTEM": "_operating_system(ctx)",
    "QUERY_PARAMETERS": "ctx.query_string()",
    "REFERRER": "ctx.referrer",
    "DATE_AND_TIME": "ctx.now",
}


class _GroupCompiler:
    """Turns a rule tree into the source of one Python function, compiled once with `exec`.

    Nested closures cost a Python call per rule and per group; one generated function evaluates the whole
    tree with `and`/`or` short-circuiting and inlines the common tests. Only identifiers we generate appear
    in the source: every value from the rules (strings, numbers, test functions) is bound as a constant in
    the function's namespace, never spliced into the code.
    """

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {
            "_device_type": _device_type,
            "_operating_system": _operating_system,
            "_query_params": _query_params,
        }

    def const(self, value: Any) -> str:
        name = f"k{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def value(self, rule: Rule) -> str:
        if rule.attribute_kind == "custom":
            key = self.const(rule.attribute)
            return f"(L[{key}] if {key} in L else S.get({key}))"
        if rule.attribute_kind == "lytics":
            return "ctx.lytics_audiences()" if rule.attribute == "LYTICS_AUDIENCE" else "ctx.lytics_flows()"
        if rule.attribute == "QUERY_PARAMETERS" and rule.condition == "JSON_MATCH":
            return "_query_params(ctx)"
        return _PRESET_EXPRESSIONS[rule.attribute]

    def rule(self, rule: Rule) -> str:
        value = self.value(rule)
        folded = rule.attribute_kind == "preset" and rule.attribute in CASE_INSENSITIVE_PRESETS
        condition = rule.condition
        if condition == "STRING_EQUALS" and not folded:
            k = self.const(str(rule.operand))
            raw = f"((v := {value}) is not None and (v == {k} if v.__class__ is str else str(v) == {k}))"
        elif condition == "STRING_EQUALS":
            k = self.const(str(rule.operand).casefold())
            raw = f"((v := {value}) is not None and str(v).casefold() == {k})"
        elif condition == "HAS_ANY_VALUE":
            raw = f"((v := {value}) is not None and v != '')"
        elif condition == "IS_TRUE":
            raw = f"((v := {value}) is True or v == 'true')"
        elif condition == "IS_FALSE":
            raw = f"((v := {value}) is False or v == 'false')"
        else:
            test = self.const(operand_test(rule))
            raw = f"((v := {value}) is not None and {test}(v))"
        return f"(not {raw})" if rule.invert else raw

    def group(self, group: RuleGroup) -> str:
        parts = [self.group(item) if isinstance(item, RuleGroup) else self.rule(item) for item in group.rules]
        if not parts:  # Python's all([]) / any([]) (docs/contract.md §3, ours)
            return "True" if group.combination == "AND" else "False"
        joiner = " and " if group.combination == "AND" else " or "
        return "(" + joiner.join(parts) + ")"

    def function(self, group: RuleGroup) -> Predicate:
        body = self.group(group)
        source = f"def predicate(ctx):\n    L = ctx.live\n    S = ctx.stored\n    return bool({body})\n"
        exec(compile(source, "<edgeproxy rule group>", "exec"), self.namespace)
        predicate: Predicate = self.namespace["predicate"]
        return predicate


def evaluate_rule(rule: Rule, ctx: VisitorContext) -> tuple[Any, bool]:
    """(attribute value, result) — the slow path used by explanations."""
    value = attribute_getter(rule)(ctx)
    raw = value is not None and operand_test(rule)(value)
    return value, (not raw) if rule.invert else raw


def combine(predicates: list[Predicate], combination: str) -> Predicate:
    """AND = all, OR = any, with Python's all([])/any([]) for an empty list (docs/contract.md §3, ours)."""
    items = tuple(predicates)
    if combination == "AND":
        if not items:
            return lambda ctx: True
        if len(items) == 1:
            return items[0]

        def all_of(ctx: VisitorContext) -> bool:
            for predicate in items:
                if not predicate(ctx):
                    return False
            return True

        return all_of
    if not items:
        return lambda ctx: False
    if len(items) == 1:
        return items[0]

    def any_of(ctx: VisitorContext) -> bool:
        for predicate in items:
            if predicate(ctx):
                return True
        return False

    return any_of


def compile_group(group: RuleGroup) -> Predicate:
    """One fast predicate for a rule tree (see `_GroupCompiler`)."""
    return _GroupCompiler().function(group)
