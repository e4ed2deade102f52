"""`edgeproxy replay` on crafted traffic: counts, distinct users, A/B split, coverage, and memo exactness."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from replay_traffic import crafted_traffic, random_example_description, shop_rules, visit, write_jsonl
from rulesets import FIXED_NOW_TS, decide_one

from edgeproxy.engine.bucketing import bucket
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.replay.aggregate import ExperienceResult
from edgeproxy.replay.readers import STATIC_EXTENSIONS
from edgeproxy.replay.run import ReplayOptions, replay


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", "replay", *args], input=stdin, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def by_short(results: list[ExperienceResult]) -> dict[str, ExperienceResult]:
    return {e.short_uid: e for e in results}


def variant(e: ExperienceResult, short_uid: str | None) -> tuple[int, int]:
    for v in (*e.variants, e.not_in_experience):
        if v.short_uid == short_uid:
            return v.requests, v.users
    raise AssertionError(short_uid)


def test_counts_requests_and_distinct_users_per_variant(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    traffic = write_jsonl(tmp_path / "t.jsonl", crafted_traffic())
    result = replay(load_snapshot(rules), ReplayOptions([str(traffic)]))
    assert result.requests == 30 and result.users == 10
    experiences = by_short(result.distribution.experience_results())
    segments = experiences["0"]
    assert variant(segments, "0") == (12, 4)  # the four GB users, three views each
    assert variant(segments, "1") == (0, 0)
    assert variant(segments, None) == (18, 6)
    assert segments.requests == 30 and segments.users == 10
    # The A/B arm of each user is what hash v1 says; a user always lands in the same arm.
    snapshot = load_snapshot(rules)
    ab_uid = snapshot.experiences[1].experience.uid
    arm0 = [n for n in range(10) if bucket(ab_uid, f"u{n}") < 5000]
    assert variant(experiences["1"], "0") == (3 * len(arm0), len(arm0))
    assert variant(experiences["1"], "1") == (3 * (10 - len(arm0)), 10 - len(arm0))
    assert experiences["1"].split is not None and experiences["1"].split.degrees_of_freedom == 1


def test_never_activated_experiences_audiences_never_matched_and_dead_rules(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    traffic = write_jsonl(tmp_path / "t.jsonl", crafted_traffic())
    result = replay(load_snapshot(rules), ReplayOptions([str(traffic)], rule_sample=1000))
    experiences = by_short(result.distribution.experience_results())
    assert not experiences["2"].activated and experiences["0"].activated and experiences["1"].activated
    assert result.coverage is not None
    never = {a["name"] for a in result.coverage.never_matched_audiences()}
    assert never == {"platinum", "unused"}
    unused = next(a for a in result.coverage.never_matched_audiences() if a["name"] == "unused")
    assert unused["usedBy"] == []
    dead = result.coverage.dead_rules()
    assert sorted(d["rule"] for d in dead) == [
        "REFERRER CONTAINS_SUBSTRING 'nowhere.example'",
        "custom:tier STRING_EQUALS 'platinum'",
    ]
    assert all(d["where"].startswith("audiences/audiences.json#$[") for d in dead)
    # One platinum visitor anywhere in the traffic revives the rule, the audience and experience 2.
    traffic2 = write_jsonl(tmp_path / "t2.jsonl", [*crafted_traffic(), visit("p1", "US", tier="platinum")])
    result2 = replay(load_snapshot(rules), ReplayOptions([str(traffic2)], rule_sample=1000))
    assert result2.coverage is not None
    assert {a["name"] for a in result2.coverage.never_matched_audiences()} == {"unused"}
    assert len(result2.coverage.dead_rules()) == 1
    assert by_short(result2.distribution.experience_results())["2"].activated


def test_rule_truth_counts_on_every_request_with_sample_one(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    traffic = write_jsonl(tmp_path / "t.jsonl", crafted_traffic())
    result = replay(load_snapshot(rules), ReplayOptions([str(traffic)], rule_sample=1))
    assert result.coverage is not None
    data = result.coverage.to_dict()
    assert data["sampledRequests"] == 30
    uk = next(r for r in data["rules"] if r["rule"] == "COUNTRY STRING_EQUALS 'GB'")
    assert uk["trueInSample"] == 12 and uk["everTrue"]


def test_skewed_split_is_a_sample_ratio_mismatch(tmp_path: Path) -> None:
    """Traffic from the 50/50 rules' arm 0 users only, replayed against the same rules: the split is wrong."""
    rules = shop_rules(tmp_path)
    snapshot = load_snapshot(rules)
    ab_uid = snapshot.experiences[1].experience.uid
    users = [f"user-{n}" for n in range(4000)]
    arm0 = [u for u in users if bucket(ab_uid, u) < 5000]
    arm1 = [u for u in users if bucket(ab_uid, u) >= 5000]
    skewed = arm0[:1200] + arm1[:800]
    traffic = write_jsonl(tmp_path / "t.jsonl", [visit(u, "US") for u in skewed])
    result = replay(snapshot, ReplayOptions([str(traffic)]))
    split = by_short(result.distribution.experience_results())["1"]
    assert split.split is not None and split.split.p_value < 1e-10 and split.split_mismatch
    fair = write_jsonl(tmp_path / "fair.jsonl", [visit(u, "US") for u in users])
    fair_result = by_short(replay(snapshot, ReplayOptions([str(fair)])).distribution.experience_results())["1"]
    assert fair_result.split is not None and not fair_result.split_mismatch


