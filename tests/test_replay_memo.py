"""Replay's memo (the proxy's `MemoDecider`, and coverage's keys) is exact: memoised decisions, counts and coverage
are what deciding every request from scratch gives, on traffic that varies every feature a rule can read."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay_traffic import GB_UA, write_jsonl
from rulesets import (
    FIXED_NOW_TS,
    ab_variant,
    attribute,
    audience,
    custom_rule,
    experience,
    group,
    lytics_audience,
    lytics_uid,
    rule,
    segmented_variant,
    uid_for,
    version,
    write_rules,
)

from edgeproxy.engine import CompiledSnapshot, RequestDescriptionError
from edgeproxy.engine.decide import Manifest
from edgeproxy.engine.memo import MemoDecider, feature_key_for
from edgeproxy.engine.model import LYTICS_REFS, PRESET_ATTRIBUTES
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.geo import MaxMindGeo
from edgeproxy.replay.coverage import Coverage
from edgeproxy.replay.decider import ContextFactory
from edgeproxy.replay.readers import TrafficRecord
from edgeproxy.replay.reporting import report_dict
from edgeproxy.replay.run import ReplayOptions, replay

GEOIP = Path(__file__).parent / "data" / "GeoIP2-City-Test.mmdb"
SALE_START = "2026-11-27T00:00:00Z"
SALE_END = "2026-12-01T00:00:00Z"
WINTER = "2026-12-21T00:00:00Z"
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1"
)
UAS = [GB_UA, IPHONE_UA, "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "", None]
# Times on, and a second either side of, every threshold of the rules below.
NOWS = [
    "2026-11-20T10:00:00Z",
    "2026-11-26T23:59:59Z",
    SALE_START,
    "2026-11-27T00:00:01Z",
    "2026-11-30T23:59:59Z",
    SALE_END,
    "2026-12-01T00:00:01+01:00",
    WINTER,
    "2026-12-21T00:00:01Z",
    None,  # the replay clock
]
# Values of one custom attribute that the rules tell apart, and some they must not mix up.
VALUES: list[Any] = [
    *("gold", "Gold", "silver", "", "10", "10.0", "true", "false", "True", "[1]", '{"plan": "pro"}'),
    *(10, 10.0, -0.0, 0, 1, 11, 5, 2**70, True, False, None),
    *([1], {"plan": "pro"}, {"plan": "free"}),
]


def every_feature_rules(tmp_path: Path) -> Path:
    """Rules reading every feature: geo, device and OS, query (substring and JSON_MATCH), referrer, the clock
    (BEFORE/AFTER/BETWEEN, inverted too), custom attributes of every condition, Lytics audiences and flows. Two A/B
    tests, one behind targeting, one with weights short of 100%; a paused experience; tags."""
    audiences = [
        audience("uk", group("AND", rule("preset", "COUNTRY", "STRING_EQUALS", "gb"))),
        audience(
            "london",
            group(
                "AND",
                rule("preset", "REGION", "STRING_EQUALS", "ENG"),
                rule("preset", "CITY", "STRING_EQUALS", "London"),
            ),
        ),
        audience(
            "mobile",
            group(
                "OR",
                rule("preset", "DEVICE_TYPE", "STRING_EQUALS", "MOBILE"),
                rule("preset", "OPERATING_SYSTEM", "STRING_EQUALS", "IOS"),
            ),
        ),
        audience("bot", group("AND", rule("preset", "DEVICE_TYPE", "STRING_EQUALS", "BOT", invert=True))),
        audience(
            "campaign",
            group("AND", rule("preset", "QUERY_PARAMETERS", "JSON_MATCH", {"value": {"utm_campaign": "bf"}})),
        ),
        audience("ref", group("AND", rule("preset", "QUERY_PARAMETERS", "CONTAINS_SUBSTRING", "ref="))),
        audience("google", group("AND", rule("preset", "REFERRER", "CONTAINS_SUBSTRING", "google"))),
        audience(
            "sale",
            group("AND", rule("preset", "DATE_AND_TIME", "BETWEEN_TIME", {"start": SALE_START, "end": SALE_END})),
        ),
        audience(
            "winter",
            group(
                "AND",
                rule("preset", "DATE_AND_TIME", "AFTER_TIME", {"value": WINTER}),
                rule("preset", "DATE_AND_TIME", "BEFORE_TIME", {"value": SALE_START}, invert=True),
            ),
        ),
        audience("gold", group("AND", custom_rule("tier", "STRING_EQUALS", "gold"))),
        audience(
            "regular",
            group("OR", custom_rule("visits", "NUMBER_GREATER_THAN", 5), custom_rule("visits", "NUMBER_EQUAL_TO", 10)),
        ),
        audience("subscribed", group("AND", custom_rule("subscribed", "IS_TRUE"))),
        audience(
            "unsubscribed",
            group("AND", custom_rule("subscribed", "IS_FALSE"), custom_rule("subscribed", "HAS_ANY_VALUE")),
        ),
        audience("pro", group("AND", custom_rule("profile", "JSON_MATCH", {"value": {"plan": "pro"}}))),
        audience("scored", group("AND", custom_rule("score", "NUMBER_LESS_THAN", 1, invert=True))),
        audience(
            "vip member",
            group(
                "AND",
                rule(
                    "lytics",
                    "LYTICS_AUDIENCE",
                    "IS_MEMBER_OF",
                    {"__type": "AudienceMatchOptions", "value": lytics_uid("vip")},
                ),
            ),
        ),
        audience(
            "engaged",
            group(
                "AND",
                rule(
                    "lytics", "LYTICS_FLOW_STATE", "IS_IN_FLOW_STATE", {"flowId": "onboarding", "flowState": "engaged"}
                ),
            ),
        ),
        audience("never", group("AND", custom_rule("tier", "STRING_EQUALS", "platinum"))),
        lytics_audience("vip"),
        lytics_audience("churn_risk"),
    ]
    segments = version(
        "ACTIVE",
        [
            segmented_variant("0", [uid_for("uk"), uid_for("gold")], combination="AND"),
            segmented_variant("1", [uid_for("sale"), uid_for("winter")]),
            segmented_variant(
                "2",
                target=group(
                    "AND",
                    rule("preset", "CITY", "STRING_EQUALS", "Milton"),
                    custom_rule("visits", "NUMBER_LESS_THAN", 3),
                ),
            ),
            segmented_variant("3", lytics_audiences=[lytics_uid("vip")]),
            segmented_variant("4", [uid_for("never")]),
        ],
    )
    more = version(
        "ACTIVE",
        [
            segmented_variant(str(n), [uid_for(name)])
            for n, name in enumerate(["campaign", "ref", "google", "regular", "pro", "engaged", "london", "mobile"])
        ],
    )
    targeted = version(
        "ACTIVE",
        [ab_variant("0", 30), ab_variant("1", 30), ab_variant("2", 40)],
        variantSplit="CUSTOM_PERCENTAGE",
        targeting={
            "audience": {"audiences": [uid_for("bot"), uid_for("unsubscribed")], "audienceCombinationType": "OR"}
        },
    )
    partial = version("ACTIVE", [ab_variant("0", 25), ab_variant("1", 25)], variantSplit="CUSTOM_PERCENTAGE")
    paused = version("PAUSED", [segmented_variant("0", [uid_for("uk")])])
    return write_rules(
        tmp_path,
        attributes=[attribute(key) for key in ("tier", "visits", "subscribed", "profile", "score")],
        audiences=audiences,
        experiences=[
            (experience("segments", "0", tags=["home"]), [segments]),
            (experience("more", "1", tags=["home", "cart"]), [more]),
            (experience("targeted", "2", "AB_TEST", tags=["cart"]), [targeted]),
            (experience("partial", "3", "AB_TEST"), [partial]),
            (experience("paused", "4"), [paused]),
            (
                experience("scored", "5", tags=["cart"]),
                [version("ACTIVE", [segmented_variant("0", [uid_for("scored")])])],
            ),
        ],
    )


def random_description(rng: random.Random) -> dict[str, Any]:
    """A request description that varies what the rules read, with the uid in each place it may be."""
    user = f"u{rng.randrange(40)}"
    headers: dict[str, Any] = {}
    cookies = []
    where = rng.random()
    if where < 0.6:
        cookies.append(f"cs-personalize-user-uid={user}")
    elif where < 0.7:
        headers["X-CS-Personalize-User-Uid"] = user
    if rng.random() < 0.3:
        cookies.append(
            rng.choice(
                [
                    "cs-lytics-audiences=|vip|",
                    "cs-lytics-audiences=%7Cchurn_risk%7C",
                    "cs-lytics-audiences=vip,churn_risk",
                    "cs-lytics-audiences=",
                ]
            )
        )
    if rng.random() < 0.2:
        cookies.append(rng.choice(["cs-lytics-flows=|onboarding:engaged|", "cs-lytics-flows=|onboarding:new|"]))
    if cookies:
        headers[rng.choice(["Cookie", "cookie"])] = "; ".join(cookies)
    ua = rng.choice(UAS)
    if ua is not None:
        headers[rng.choice(["User-Agent", "user-agent"])] = ua
    if rng.random() < 0.3:
        headers["Referer"] = rng.choice(["https://www.google.com/search?q=x", "https://duckduckgo.com/", ""])
    if rng.random() < 0.1:
        headers["X-Page-URL"] = "https://shop.example/landing?utm_campaign=bf"
    description: dict[str, Any] = {
        "url": "https://shop.example/"
        + rng.choice(
            [
                "",
                "?utm_campaign=bf",
                "?ref=mail",
                "?utm_campaign=x&ref=",
                "#?ref=frag",
                "p?utm_campaign=bf&utm_campaign=y",
            ]
        ),
        "method": "GET",
        "headers": headers,
    }
    if where >= 0.7 and rng.random() < 0.7:
        description["userUid"] = user
    now = rng.choice(NOWS)
    if now is not None:
        description["now"] = now
    if rng.random() < 0.7:
        description["geo"] = rng.choice(
            [
                {"country": "GB", "region": "ENG", "city": "London"},
                {"country": "gb"},
                {"country": "US", "region": "WA", "city": "Milton"},
                {},
                {"city": "London"},
            ]
        )
    if rng.random() < 0.2:
        description["ip"] = rng.choice(["81.2.69.160", "216.160.83.56", "89.160.20.112", "not an ip"])
    for field in ("storedAttributes", "liveAttributes"):
        if rng.random() < (0.6 if field == "storedAttributes" else 0.25):
            keys = rng.sample(
                ["tier", "visits", "subscribed", "profile", "score", "__lytics_audiences"], rng.randrange(1, 4)
            )
            description[field] = {key: rng.choice([*VALUES, "|vip|"]) for key in keys}
    if rng.random() < 0.25:
        description["tags"] = rng.choice([["home"], ["CART"], ["none"], [], ["home", "cart"]])
    return description


def records(descriptions: list[dict[str, Any]]) -> list[TrafficRecord]:
    return [TrafficRecord("t.jsonl", n + 1, d) for n, d in enumerate(descriptions)]


def engine_manifest(snapshot: CompiledSnapshot, record: TrafficRecord, geo_lookup: Any = None) -> Manifest:
    """The reference decision: the record's context (as replay builds it) decided by the snapshot."""
    described = ContextFactory(snapshot, geo_lookup, lambda: FIXED_NOW_TS)(record)
    return snapshot.decide(described.context, described.tags)


