"""Every match condition and preset attribute of SPEC §3, through the real loader and `decide`.

Each case writes a one-experience project whose variant "0" targets one audience (rulesets.segmented_experience),
so "the visitor is in the audience" is exactly "experience 0 serves variant 0".
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from rulesets import (
    FIXED_NOW,
    NEW_UID,
    attribute,
    audience,
    custom_rule,
    decide_one,
    experience,
    explain_one,
    group,
    in_segment,
    lytics_audience,
    lytics_uid,
    rule,
    segmented_experience,
    segmented_variant,
    uid_for,
    version,
    write_rules,
)

from edgeproxy.cli import decide_line
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.geo import MaxMindGeo

Json = dict[str, Any]


def stored(**values: Any) -> Json:
    return {"storedAttributes": values}


def live(**values: Any) -> Json:
    return {"liveAttributes": values}


def cookie(text: str) -> Json:
    return {"headers": {"Cookie": text}}


def page(url: str) -> Json:
    return {"url": url}


def at(now: str) -> Json:
    return {"now": now}


def geo(**fields: str) -> Json:
    return {"geo": fields}


def headers(**values: str) -> Json:
    return {"headers": {name.replace("_", "-"): value for name, value in values.items()}}


def tier_is(value: str, invert: bool = False) -> Json:
    return custom_rule("tier", "STRING_EQUALS", value, invert)


def check(tmp_path: Path, definition_rule: Json, description: Json, expected: bool, **kwargs: Any) -> None:
    """Decide membership, and check that the explanation (same rules, slow path) says the same."""
    rules = segmented_experience(tmp_path, group("AND", definition_rule))
    assert in_segment(rules, description, **kwargs) is expected
    trace = explain_one(rules, description, **kwargs)["experiences"][0]
    assert (trace["activeVariantShortUid"] == "0") is expected
    assert trace["variants"][0]["audiences"][0]["definition"]["rules"][0]["result"] is expected


# -- STRING_EQUALS ---------------------------------------------------------------------------------

STRING_EQUALS_CASES = [
    pytest.param(tier_is("gold"), stored(tier="gold"), True, id="custom-equal"),
    pytest.param(tier_is("gold"), stored(tier="Gold"), False, id="custom-is-case-sensitive"),
    pytest.param(tier_is("gold"), stored(tier="gold "), False, id="custom-no-trimming"),
    pytest.param(tier_is("gold"), stored(tier="silver"), False, id="custom-different"),
    pytest.param(tier_is("gold"), stored(), False, id="custom-missing"),
    pytest.param(custom_rule("visits", "STRING_EQUALS", "41"), stored(visits=41), True, id="custom-number-as-str"),
    pytest.param(custom_rule("Tier", "STRING_EQUALS", "gold"), stored(tier="gold"), False, id="custom-key-is-exact"),
    pytest.param(rule("preset", "COUNTRY", "STRING_EQUALS", "gb"), geo(country="GB"), True, id="country-any-case"),
    pytest.param(rule("preset", "COUNTRY", "STRING_EQUALS", "GB"), geo(country="gb"), True, id="country-lower-val"),
    pytest.param(rule("preset", "COUNTRY", "STRING_EQUALS", "GB"), geo(country="FR"), False, id="country-different"),
    pytest.param(rule("preset", "COUNTRY", "STRING_EQUALS", "GB"), {}, False, id="country-unknown"),
    pytest.param(rule("preset", "REGION", "STRING_EQUALS", "eng"), geo(region="ENG"), True, id="region-any-case"),
    pytest.param(rule("preset", "REGION", "STRING_EQUALS", "SCT"), geo(region="ENG"), False, id="region-different"),
    pytest.param(rule("preset", "CITY", "STRING_EQUALS", "LONDON"), geo(city="London"), True, id="city-any-case"),
    pytest.param(rule("preset", "CITY", "STRING_EQUALS", "Leeds"), geo(city="London"), False, id="city-different"),
    pytest.param(
        rule("preset", "DEVICE_TYPE", "STRING_EQUALS", "mobile"),
        headers(User_Agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148 Safari/604.1"),
        True,
        id="device-type-any-case",
    ),
    pytest.param(
        rule("preset", "OPERATING_SYSTEM", "STRING_EQUALS", "Ios"),
        headers(User_Agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148 Safari/604.1"),
        True,
        id="operating-system-any-case",
    ),
    pytest.param(
        rule("preset", "REFERRER", "STRING_EQUALS", "https://www.google.com/search?q=boots"),
        headers(Referer="https://www.google.com/search?q=boots"),
        True,
        id="referrer-full-url",
    ),
    pytest.param(
        rule("preset", "REFERRER", "STRING_EQUALS", "https://www.google.com/"),
        headers(Referer="https://www.google.com/search?q=boots"),
        False,
        id="referrer-prefix-is-not-equal",
    ),
    pytest.param(
        rule("preset", "QUERY_PARAMETERS", "STRING_EQUALS", "utm_campaign=bf"),
        page("https://shop.example/p?utm_campaign=bf"),
        True,
        id="query-string-equal",
    ),
]


@pytest.mark.parametrize(("definition_rule", "description", "expected"), STRING_EQUALS_CASES)
def test_string_equals_compares_str_of_value(
    tmp_path: Path, definition_rule: Json, description: Json, expected: bool
) -> None:
    check(tmp_path, definition_rule, description, expected)


# -- CONTAINS_SUBSTRING ----------------------------------------------------------------------------

CONTAINS_CASES = [
    pytest.param(custom_rule("tier", "CONTAINS_SUBSTRING", "old"), stored(tier="gold"), True, id="custom-inside"),
    pytest.param(custom_rule("tier", "CONTAINS_SUBSTRING", "gold"), stored(tier="gold"), True, id="custom-whole"),
    pytest.param(custom_rule("tier", "CONTAINS_SUBSTRING", "OLD"), stored(tier="gold"), False, id="custom-case"),
    pytest.param(custom_rule("tier", "CONTAINS_SUBSTRING", "x"), stored(tier="gold"), False, id="custom-absent-text"),
    pytest.param(custom_rule("tier", "CONTAINS_SUBSTRING", "g"), stored(), False, id="custom-missing"),
    pytest.param(custom_rule("visits", "CONTAINS_SUBSTRING", "4"), stored(visits=41), True, id="custom-number-str"),
    pytest.param(
        rule("preset", "REFERRER", "CONTAINS_SUBSTRING", "google."),
        headers(Referer="https://www.google.co.uk/search?q=boots"),
        True,
        id="referrer-contains",
    ),
    pytest.param(
        rule("preset", "REFERRER", "CONTAINS_SUBSTRING", "bing."),
        headers(Referer="https://www.google.co.uk/search?q=boots"),
        False,
        id="referrer-does-not-contain",
    ),
    pytest.param(rule("preset", "REFERRER", "CONTAINS_SUBSTRING", "google"), {}, False, id="referrer-missing"),
    pytest.param(
        rule("preset", "QUERY_PARAMETERS", "CONTAINS_SUBSTRING", "utm_source=news"),
        page("https://shop.example/p?utm_campaign=bf&utm_source=newsletter"),
        True,
        id="query-string-contains",
    ),
]


@pytest.mark.parametrize(("definition_rule", "description", "expected"), CONTAINS_CASES)
def test_contains_substring_looks_inside_str_of_value(
    tmp_path: Path, definition_rule: Json, description: Json, expected: bool
) -> None:
    check(tmp_path, definition_rule, description, expected)


# -- HAS_ANY_VALUE ---------------------------------------------------------------------------------

HAS_ANY_VALUE_CASES = [
    pytest.param(stored(nickname="kim"), True, id="present"),
    pytest.param(stored(nickname=0), True, id="zero-is-a-value"),
    pytest.param(stored(nickname=False), True, id="false-is-a-value"),
    pytest.param(stored(nickname=" "), True, id="blank-is-a-value"),
    pytest.param(stored(), False, id="absent"),
    pytest.param(stored(nickname=None), False, id="null"),
    pytest.param(stored(nickname=""), False, id="empty-string"),
    pytest.param(live(nickname=""), False, id="empty-live-string"),
]


@pytest.mark.parametrize(("description", "expected"), HAS_ANY_VALUE_CASES)
def test_has_any_value_needs_present_non_null_non_empty(tmp_path: Path, description: Json, expected: bool) -> None:
    check(tmp_path, custom_rule("nickname", "HAS_ANY_VALUE"), description, expected)


@pytest.mark.parametrize(
    ("definition_rule", "description", "expected"),
    [
        pytest.param(
            rule("preset", "REFERRER", "HAS_ANY_VALUE"), headers(Referer="https://a.example/"), True, id="referrer"
        ),
        pytest.param(rule("preset", "REFERRER", "HAS_ANY_VALUE"), {}, False, id="no-referrer"),
        pytest.param(
            rule("preset", "QUERY_PARAMETERS", "HAS_ANY_VALUE"), page("https://s.example/?a=1"), True, id="query"
        ),
        pytest.param(
            rule("preset", "QUERY_PARAMETERS", "HAS_ANY_VALUE"), page("https://s.example/p"), False, id="no-q"
        ),
        pytest.param(rule("preset", "COUNTRY", "HAS_ANY_VALUE"), geo(country="GB"), True, id="country"),
        pytest.param(rule("preset", "COUNTRY", "HAS_ANY_VALUE"), {}, False, id="no-country"),
        pytest.param(rule("preset", "DEVICE_TYPE", "HAS_ANY_VALUE"), headers(User_Agent="curl/8.5.0"), True, id="ua"),
        pytest.param(rule("preset", "DEVICE_TYPE", "HAS_ANY_VALUE"), {}, False, id="no-user-agent"),
        pytest.param(rule("preset", "OPERATING_SYSTEM", "HAS_ANY_VALUE"), {}, False, id="no-user-agent-os"),
        pytest.param(rule("preset", "DATE_AND_TIME", "HAS_ANY_VALUE"), {}, True, id="request-time-always"),
    ],
)
def test_has_any_value_on_presets(tmp_path: Path, definition_rule: Json, description: Json, expected: bool) -> None:
    check(tmp_path, definition_rule, description, expected)


# -- IS_TRUE / IS_FALSE ----------------------------------------------------------------------------

BOOLEAN_CASES = [
    pytest.param("IS_TRUE", True, True, id="true-bool"),
    pytest.param("IS_TRUE", "true", True, id="true-string"),
    pytest.param("IS_TRUE", False, False, id="true-vs-false-bool"),
    pytest.param("IS_TRUE", "false", False, id="true-vs-false-string"),
    pytest.param("IS_TRUE", "yes", False, id="true-vs-other-string"),
    pytest.param("IS_TRUE", "1", False, id="true-vs-digit-string"),
    pytest.param("IS_TRUE", "", False, id="true-vs-empty-string"),
    pytest.param("IS_TRUE", "True", False, id="true-vs-capitalised-string"),
    pytest.param("IS_FALSE", False, True, id="false-bool"),
    pytest.param("IS_FALSE", "false", True, id="false-string"),
    pytest.param("IS_FALSE", True, False, id="false-vs-true-bool"),
    pytest.param("IS_FALSE", "true", False, id="false-vs-true-string"),
    pytest.param("IS_FALSE", "no", False, id="false-vs-other-string"),
    pytest.param("IS_FALSE", "0", False, id="false-vs-digit-string"),
    pytest.param("IS_FALSE", "", False, id="false-vs-empty-string"),
    pytest.param("IS_FALSE", "FALSE", False, id="false-vs-capitalised-string"),
]


@pytest.mark.parametrize(("condition", "value", "expected"), BOOLEAN_CASES)
def test_is_true_and_is_false_accept_booleans_and_their_strings(
    tmp_path: Path, condition: str, value: Any, expected: bool
) -> None:
    check(tmp_path, custom_rule("subscribed", condition), stored(subscribed=value), expected)


@pytest.mark.parametrize("condition", ["IS_TRUE", "IS_FALSE"])
def test_boolean_condition_on_missing_attribute_is_false(tmp_path: Path, condition: str) -> None:
    check(tmp_path, custom_rule("subscribed", condition), stored(), False)


# -- NUMBER_* --------------------------------------------------------------------------------------

NUMBER_CASES = [
    pytest.param("NUMBER_EQUAL_TO", 41, 41, True, id="eq-int"),
    pytest.param("NUMBER_EQUAL_TO", 41, 41.0, True, id="eq-float-value"),
    pytest.param("NUMBER_EQUAL_TO", 41, "41", True, id="eq-numeric-string"),
    pytest.param("NUMBER_EQUAL_TO", 41, "41.0", True, id="eq-numeric-float-string"),
    pytest.param("NUMBER_EQUAL_TO", 41, 42, False, id="eq-different"),
    pytest.param("NUMBER_EQUAL_TO", 41, "forty-one", False, id="eq-non-numeric"),
    pytest.param("NUMBER_EQUAL_TO", 2.5, 2.5, True, id="eq-float-operand"),
    pytest.param("NUMBER_EQUAL_TO", "41", 41, True, id="eq-numeric-string-operand"),
    pytest.param("NUMBER_GREATER_THAN", 10, 11, True, id="gt-int"),
    pytest.param("NUMBER_GREATER_THAN", 10, 10, False, id="gt-equal-is-not-greater"),
    pytest.param("NUMBER_GREATER_THAN", 10, 10.01, True, id="gt-float"),
    pytest.param("NUMBER_GREATER_THAN", 10, "12", True, id="gt-numeric-string"),
    pytest.param("NUMBER_GREATER_THAN", 10, "9.99", False, id="gt-numeric-string-smaller"),
    pytest.param("NUMBER_GREATER_THAN", 10, "abc", False, id="gt-non-numeric"),
    pytest.param("NUMBER_GREATER_THAN", 10, "", False, id="gt-empty-string"),
    pytest.param("NUMBER_GREATER_THAN", 2.5, 2.6, True, id="gt-float-operand"),
    pytest.param("NUMBER_LESS_THAN", 10, 9, True, id="lt-int"),
    pytest.param("NUMBER_LESS_THAN", 10, 10, False, id="lt-equal-is-not-less"),
    pytest.param("NUMBER_LESS_THAN", 10, -3.5, True, id="lt-negative-float"),
    pytest.param("NUMBER_LESS_THAN", 10, "9.5", True, id="lt-numeric-string"),
    pytest.param("NUMBER_LESS_THAN", 10, "11", False, id="lt-numeric-string-larger"),
    pytest.param("NUMBER_LESS_THAN", 10, "abc", False, id="lt-non-numeric"),
]


@pytest.mark.parametrize(("condition", "operand", "value", "expected"), NUMBER_CASES)
def test_number_conditions_compare_float_of_value(
    tmp_path: Path, condition: str, operand: Any, value: Any, expected: bool
) -> None:
    check(
        tmp_path,
        custom_rule("score", condition, {"__type": "NumberMatchOptions", "value": operand}),
        stored(score=value),
        expected,
    )


@pytest.mark.parametrize("condition", ["NUMBER_EQUAL_TO", "NUMBER_GREATER_THAN", "NUMBER_LESS_THAN"])
def test_number_condition_on_missing_attribute_is_false(tmp_path: Path, condition: str) -> None:
    check(tmp_path, custom_rule("score", condition, -1e9 if condition == "NUMBER_GREATER_THAN" else 1e9), {}, False)


# -- JSON_MATCH on QUERY_PARAMETERS ----------------------------------------------------------------


def query_match(options: Json, invert: bool = False) -> Json:
    return rule("preset", "QUERY_PARAMETERS", "JSON_MATCH", options, invert)


BF = {"value": {"utm_campaign": "bf"}}
BF_KEY = {"key": "utm_campaign", "value": "bf"}
TWO = {"value": {"utm_campaign": "bf", "utm_source": "news"}}

JSON_MATCH_CASES = [
    pytest.param(BF, page("https://shop.example/p?utm_campaign=bf"), True, id="value-form"),
    pytest.param(BF_KEY, page("https://shop.example/p?utm_campaign=bf"), True, id="key-value-form"),
    pytest.param(BF, page("https://shop.example/p?utm_campaign=cm"), False, id="value-form-other-value"),
    pytest.param(BF_KEY, page("https://shop.example/p?utm_campaign=cm"), False, id="key-form-other-value"),
    pytest.param(BF, page("https://shop.example/p?x=1&utm_campaign=bf&y=2"), True, id="extra-params-allowed"),
    pytest.param(BF, page("https://shop.example/p?utm_campaign=b%66"), True, id="percent-decoded"),
    pytest.param(BF, page("https://shop.example/p?utm_source=bf"), False, id="missing-param"),
    pytest.param(BF_KEY, page("https://shop.example/p?utm_source=bf"), False, id="key-form-missing-param"),
    pytest.param(BF, page("https://shop.example/p"), False, id="no-query"),
    pytest.param(BF, {}, False, id="no-url"),
    pytest.param(TWO, page("https://shop.example/p?utm_source=news&utm_campaign=bf"), True, id="all-params-match"),
    pytest.param(TWO, page("https://shop.example/p?utm_campaign=bf"), False, id="one-of-two-missing"),
    pytest.param(TWO, page("https://shop.example/p?utm_campaign=bf&utm_source=ads"), False, id="one-of-two-wrong"),
    pytest.param(BF, headers(X_Page_Url="https://shop.example/p?utm_campaign=bf"), True, id="x-page-url-header"),
    pytest.param(
        BF,
        {
            "url": "https://shop.example/p?utm_campaign=cm",
            "headers": {"X-Page-Url": "https://shop.example/?utm_campaign=bf"},
        },
        True,
        id="x-page-url-wins-over-url",
    ),
    pytest.param(
        BF,
        {
            "url": "https://shop.example/p?utm_campaign=bf",
            "headers": {"X-Page-Url": "https://shop.example/?utm_campaign=cm"},
        },
        False,
        id="url-ignored-when-x-page-url-given",
    ),
]


@pytest.mark.parametrize(("options", "description", "expected"), JSON_MATCH_CASES)
def test_json_match_requires_every_named_query_param(
    tmp_path: Path, options: Json, description: Json, expected: bool
) -> None:
    check(tmp_path, query_match(options), description, expected)


def test_json_match_inverted_without_query_is_true(tmp_path: Path) -> None:
    check(tmp_path, query_match(BF, invert=True), page("https://shop.example/p"), True)


def test_json_match_inverted_with_matching_query_is_false(tmp_path: Path) -> None:
    check(tmp_path, query_match(BF, invert=True), page("https://shop.example/p?utm_campaign=bf"), False)


# -- time ------------------------------------------------------------------------------------------

SALE_START = "2026-11-27T00:00:00Z"
SALE_END = "2026-12-01T00:00:00Z"


def when(condition: str, options: Json) -> Json:
    return rule("preset", "DATE_AND_TIME", condition, options)


TIME_CASES = [
    pytest.param("BEFORE_TIME", {"value": SALE_START}, "2026-11-26T23:59:59Z", True, id="before-earlier"),
    pytest.param("BEFORE_TIME", {"value": SALE_START}, SALE_START, False, id="before-is-strict"),
    pytest.param("BEFORE_TIME", {"value": SALE_START}, "2026-11-27T00:00:01Z", False, id="before-later"),
    pytest.param("BEFORE_TIME", {"value": "2026-11-27T01:00:00+01:00"}, SALE_START, False, id="before-offset-equal"),
    pytest.param(
        "BEFORE_TIME", {"value": "2026-11-27T01:00:00+01:00"}, "2026-11-26T23:59:00Z", True, id="before-offset"
    ),
    pytest.param("AFTER_TIME", {"value": SALE_START}, "2026-11-27T00:00:01Z", True, id="after-later"),
    pytest.param("AFTER_TIME", {"value": SALE_START}, SALE_START, False, id="after-is-strict"),
    pytest.param("AFTER_TIME", {"value": SALE_START}, "2026-11-26T23:59:59Z", False, id="after-earlier"),
    pytest.param("AFTER_TIME", {"value": SALE_START}, "2026-11-27T01:00:00+01:00", False, id="after-now-offset-equal"),
    pytest.param("BETWEEN_TIME", {"start": SALE_START, "end": SALE_END}, SALE_START, True, id="between-start-incl"),
    pytest.param("BETWEEN_TIME", {"start": SALE_START, "end": SALE_END}, "2026-11-29T12:00:00Z", True, id="inside"),
    pytest.param("BETWEEN_TIME", {"start": SALE_START, "end": SALE_END}, SALE_END, False, id="between-end-excl"),
    pytest.param(
        "BETWEEN_TIME", {"start": SALE_START, "end": SALE_END}, "2026-11-30T23:59:59Z", True, id="between-last-second"
    ),
    pytest.param(
        "BETWEEN_TIME", {"start": SALE_START, "end": SALE_END}, "2026-11-26T23:59:59Z", False, id="between-before"
    ),
    pytest.param(
        "BETWEEN_TIME", {"start": SALE_START, "end": SALE_END}, "2026-12-01T00:00:01Z", False, id="between-after"
    ),
]


@pytest.mark.parametrize(("condition", "options", "now", "expected"), TIME_CASES)
def test_time_conditions_compare_request_time(
    tmp_path: Path, condition: str, options: Json, now: str, expected: bool
) -> None:
    check(tmp_path, when(condition, options), at(now), expected)


@pytest.mark.parametrize(
    ("condition", "options", "expected"),
    [
        pytest.param("AFTER_TIME", {"value": "2026-11-22T09:59:59Z"}, True, id="after-a-second-before-clock"),
        pytest.param("BEFORE_TIME", {"value": "2026-11-22T09:59:59Z"}, False, id="before-a-second-before-clock"),
        pytest.param("BETWEEN_TIME", {"start": FIXED_NOW, "end": "2026-11-22T10:00:01Z"}, True, id="between-clock"),
    ],
)
def test_request_time_is_the_clock_when_description_has_no_now(
    tmp_path: Path, condition: str, options: Json, expected: bool
) -> None:
    check(tmp_path, when(condition, options), {}, expected)


# -- Lytics ----------------------------------------------------------------------------------------


def member_of(slug: str, invert: bool = False) -> Json:
    return rule(
        "lytics",
        "LYTICS_AUDIENCE",
        "IS_MEMBER_OF",
        {"__type": "AudienceMatchOptions", "value": lytics_uid(slug)},
        invert,
    )


def live_header(values: Json) -> Json:
    return {"X-Live-Attributes": json.dumps(values)}


LYTICS_AUDIENCE_CASES = [
    pytest.param(cookie("cs-lytics-audiences=|vip|"), True, id="cookie-single"),
    pytest.param(cookie("cs-lytics-audiences=|churn_risk|vip|"), True, id="cookie-several"),
    pytest.param(cookie("cs-lytics-audiences=|churn_risk|"), False, id="cookie-other-audience"),
    pytest.param(cookie("cs-lytics-audiences=|vipers|"), False, id="cookie-slug-prefix-is-not-member"),
    pytest.param(cookie("cs-lytics-audiences=||"), False, id="cookie-empty-set"),
    pytest.param(cookie("other=|vip|"), False, id="other-cookie"),
    pytest.param({}, False, id="no-cookie"),
    pytest.param(live(__lytics_audiences="|vip|"), True, id="live-attribute"),
    pytest.param(
        {**live(__lytics_audiences="|vip|"), **cookie("cs-lytics-audiences=|churn_risk|")},
        True,
        id="live-attribute-overrides-cookie-in",
    ),
    pytest.param(
        {**live(__lytics_audiences="|churn_risk|"), **cookie("cs-lytics-audiences=|vip|")},
        False,
        id="live-attribute-overrides-cookie-out",
    ),
    pytest.param({"headers": live_header({"__lytics_audiences": "|vip|"})}, True, id="live-attribute-header"),
    pytest.param(
        {"headers": {**live_header({"__lytics_audiences": "|churn_risk|"}), "Cookie": "cs-lytics-audiences=|vip|"}},
        False,
        id="live-attribute-header-overrides-cookie",
    ),
    pytest.param(stored(__lytics_audiences="|vip|"), False, id="stored-attribute-is-not-lytics-source"),
]


@pytest.mark.parametrize(("description", "expected"), LYTICS_AUDIENCE_CASES)
def test_is_member_of_reads_live_lytics_audiences_else_cookie(
    tmp_path: Path, description: Json, expected: bool
) -> None:
    check(tmp_path, member_of("vip"), description, expected)


def test_is_member_of_inverted_without_lytics_audiences_is_true(tmp_path: Path) -> None:
    check(tmp_path, member_of("vip", invert=True), {}, True)


def test_is_member_of_inverted_for_member_is_false(tmp_path: Path) -> None:
    check(tmp_path, member_of("vip", invert=True), cookie("cs-lytics-audiences=|vip|"), False)


FLOW = rule("lytics", "LYTICS_FLOW_STATE", "IS_IN_FLOW_STATE", {"flowId": "onboarding", "flowState": "engaged"})

FLOW_CASES = [
    pytest.param(cookie("cs-lytics-flows=|onboarding:engaged|"), True, id="in-state"),
    pytest.param(cookie("cs-lytics-flows=|nurture:new|onboarding:engaged|"), True, id="one-of-several-flows"),
    pytest.param(cookie("cs-lytics-flows=|onboarding:dormant|"), False, id="same-flow-other-state"),
    pytest.param(cookie("cs-lytics-flows=|nurture:engaged|"), False, id="other-flow-same-state"),
    pytest.param(cookie("cs-lytics-audiences=|onboarding:engaged|"), False, id="audiences-cookie-is-not-flows"),
    pytest.param({}, False, id="no-cookie"),
]


@pytest.mark.parametrize(("description", "expected"), FLOW_CASES)
def test_is_in_flow_state_reads_flow_id_and_state_from_cookie(
    tmp_path: Path, description: Json, expected: bool
) -> None:
    check(tmp_path, FLOW, description, expected)


def test_variant_lytics_audiences_match_by_slug(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        audiences=[lytics_audience("vip"), lytics_audience("churn_risk")],
        experiences=[
            (
                experience("lytics variants", "0"),
                [
                    version(
                        "ACTIVE",
                        [
                            segmented_variant("0", lytics_audiences=[lytics_uid("churn_risk")]),
                            segmented_variant("1", lytics_audiences=[lytics_uid("vip")]),
                        ],
                    )
                ],
            )
        ],
    )
    assert decide_one(rules, cookie("cs-lytics-audiences=|vip|"))["activeVariants"] == {"0": "1"}
    assert decide_one(rules, cookie("cs-lytics-audiences=|churn_risk|vip|"))["activeVariants"] == {"0": "0"}
    assert decide_one(rules, cookie("cs-lytics-audiences=|other|"))["activeVariants"] == {"0": None}


@pytest.mark.parametrize(
    ("combination", "description", "expected"),
    [
        pytest.param("AND", {**stored(tier="gold"), **cookie("cs-lytics-audiences=|vip|")}, True, id="and-both"),
        pytest.param("AND", stored(tier="gold"), False, id="and-audience-only"),
        pytest.param("AND", cookie("cs-lytics-audiences=|vip|"), False, id="and-lytics-only"),
        pytest.param("OR", stored(tier="gold"), True, id="or-audience-only"),
        pytest.param("OR", cookie("cs-lytics-audiences=|vip|"), True, id="or-lytics-only"),
        pytest.param("OR", stored(tier="silver"), False, id="or-neither"),
    ],
)
def test_variant_combines_audiences_and_lytics_audiences(
    tmp_path: Path, combination: str, description: Json, expected: bool
) -> None:
    gold = audience("gold", group("AND", tier_is("gold")))
    variant = segmented_variant("0", [gold["uid"]], lytics_audiences=[lytics_uid("vip")], combination=combination)
    rules = write_rules(
        tmp_path,
        attributes=[attribute("tier")],
        audiences=[gold, lytics_audience("vip")],
        experiences=[(experience("mixed", "0"), [version("ACTIVE", [variant])])],
    )
    assert (decide_one(rules, description)["activeVariants"]["0"] == "0") is expected


# -- invertCondition -------------------------------------------------------------------------------

INVERT_CASES = [
    pytest.param(tier_is("gold", invert=True), stored(), True, id="missing-custom-attribute"),
    pytest.param(tier_is("gold", invert=True), stored(tier=None), True, id="null-custom-attribute"),
    pytest.param(tier_is("gold", invert=True), stored(tier="gold"), False, id="matching-value"),
    pytest.param(tier_is("gold", invert=True), stored(tier="silver"), True, id="non-matching-value"),
    pytest.param(custom_rule("nickname", "HAS_ANY_VALUE", invert=True), stored(nickname=""), True, id="empty-string"),
    pytest.param(custom_rule("nickname", "HAS_ANY_VALUE", invert=True), stored(nickname="k"), False, id="has-value"),
    pytest.param(custom_rule("score", "NUMBER_GREATER_THAN", 5, invert=True), stored(score="n/a"), True, id="nan"),
    pytest.param(custom_rule("score", "NUMBER_GREATER_THAN", 5, invert=True), stored(score=6), False, id="num-true"),
    pytest.param(custom_rule("subscribed", "IS_TRUE", invert=True), stored(), True, id="missing-boolean"),
    pytest.param(rule("preset", "COUNTRY", "STRING_EQUALS", "GB", invert=True), {}, True, id="missing-geo"),
    pytest.param(rule("preset", "COUNTRY", "STRING_EQUALS", "GB", invert=True), geo(country="gb"), False, id="geo"),
    pytest.param(rule("preset", "DEVICE_TYPE", "STRING_EQUALS", "BOT", invert=True), {}, True, id="missing-ua"),
    pytest.param(rule("preset", "REFERRER", "CONTAINS_SUBSTRING", "x", invert=True), {}, True, id="missing-referrer"),
]


@pytest.mark.parametrize(("definition_rule", "description", "expected"), INVERT_CASES)
def test_invert_condition_negates_after_missing_value_is_false(
    tmp_path: Path, definition_rule: Json, description: Json, expected: bool
) -> None:
    check(tmp_path, definition_rule, description, expected)


def test_inverted_rule_with_missing_attribute_is_true(tmp_path: Path) -> None:
    check(tmp_path, custom_rule("visits", "NUMBER_LESS_THAN", 3, invert=True), stored(tier="gold"), True)


# -- live vs stored attributes ---------------------------------------------------------------------

LIVE_CASES = [
    pytest.param(stored(tier="gold"), True, id="stored-only"),
    pytest.param(live(tier="gold"), True, id="live-only"),
    pytest.param({**stored(tier="silver"), **live(tier="gold")}, True, id="live-beats-stored"),
    pytest.param({**stored(tier="gold"), **live(tier="silver")}, False, id="live-beats-stored-out"),
    pytest.param({**stored(tier="silver"), "headers": live_header({"tier": "gold"})}, True, id="header-beats-stored"),
    pytest.param(
        {**stored(tier="gold"), "headers": live_header({"tier": "silver"})}, False, id="header-beats-stored-out"
    ),
    pytest.param({**live(tier="silver"), "headers": live_header({"tier": "gold"})}, False, id="field-beats-header"),
    pytest.param({**live(tier="gold"), "headers": live_header({"tier": "silver"})}, True, id="field-beats-header-in"),
    pytest.param({**live(visits=3), "headers": live_header({"tier": "gold"})}, True, id="header-and-field-merge"),
    pytest.param({**stored(tier="gold"), **live(visits=3)}, True, id="live-other-key-keeps-stored"),
]


@pytest.mark.parametrize(("description", "expected"), LIVE_CASES)
def test_live_attributes_override_stored_and_field_overrides_header(
    tmp_path: Path, description: Json, expected: bool
) -> None:
    check(tmp_path, tier_is("gold"), description, expected)


# -- geo -------------------------------------------------------------------------------------------

GEO_CASES = [
    pytest.param("COUNTRY", "GB", headers(CF_IPCountry="GB"), True, id="cf-ipcountry"),
    pytest.param("COUNTRY", "US", headers(CF_IPCountry="GB"), False, id="cf-ipcountry-other"),
    pytest.param("COUNTRY", "US", headers(CloudFront_Viewer_Country="US"), True, id="cloudfront-country"),
    pytest.param("REGION", "WA", headers(CloudFront_Viewer_Country_Region="WA"), True, id="cloudfront-region"),
    pytest.param("CITY", "Seattle", headers(CloudFront_Viewer_City="Seattle"), True, id="cloudfront-city"),
    pytest.param("COUNTRY", "DE", headers(X_Vercel_IP_Country="DE"), True, id="vercel-country"),
    pytest.param("COUNTRY", "FR", {**geo(country="FR"), **headers(CF_IPCountry="GB")}, True, id="field-beats-header"),
    pytest.param("COUNTRY", "GB", {**geo(country="FR"), **headers(CF_IPCountry="GB")}, False, id="header-ignored"),
    pytest.param("CITY", "Paris", {**geo(country="FR"), **headers(CF_IPCity="Paris")}, True, id="fields-merge"),
    pytest.param("COUNTRY", "GB", {"ip": "81.2.69.160"}, False, id="no-database-no-geo"),
]


@pytest.mark.parametrize(("preset_name", "expected_value", "description", "expected"), GEO_CASES)
def test_geo_comes_from_description_field_then_cdn_headers(
    tmp_path: Path, preset_name: str, expected_value: str, description: Json, expected: bool
) -> None:
    check(tmp_path, rule("preset", preset_name, "STRING_EQUALS", expected_value), description, expected)


@pytest.fixture(scope="module")
def maxmind(geoip_db: Path) -> MaxMindGeo:
    return MaxMindGeo(geoip_db)


MAXMIND_CASES = [
    pytest.param("COUNTRY", "GB", {"ip": "81.2.69.160"}, True, id="london-country"),
    pytest.param("REGION", "ENG", {"ip": "81.2.69.160"}, True, id="london-region"),
    pytest.param("CITY", "London", {"ip": "81.2.69.160"}, True, id="london-city"),
    pytest.param("COUNTRY", "US", {"ip": "81.2.69.160"}, False, id="london-is-not-us"),
    pytest.param("COUNTRY", "US", {"ip": "216.160.83.56"}, True, id="milton-country"),
    pytest.param("REGION", "WA", {"ip": "216.160.83.56"}, True, id="milton-region"),
    pytest.param("CITY", "Milton", {"ip": "216.160.83.56"}, True, id="milton-city"),
    pytest.param("COUNTRY", "GB", {"ip": "10.0.0.1"}, False, id="unknown-ip"),
    pytest.param("COUNTRY", "GB", {"ip": "not-an-ip"}, False, id="invalid-ip"),
    pytest.param("COUNTRY", "GB", {}, False, id="no-ip"),
    pytest.param("COUNTRY", "GB", headers(X_Forwarded_For="81.2.69.160, 10.0.0.1"), True, id="x-forwarded-for"),
    pytest.param("COUNTRY", "FR", {"ip": "81.2.69.160", **geo(country="FR")}, True, id="field-beats-database"),
    pytest.param("COUNTRY", "GB", {"ip": "81.2.69.160", **geo(country="FR")}, False, id="database-ignored-for-field"),
    pytest.param("COUNTRY", "FR", {"ip": "81.2.69.160", **headers(CF_IPCountry="FR")}, True, id="header-beats-db"),
    pytest.param("COUNTRY", "GB", {"ip": "81.2.69.160", **headers(CF_IPCountry="FR")}, False, id="db-ignored-for-hdr"),
    pytest.param(
        "COUNTRY",
        "FR",
        {"ip": "81.2.69.160", **geo(country="FR"), **headers(CF_IPCountry="DE")},
        True,
        id="field-beats-header-beats-database",
    ),
    pytest.param("CITY", "London", {"ip": "81.2.69.160", **geo(country="GB")}, True, id="database-fills-gaps"),
]


@pytest.mark.parametrize(("preset_name", "expected_value", "description", "expected"), MAXMIND_CASES)
def test_geo_from_maxmind_database_has_lowest_precedence(
    tmp_path: Path, maxmind: MaxMindGeo, preset_name: str, expected_value: str, description: Json, expected: bool
) -> None:
    check(
        tmp_path,
        rule("preset", preset_name, "STRING_EQUALS", expected_value),
        description,
        expected,
        geo_lookup=maxmind.lookup,
    )


# -- DEVICE_TYPE / OPERATING_SYSTEM ----------------------------------------------------------------

UA = {
    "iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1",
    "android-phone": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36",
    "android-tablet": "Mozilla/5.0 (Linux; Android 13; Pixel Tablet) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "galaxy-tab": "Mozilla/5.0 (Linux; Android 12; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "ipad": "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1",
    "windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "macos": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "linux": "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "chromeos": "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
}

DEVICE_TYPES = ("DESKTOP", "MOBILE", "TABLET", "BOT", "OTHER")
OPERATING_SYSTEMS = ("WINDOWS", "MACOS", "IOS", "ANDROID", "LINUX", "CHROME_OS", "OTHER")


def enumeration_project(tmp_path: Path, preset_name: str, values: tuple[str, ...]) -> Path:
    """Experience "0" with one variant per value (variant i: the preset STRING_EQUALS values[i])."""
    audiences = [
        audience(f"{preset_name} {value}", group("AND", rule("preset", preset_name, "STRING_EQUALS", value)))
        for value in values
    ]
    variants = [segmented_variant(str(i), [uid_for(f"{preset_name} {value}")]) for i, value in enumerate(values)]
    return write_rules(
        tmp_path, audiences=audiences, experiences=[(experience("enum", "0"), [version("ACTIVE", variants)])]
    )


def classified(rules: Path, values: tuple[str, ...], description: Json) -> str | None:
    variant = decide_one(rules, description)["activeVariants"]["0"]
    return None if variant is None else values[int(variant)]


UA_CASES = [
    pytest.param(UA["iphone"], "MOBILE", "IOS", id="iphone"),
    pytest.param(UA["android-phone"], "MOBILE", "ANDROID", id="android-phone"),
    pytest.param(UA["android-tablet"], "TABLET", "ANDROID", id="android-tablet-without-mobile"),
    pytest.param(UA["galaxy-tab"], "TABLET", "ANDROID", id="android-tablet-model-without-mobile"),
    pytest.param(UA["ipad"], "TABLET", "IOS", id="ipad"),
    pytest.param(UA["windows"], "DESKTOP", "WINDOWS", id="windows"),
    pytest.param(UA["macos"], "DESKTOP", "MACOS", id="macos"),
    pytest.param(UA["linux"], "DESKTOP", "LINUX", id="linux"),
    pytest.param(UA["chromeos"], "DESKTOP", "CHROME_OS", id="chromeos"),
]


@pytest.mark.parametrize(("user_agent", "device_type", "operating_system"), UA_CASES)
def test_device_type_and_operating_system_from_user_agent(
    tmp_path: Path, user_agent: str, device_type: str, operating_system: str
) -> None:
    description = headers(User_Agent=user_agent)
    devices = enumeration_project(tmp_path / "device", "DEVICE_TYPE", DEVICE_TYPES)
    systems = enumeration_project(tmp_path / "os", "OPERATING_SYSTEM", OPERATING_SYSTEMS)
    assert classified(devices, DEVICE_TYPES, description) == device_type
    assert classified(systems, OPERATING_SYSTEMS, description) == operating_system


def test_googlebot_is_a_bot(tmp_path: Path) -> None:
    devices = enumeration_project(tmp_path, "DEVICE_TYPE", DEVICE_TYPES)
    assert classified(devices, DEVICE_TYPES, headers(User_Agent=UA["googlebot"])) == "BOT"


def test_unknown_user_agent_is_other(tmp_path: Path) -> None:
    devices = enumeration_project(tmp_path / "device", "DEVICE_TYPE", DEVICE_TYPES)
    systems = enumeration_project(tmp_path / "os", "OPERATING_SYSTEM", OPERATING_SYSTEMS)
    assert classified(devices, DEVICE_TYPES, headers(User_Agent="SomethingWeird/1.0")) == "OTHER"
    assert classified(systems, OPERATING_SYSTEMS, headers(User_Agent="SomethingWeird/1.0")) == "OTHER"


@pytest.mark.parametrize(
    "description", [pytest.param({}, id="absent"), pytest.param(headers(User_Agent=""), id="empty")]
)
def test_missing_user_agent_has_no_device_type_or_operating_system(tmp_path: Path, description: Json) -> None:
    devices = enumeration_project(tmp_path / "device", "DEVICE_TYPE", DEVICE_TYPES)
    systems = enumeration_project(tmp_path / "os", "OPERATING_SYSTEM", OPERATING_SYSTEMS)
    assert classified(devices, DEVICE_TYPES, description) is None
    assert classified(systems, OPERATING_SYSTEMS, description) is None


def test_user_agent_header_name_is_case_insensitive(tmp_path: Path) -> None:
    devices = enumeration_project(tmp_path, "DEVICE_TYPE", DEVICE_TYPES)
    assert classified(devices, DEVICE_TYPES, {"headers": {"user-agent": UA["ipad"]}}) == "TABLET"


# -- REFERRER --------------------------------------------------------------------------------------


def test_referrer_is_the_full_referer_header_url(tmp_path: Path) -> None:
    url = "https://news.example/articles/42?ref=rss#top"
    rules = segmented_experience(tmp_path, group("AND", rule("preset", "REFERRER", "STRING_EQUALS", url)))
    assert in_segment(rules, headers(Referer=url)) is True
    assert in_segment(rules, {"headers": {"referer": url}}) is True
    assert in_segment(rules, headers(Referer="https://news.example/articles/42")) is False


# -- groups ----------------------------------------------------------------------------------------

GOLD = tier_is("gold")
REGULAR = custom_rule("visits", "NUMBER_GREATER_THAN", 3)
SUBSCRIBED = custom_rule("subscribed", "IS_TRUE")
UK = rule("preset", "COUNTRY", "STRING_EQUALS", "GB")

GROUP_CASES = [
    pytest.param(group("AND", GOLD, REGULAR), stored(tier="gold", visits=4), True, id="and-all-true"),
    pytest.param(group("AND", GOLD, REGULAR), stored(tier="gold", visits=2), False, id="and-one-false"),
    pytest.param(group("OR", GOLD, REGULAR), stored(tier="silver", visits=4), True, id="or-one-true"),
    pytest.param(group("OR", GOLD, REGULAR), stored(tier="silver", visits=1), False, id="or-none-true"),
    pytest.param(group("AND"), {}, True, id="empty-and-is-true"),
    pytest.param(group("OR"), {}, False, id="empty-or-is-false"),
    pytest.param(group("AND", group("OR")), {}, False, id="and-of-empty-or"),
    pytest.param(group("OR", group("AND")), {}, True, id="or-of-empty-and"),
    pytest.param(group("AND", GOLD, group("AND")), stored(tier="gold"), True, id="empty-and-is-neutral"),
    pytest.param(group("OR", GOLD, group("OR")), stored(tier="silver"), False, id="empty-or-is-neutral"),
    pytest.param(
        group("AND", group("OR", GOLD, REGULAR), SUBSCRIBED),
        stored(visits=9, subscribed=True),
        True,
        id="2-levels-and-or-true",
    ),
    pytest.param(
        group("AND", group("OR", GOLD, REGULAR), SUBSCRIBED),
        stored(visits=9, subscribed=False),
        False,
        id="2-levels-and-or-false",
    ),
    pytest.param(
        group("OR", group("AND", GOLD, REGULAR), SUBSCRIBED),
        stored(tier="gold", visits=1),
        False,
        id="2-levels-or-and-false",
    ),
    pytest.param(
        group("OR", group("AND", GOLD, REGULAR), SUBSCRIBED), stored(subscribed="true"), True, id="2-levels-or-and-true"
    ),
    pytest.param(
        group("OR", group("AND", GOLD, group("OR", REGULAR, SUBSCRIBED)), UK),
        stored(tier="gold", subscribed=True),
        True,
        id="3-levels-through-inner-or",
    ),
    pytest.param(
        group("OR", group("AND", GOLD, group("OR", REGULAR, SUBSCRIBED)), UK),
        stored(tier="gold", visits=1, subscribed=False),
        False,
        id="3-levels-inner-or-false",
    ),
    pytest.param(
        group("OR", group("AND", GOLD, group("OR", REGULAR, SUBSCRIBED)), UK),
        {**stored(tier="bronze"), **geo(country="GB")},
        True,
        id="3-levels-through-outer-rule",
    ),
    pytest.param(
        group("AND", group("OR", group("AND", GOLD, UK), SUBSCRIBED), group("OR", REGULAR, tier_is("gold", True))),
        {**stored(tier="gold", visits=5), **geo(country="gb")},
        True,
        id="3-levels-both-branches",
    ),
    pytest.param(
        group("AND", group("OR", group("AND", GOLD, UK), SUBSCRIBED), group("OR", REGULAR, tier_is("gold", True))),
        {**stored(tier="gold", visits=2), **geo(country="gb")},
        False,
        id="3-levels-second-branch-false",
    ),
]


@pytest.mark.parametrize(("definition", "description", "expected"), GROUP_CASES)
def test_rule_combinations_nest_with_all_and_any(
    tmp_path: Path, definition: Json, description: Json, expected: bool
) -> None:
    rules = segmented_experience(tmp_path, definition)
    assert in_segment(rules, description) is expected


# -- user uid --------------------------------------------------------------------------------------

UID_CASES = [
    pytest.param(
        {
            "headers": {"X-CS-Personalize-User-Uid": "from-header", "Cookie": "cs-personalize-user-uid=from-cookie"},
            "userUid": "from-field",
        },
        "from-header",
        id="header-first",
    ),
    pytest.param({"headers": {"x-cs-personalize-user-uid": "from-header"}}, "from-header", id="header-any-case"),
    pytest.param(
        {"headers": {"Cookie": "a=1; cs-personalize-user-uid=from-cookie"}, "userUid": "from-field"},
        "from-cookie",
        id="cookie-before-field",
    ),
    pytest.param({"userUid": "from-field"}, "from-field", id="field-last"),
    pytest.param({}, NEW_UID, id="new-when-none"),
]


@pytest.mark.parametrize(("description", "expected"), UID_CASES)
def test_user_uid_header_then_cookie_then_field_then_new(tmp_path: Path, description: Json, expected: str) -> None:
    rules = segmented_experience(tmp_path, group("AND"))
    assert decide_one(rules, description)["userUid"] == expected


def test_new_user_uid_is_a_uuid4(tmp_path: Path) -> None:
    snapshot = load_snapshot(segmented_experience(tmp_path, group("AND")))
    first, _ = decide_line(snapshot, "{}", 1, None)
    second, _ = decide_line(snapshot, "{}", 2, None)
    assert uuid.UUID(first["userUid"]).version == 4
    assert first["userUid"] != second["userUid"]


def test_user_uid_decides_ab_bucket_so_header_uid_is_used_for_bucketing(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        experiences=[
            (
                experience("ab", "0", "AB_TEST"),
                [
                    version(
                        "ACTIVE",
                        [
                            {"__type": "ABTestVariant", "shortUid": "0", "name": "a", "trafficDistribution": 50},
                            {"__type": "ABTestVariant", "shortUid": "1", "name": "b", "trafficDistribution": 50},
                        ],
                    )
                ],
            )
        ],
    )
    by_field = {f"u{i}": decide_one(rules, {"userUid": f"u{i}"})["activeVariants"]["0"] for i in range(40)}
    assert set(by_field.values()) == {"0", "1"}
    for uid, expected in by_field.items():
        described = {"headers": {"X-CS-Personalize-User-Uid": uid}, "userUid": "someone-else"}
        assert decide_one(rules, described)["activeVariants"]["0"] == expected