def test_memoized_replay_decides_exactly_like_the_engine(example_rules: Path) -> None:
    """The slow path's memo (the engine's MemoDecider) is an optimization only: every replayed manifest equals
    `CompiledSnapshot.decide`'s."""
    from edgeproxy.engine.memo import MemoDecider
    from edgeproxy.replay.decider import ContextFactory
    from edgeproxy.replay.readers import TrafficRecord

    snapshot = load_snapshot(example_rules)
    rng = random.Random(7)
    descriptions = [random_example_description(rng) for _ in range(3000)]
    factory = ContextFactory(snapshot, None, lambda: FIXED_NOW_TS)
    decider = MemoDecider(snapshot)
    for n, description in enumerate(descriptions):
        described = factory(TrafficRecord("t", n, description))
        replayed = decider.decide(described.context, described.tags).to_dict()
        assert replayed == decide_one(snapshot, description), description
    assert decider.hits > 200  # the memo did work


def test_cli_text_json_and_chart(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    traffic = write_jsonl(tmp_path / "t.jsonl", crafted_traffic())
    text = cli(str(traffic), "--rules", str(rules))
    assert text.returncode == 0, text.stderr
    assert "replayed 30 requests from 10 users" in text.stdout
    assert "experiences never activated: 2 'dormant'" in text.stdout
    assert "\r" not in text.stderr  # no progress bar when stderr is not a terminal
    chart = tmp_path / "chart.html"
    machine = cli(str(traffic), "--rules", str(rules), "--json", "--chart", str(chart))
    assert machine.returncode == 0, machine.stderr
    data = json.loads(machine.stdout)
    assert data["requests"] == 30 and data["users"] == 10
    segments = next(e for e in data["experiences"] if e["shortUid"] == "0")
    assert segments["variants"][0] == {
        "shortUid": "0", "name": "variant 0", "requests": 12, "users": 4, "requestShare": 0.4,
    }  # fmt: skip
    assert [e["shortUid"] for e in data["neverActivated"]] == ["2"]
    assert {a["name"] for a in data["coverage"]["audiencesNeverMatched"]} == {"platinum", "unused"}
    page = chart.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "http" not in page.split("<svg", 1)[0]
    assert "src=" not in page and "<script" not in page  # self-contained
    svg = tmp_path / "chart.svg"
    assert cli(str(traffic), "--rules", str(rules), "--chart", str(svg)).returncode == 0
    assert svg.read_text().startswith("<svg")


def test_invalid_lines_are_reported_and_the_rest_replayed(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    traffic = tmp_path / "t.jsonl"
    traffic.write_text(
        json.dumps(visit("a", "GB")) + "\nnot json\n[1]\n" + json.dumps({"headers": "nope"}) + "\n\n"
        + json.dumps(visit("b", "US")) + "\n"
    )  # fmt: skip
    result = cli(str(traffic), "--rules", str(rules), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["requests"] == 2
    source = data["traffic"][0]
    assert source["invalid"] == 3 and source["records"] == 2
    assert [s["position"] for s in source["invalidSamples"]] == [2, 3, 4]
    assert "headers" in source["invalidSamples"][2]["message"]


def test_requests_without_uid_get_reproducible_uids_and_stdin_works(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    lines = "".join(json.dumps({"url": "https://shop.example/", "geo": {"country": "GB"}}) + "\n" for _ in range(50))
    first = json.loads(cli("-", "--rules", str(rules), "--json", stdin=lines).stdout)
    second = json.loads(cli("-", "--rules", str(rules), "--json", stdin=lines).stdout)
    assert first["users"] == 50  # each request without a uid is a new visitor, as on the proxy
    assert first["experiences"] == second["experiences"]


def test_bad_inputs_exit_2_with_a_message(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    missing = cli(str(tmp_path / "nope.jsonl"), "--rules", str(rules))
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    nothing = cli("--rules", str(rules))
    assert nothing.returncode == 2 and "TRAFFIC" in nothing.stderr
    broken_har = tmp_path / "broken.har"
    broken_har.write_text('{"log": {"entries": [{"request": ')
    result = cli(str(broken_har), "--rules", str(rules))
    assert result.returncode == 2 and "broken.har" in result.stderr and "Traceback" not in result.stderr


def test_static_extensions_match_the_proxy_defaults() -> None:
    from edgeproxy.runtime.config import DEFAULT_STATIC_EXTENSIONS

    assert frozenset(DEFAULT_STATIC_EXTENSIONS) == STATIC_EXTENSIONS