def memo_manifest(decider: MemoDecider, record: TrafficRecord, geo_lookup: Any = None) -> Manifest | None:
    """The memoised decision, on a context of its own (None: a description the engine rejects)."""
    try:
        described = ContextFactory(decider.snapshot, geo_lookup, lambda: FIXED_NOW_TS)(record)
    except RequestDescriptionError:
        return None
    return decider.decide(described.context, described.tags)


@pytest.fixture(scope="module")
def every_feature(tmp_path_factory: pytest.TempPathFactory) -> CompiledSnapshot:
    return load_snapshot(every_feature_rules(tmp_path_factory.mktemp("rules")))


def test_the_rules_here_read_every_feature(every_feature: CompiledSnapshot) -> None:
    read = {site.rule.attribute for site in Coverage(every_feature).rules}
    custom = {"tier", "visits", "subscribed", "profile", "score"}
    assert {*PRESET_ATTRIBUTES, *LYTICS_REFS, *custom} <= read
    assert feature_key_for(every_feature, every_feature.experiences) is not None  # the memo is on


@pytest.mark.parametrize("with_geoip", [False, True])
def test_every_memoised_manifest_is_the_engines(every_feature: CompiledSnapshot, with_geoip: bool) -> None:
    """Request by request, the decision the memo reuses is the decision `snapshot.decide` makes."""
    geo_lookup = MaxMindGeo(str(GEOIP)).lookup if with_geoip else None
    decider = MemoDecider(every_feature)
    rng = random.Random(11)
    for record in records([random_description(rng) for _ in range(4000)]):
        manifest = memo_manifest(decider, record, geo_lookup)
        assert manifest is not None
        assert manifest == engine_manifest(every_feature, record, geo_lookup), record.description
    assert decider.hits > 1000 and decider.misses < 3000  # the memo did work


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), size=st.integers(1, 80))
def test_memoised_manifests_hold_for_any_traffic_order(every_feature: CompiledSnapshot, seed: int, size: int) -> None:
    """Keys and decisions are learnt in whatever order the traffic comes; none is ever stale."""
    rng = random.Random(seed)
    decider = MemoDecider(every_feature)
    for record in records([random_description(rng) for _ in range(size)]):
        assert memo_manifest(decider, record) == engine_manifest(every_feature, record), record.description


