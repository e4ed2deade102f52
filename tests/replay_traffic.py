"""Crafted rule sets and traffic for the replay tests, with answers that are known by construction."""

from __future__ import annotations

import json
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
