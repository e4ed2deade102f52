"""Generate a project at Contentstack Personalize's default limits, in the CLI export layout.

100 experiences (half segmented with 20 variants each, half A/B, a third of those targeted), 100 audiences of
up to 10 rules each (nested groups, every preset and condition family), 20 custom attributes, 5 Lytics
audiences. Deterministic for a seed, so benchmark runs compare like with like.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

COUNTRIES = ["GB", "US", "CA", "DE", "FR", "AU", "IE", "NL", "ES", "IT"]
DEVICES = ["DESKTOP", "MOBILE", "TABLET"]
SYSTEMS = ["WINDOWS", "MACOS", "IOS", "ANDROID", "LINUX"]
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1",
]


def _uid(rng: random.Random, length: int = 24) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(length))


def _preset(name: str) -> dict[str, Any]:
    return {"__type": "PresetAttributeReference", "ref": name}


def _rule(attribute: dict[str, Any], condition: str, options: dict[str, Any] | None, invert: bool) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "__type": "Rule",
        "attribute": attribute,
        "attributeMatchCondition": condition,
        "invertCondition": invert,
    }
    if options is not None:
        rule["attributeMatchOptions"] = options
    return rule


def _random_rule(rng: random.Random, attributes: list[dict[str, Any]], lytics: list[dict[str, Any]]) -> dict[str, Any]:
    invert = rng.random() < 0.15
    kind = rng.randrange(9)
    if kind == 0:
        return _rule(
            _preset("COUNTRY"),
            "STRING_EQUALS",
            {"__type": "StringMatchOptions", "value": rng.choice(COUNTRIES)},
            invert,
        )
    if kind == 1:
        return _rule(
            _preset("DEVICE_TYPE"),
            "STRING_EQUALS",
            {"__type": "StringMatchOptions", "value": rng.choice(DEVICES)},
            invert,
        )
    if kind == 2:
        return _rule(
            _preset("OPERATING_SYSTEM"),
            "STRING_EQUALS",
            {"__type": "StringMatchOptions", "value": rng.choice(SYSTEMS)},
            invert,
        )
    if kind == 3:
        return _rule(
            _preset("QUERY_PARAMETERS"),
            "JSON_MATCH",
            {"value": {"utm_campaign": rng.choice(["bf", "spring", "email"])}},
            invert,
        )
    if kind == 4:
        return _rule(
            _preset("REFERRER"),
            "CONTAINS_SUBSTRING",
            {"__type": "StringMatchOptions", "value": rng.choice(["google", "bing", "news"])},
            invert,
        )
    if kind == 5:
        return _rule(_preset("DATE_AND_TIME"), "AFTER_TIME", {"value": "2026-11-01T00:00:00Z"}, invert)
    if kind == 6:
        audience = rng.choice(lytics)
        return _rule(
            {"__type": "LyticsAttributeReference", "ref": "LYTICS_AUDIENCE"},
            "IS_MEMBER_OF",
            {"__type": "AudienceMatchOptions", "value": audience["uid"]},
            invert,
        )
    attribute = rng.choice(attributes)
    ref = {"__type": "CustomAttributeReference", "ref": attribute["uid"]}
    if attribute["key"].startswith("n"):
        condition = rng.choice(["NUMBER_GREATER_THAN", "NUMBER_LESS_THAN", "NUMBER_EQUAL_TO"])
        return _rule(ref, condition, {"__type": "NumberMatchOptions", "value": rng.randrange(100)}, invert)
    if attribute["key"].startswith("b"):
        return _rule(ref, rng.choice(["IS_TRUE", "IS_FALSE", "HAS_ANY_VALUE"]), None, invert)
    return _rule(
        ref,
        rng.choice(["STRING_EQUALS", "CONTAINS_SUBSTRING"]),
        {"__type": "StringMatchOptions", "value": rng.choice(["gold", "silver", "bronze"])},
        invert,
    )


def _definition(rng: random.Random, attributes: list[dict[str, Any]], lytics: list[dict[str, Any]]) -> dict[str, Any]:
    count = rng.randint(1, 10)
    rules = [_random_rule(rng, attributes, lytics) for _ in range(count)]
    if count >= 4:  # nest: the last few rules form an inner group of the other combination
        split = rng.randint(2, count - 1)
        inner = {"__type": "RuleCombination", "combinationType": rng.choice(["AND", "OR"]), "rules": rules[split:]}
        rules = [*rules[:split], inner]
    return {"__type": "RuleCombination", "combinationType": rng.choice(["AND", "OR"]), "rules": rules}


def write_limits_project(root: Path, seed: int = 7) -> Path:
    rng = random.Random(seed)
    personalize = root / "personalize"
    for folder in ("projects", "attributes", "audiences", "events", "experiences/versions"):
        (personalize / folder).mkdir(parents=True, exist_ok=True)
    attributes = [
        {"uid": _uid(rng), "name": f"attr {i}", "key": f"{'nsb'[i % 3]}{i}", "description": ""} for i in range(20)
    ]
    lytics = [
        {"uid": _uid(rng, 32), "name": f"lytics {i}", "slug": f"segment_{i}", "source": "LYTICS"} for i in range(5)
    ]
    audiences = [
        {"uid": _uid(rng), "name": f"audience {i}", "definition": _definition(rng, attributes, lytics)}
        for i in range(100)
    ]
    events = [{"uid": _uid(rng), "key": f"event_{i}", "description": ""} for i in range(10)]
    experiences = []
    for i in range(100):
        uid = _uid(rng)
        segmented = i % 2 == 0
        experiences.append(
            {
                "uid": uid,
                "name": f"experience {i}",
                "shortUid": format(i, "x"),
                "__type": "SEGMENTED" if segmented else "AB_TEST",
                "tags": [f"section:{i % 5}"],
            }
        )
        version: dict[str, Any] = {"uid": _uid(rng), "status": "ACTIVE" if i % 17 else "PAUSED"}
        if segmented:
            version["variants"] = [
                {
                    "__type": "SegmentedVariant",
                    "shortUid": str(v),
                    "name": f"v{v}",
                    "audiences": [a["uid"] for a in rng.sample(audiences, rng.randint(1, 3))],
                    "audienceCombinationType": rng.choice(["AND", "OR"]),
                }
                for v in range(20)
            ]
        else:
            count = rng.randint(2, 5)
            version["variants"] = [
                {"__type": "ABTestVariant", "shortUid": str(v), "name": f"v{v}", "trafficDistribution": 100 / count}
                for v in range(count)
            ]
            version["variantSplit"] = "EQUALLY_SPLIT"
            if i % 3 == 1:
                version["targeting"] = {
                    "audience": {"audiences": [rng.choice(audiences)["uid"]], "audienceCombinationType": "OR"}
                }
            version["metrics"] = [{"__type": "Primary", "name": "goal", "event": rng.choice(events)["uid"]}]
        (personalize / "experiences" / "versions" / f"{uid}.json").write_text(json.dumps([version]))
    files = {
        "projects/projects.json": [{"uid": _uid(rng), "name": "limits"}],
        "attributes/attributes.json": attributes,
        "audiences/audiences.json": audiences + lytics,
        "events/events.json": events,
        "experiences/experiences.json": experiences,
        "experiences-priority.json": {"priorityOrder": [e["uid"] for e in reversed(experiences)]},
    }
    for name, data in files.items():
        (personalize / name).write_text(json.dumps(data))
    return root


def random_visitors(count: int, seed: int = 11) -> list[dict[str, Any]]:
    """Request descriptions with a spread of geo, devices, attributes and query strings."""
    rng = random.Random(seed)
    visitors = []
    for n in range(count):
        stored = {f"n{i}": rng.randrange(100) for i in range(0, 20, 3)}
        stored.update({f"b{i}": rng.random() < 0.5 for i in range(2, 20, 3)})
        stored.update({f"s{i}": rng.choice(["gold", "silver", "bronze", "none"]) for i in range(1, 20, 3)})
        cookie = f"cs-personalize-user-uid=user-{n}"
        if rng.random() < 0.3:
            cookie += f"; cs-lytics-audiences=|segment_{rng.randrange(5)}|"
        headers = {"User-Agent": rng.choice(USER_AGENTS), "Cookie": cookie}
        if rng.random() < 0.4:
            headers["Referer"] = rng.choice(["https://www.google.com/", "https://news.example/", "https://bing.com/"])
        visitors.append(
            {
                "url": f"https://shop.example/p?utm_campaign={rng.choice(['bf', 'spring', 'email', 'none'])}",
                "headers": headers,
                "geo": {"country": rng.choice(COUNTRIES), "region": "X", "city": "Y"},
                "storedAttributes": stored,
                "now": "2026-11-22T10:00:00Z",
            }
        )
    return visitors