@pytest.mark.parametrize(("limit", "atoms_limit"), [(5, 10_000), (50_000, 2)])
def test_full_tables_are_forgotten_without_a_wrong_decision(
    every_feature: CompiledSnapshot, monkeypatch: pytest.MonkeyPatch, limit: int, atoms_limit: int
) -> None:
    """Tables that fill up are cleared mid-traffic (feature values, truth ids, keys, visitors); what is decided after
    is still the engine's."""
    import edgeproxy.engine.memo as memo

    monkeypatch.setattr(memo, "MEMO_LIMIT", limit)
    monkeypatch.setattr(memo, "ATOMS_LIMIT", atoms_limit)
    decider = MemoDecider(every_feature, limit=limit)
    rng = random.Random(17)
    for record in records([random_description(rng) for _ in range(1500)]):
        assert memo_manifest(decider, record) == engine_manifest(every_feature, record), record.description
    assert decider.hits > 50  # it did reuse decisions between the clears


def test_the_clock_keys_by_the_truth_of_the_time_rules(every_feature: CompiledSnapshot) -> None:
    """Times at which every time rule agrees share a key; a second across a threshold that changes a rule's truth
    is another key."""
    key_of = feature_key_for(every_feature, every_feature.experiences)
    assert key_of is not None
    factory = ContextFactory(every_feature, None, lambda: FIXED_NOW_TS)

    def key(now: str) -> tuple[int, ...]:
        description = {"headers": {"Cookie": "cs-personalize-user-uid=a"}, "now": now}
        return key_of(factory(TrafficRecord("t", 1, description)).context)

    assert key("2026-11-26T23:59:59Z") != key(SALE_START) == key("2026-11-27T00:00:01Z")
    assert key("2026-11-28T00:00:00Z") == key("2026-11-29T12:34:56Z") == key(SALE_START)
    assert key("2026-11-30T23:59:59Z") != key(SALE_END) == key("2026-12-01T01:00:00+01:00")  # one instant
    assert key(WINTER) != key("2026-12-21T00:00:01Z")  # AFTER_TIME is strict


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("seconds", "requestsPerSecond", "memo")}


