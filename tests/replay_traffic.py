"""Crafted rule sets and traffic for the replay tests, with answers that are known by construction."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rulesets import (
    ab_variant,
    attribute,
    audience,
    custom_rule,
    experience,
    group,
    rule,
    segmented_variant,
    uid_for,
    version,
    write_rules,
)

GB_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
NOW = "2026-11-22T10:00:00Z"


def shop_rules(tmp_path: Path, *, ab_weights: Sequence[float] = (50, 50), uk_country: str = "GB") -> Path:
    """Experience "0" SEGMENTED: variant 0 = UK audience (COUNTRY == uk_country), variant 1 = platinum tier
    (never in the crafted traffic). Experience "1" AB_TEST with `ab_weights`. Experience "2" SEGMENTED whose only
    variant needs the platinum tier: never activated. Audience "unused" is in no experience."""
    return write_rules(
        tmp_path,
        attributes=[attribute("tier")],
        audiences=[
            audience("uk", group("AND", rule("preset", "COUNTRY", "STRING_EQUALS", uk_country))),
            audience("platinum", group("AND", custom_rule("tier", "STRING_EQUALS", "platinum"))),
            audience("unused", group("AND", rule("preset", "REFERRER", "CONTAINS_SUBSTRING", "nowhere.example"))),
        ],
        experiences=[
            (
                experience("segments", "0"),
                [
                    version(
                        "ACTIVE",
                        [segmented_variant("0", [uid_for("uk")]), segmented_variant("1", [uid_for("platinum")])],
                    )
                ],
            ),
            (
                experience("split", "1", "AB_TEST"),
                [
                    version(
                        "ACTIVE",
                        [ab_variant(str(i), w) for i, w in enumerate(ab_weights)],
                        variantSplit="CUSTOM_PERCENTAGE",
                    )
                ],
            ),
            (experience("dormant", "2"), [version("ACTIVE", [segmented_variant("0", [uid_for("platinum")])])]),
        ],
        priority=[uid_for("experience:segments"), uid_for("experience:split"), uid_for("experience:dormant")],
    )


def visit(user: str, country: str, *, path: str = "/", now: str = NOW, tier: str | None = None) -> dict[str, Any]:
    description: dict[str, Any] = {
        "url": f"https://shop.example{path}",
        "method": "GET",
        "headers": {"User-Agent": GB_UA, "Cookie": f"cs-personalize-user-uid={user}"},
        "geo": {"country": country},
        "now": now,
    }
    if tier is not None:
        description["storedAttributes"] = {"tier": tier}
    return description


def crafted_traffic() -> list[dict[str, Any]]:
    """10 users, 3 page views each: u0-u3 in GB (12 requests), u4-u9 in US (18 requests)."""
    traffic = []
    for n in range(10):
        for page in ("/", "/products/a", "/cart"):
            traffic.append(visit(f"u{n}", "GB" if n < 4 else "US", path=page))
    return traffic


def write_jsonl(path: Path, items: Iterable[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def random_example_description(rng: random.Random) -> dict[str, Any]:
    """A varied visitor of the example project (rules/): devices, campaigns, clocks, geo, attributes, Lytics."""
    uas = [
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1",
        GB_UA,
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    ]
    cookies = [f"cs-personalize-user-uid=v{rng.randrange(300)}"]
    if rng.random() < 0.3:
        cookies.append(rng.choice(["cs-lytics-audiences=|vip_shoppers|", "cs-lytics-audiences=|high_value_shoppers|"]))
    if rng.random() < 0.2:
        cookies.append("cs-lytics-flows=|post-purchase-nurture:engaged|")
    headers = {"User-Agent": rng.choice(uas), "Cookie": "; ".join(cookies)}
    if rng.random() < 0.2:
        headers["Referer"] = rng.choice(
            ["https://www.google.com/search?q=x", "https://duckduckgo.com/", "https://a.b/"]
        )
    description: dict[str, Any] = {
        "url": "https://shop.example/" + rng.choice(["", "?utm_campaign=bf", "?ref=newsletter", "?utm_campaign=x"]),
        "headers": headers,
        "now": rng.choice(["2026-11-20T10:00:00Z", "2026-11-27T00:00:00Z", "2026-11-30T23:59:59Z",
                           "2026-12-01T00:00:00Z", "2026-12-15T12:00:00Z", "2027-03-01T00:00:00Z"]),
    }  # fmt: skip
    if rng.random() < 0.7:
        description["geo"] = rng.choice(
            [{"country": "GB", "region": "ENG", "city": "London"}, {"country": "US", "region": "WA"}, {"country": "gb"}]
        )
    if rng.random() < 0.5:
        description["storedAttributes"] = {
            "tier": rng.choice(["gold", "silver", "bronze"]),
            "visits": rng.choice([0, 1, 2, 5, 9, 10, 11, "10", 10.0, True]),
            "lifetime_value": rng.choice([500, 1001, 2600, "3000", None]),
            "newsletter_subscriber": rng.choice([True, False, "true", "false", 1, None]),
        }
    if rng.random() < 0.1:
        description["liveAttributes"] = {"tier": "gold", "preferred_store": "london-oxford-street"}
    if rng.random() < 0.2:
        description["tags"] = rng.choice([["section:homepage"], ["section:checkout"], ["campaign:black-friday"]])
    return description