def slow_path_lines() -> list[str]:
    """Descriptions the fast path leaves to the slow one, valid and invalid, as lines of a JSONL file."""
    items: list[Any] = [
        {"headers": {"X-Live-Attributes": '{"tier": "gold"}', "Cookie": "cs-personalize-user-uid=u1"}},
        {"headers": {"X-Live-Attributes": "not json"}},
        {"headers": {"CloudFront-Viewer-Country": "GB", "Cookie": "cs-personalize-user-uid=u2"}},
        {"headers": {"X-Count": 3, "User-Agent": GB_UA}},
        {"headers": {"X-Many": ["a", "b"]}, "userUid": "u3"},
        {"headers": {"X-Flag": True}},
        {"now": "yesterday"},
        {"geo": {"country": 44}},
        {"geo": "GB"},
        {"tags": ["home", 1]},
        {"storedAttributes": {"visits": float("nan")}, "userUid": "u4"},
        {"liveAttributes": {"tier": "gold"}, "storedAttributes": {"tier": "silver"}, "userUid": "u5"},
        {"request": {"userUid": "u6", "now": SALE_START}, "decision": {"userUid": "u6"}, "ts": SALE_START},
    ]
    lines = [json.dumps(item) for item in items]
    lines += ["not json", "[1, 2]", "", '{"userUid": "u7", "storedAttributes": {"visits": 1e999}}']
    return lines


@pytest.mark.parametrize("rule_sample", [1, 7, 32])
def test_the_report_is_the_same_with_and_without_the_memo(
    tmp_path: Path, every_feature: CompiledSnapshot, rule_sample: int
) -> None:
    """Counts, distinct users, A/B splits, coverage (sampled truth counts too) and invalid lines: the fast path
    changes none of them, with slow-path descriptions mixed in."""
    rng = random.Random(rule_sample)
    lines = [json.dumps(random_description(rng)) for _ in range(3000)]
    for line in slow_path_lines():
        lines.insert(rng.randrange(len(lines)), line)
    traffic = tmp_path / "t.jsonl"
    traffic.write_text("\n".join(lines) + "\n", encoding="utf-8")
    geo_lookup = MaxMindGeo(str(GEOIP)).lookup

    def run(memo: bool) -> dict[str, Any]:
        options = ReplayOptions(
            [str(traffic)], memo=memo, rule_sample=rule_sample, geo_lookup=geo_lookup, clock=lambda: FIXED_NOW_TS
        )
        result = replay(every_feature, options)
        if memo:
            assert result.memo_hits > 1000
        return report_dict(result, None, srm_alpha=0.001)

    memoised, reference = run(True), run(False)
    assert comparable(memoised) == comparable(reference)
    assert reference["traffic"][0]["invalid"] >= 8
    assert [r["rule"] for r in memoised["coverage"]["rulesNeverTrue"]] == ["custom:tier STRING_EQUALS 'platinum'"]


def test_a_har_replays_the_same_with_and_without_the_memo(tmp_path: Path) -> None:
    """HAR entries: the client IP from X-Forwarded-For looked up in the GeoIP database, page loads only."""
    rules = every_feature_rules(tmp_path)
    rng = random.Random(3)
    entries = []
    for n in range(600):
        description = random_description(rng)
        headers = [{"name": k, "value": v} for k, v in description["headers"].items()]
        headers.append({"name": "X-Forwarded-For", "value": rng.choice(["81.2.69.160", "216.160.83.56, 10.0.0.1"])})
        entries.append(
            {
                "startedDateTime": description.get("now") or "2026-11-22T10:00:00.000Z",
                "request": {
                    "method": "GET",
                    "url": description["url"] if n % 5 else "https://shop.example/app.js",
                    "headers": headers,
                },
                "response": {"status": 200, "headers": [], "content": {"mimeType": "text/html"}},
            }
        )
    har = tmp_path / "t.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "entries": entries}}), encoding="utf-8")
    snapshot = load_snapshot(rules)

    def run(memo: bool) -> dict[str, Any]:
        options = ReplayOptions([str(har)], memo=memo, geo_lookup=MaxMindGeo(str(GEOIP)).lookup)
        return report_dict(replay(snapshot, options), None, srm_alpha=0.001)

    memoised, reference = run(True), run(False)
    assert comparable(memoised) == comparable(reference)
    assert reference["requests"] == 480


def test_the_example_rules_replay_the_same_with_and_without_the_memo(tmp_path: Path, example_rules: Path) -> None:
    rng = random.Random(5)
    traffic = write_jsonl(tmp_path / "t.jsonl", [random_description(rng) for _ in range(2000)])
    snapshot = load_snapshot(example_rules)
    reports = [
        comparable(
            report_dict(
                replay(snapshot, ReplayOptions([str(traffic)], memo=memo, clock=lambda: FIXED_NOW_TS)),
                None,
                srm_alpha=0.001,
            )
        )
        for memo in (True, False)
    ]
    assert reports[0] == reports[1]
