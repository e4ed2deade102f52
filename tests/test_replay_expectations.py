"""`--expect`, `--junit` and `--from-log` as CI runs them: exit codes, messages, JUnit XML."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from replay_traffic import NOW, crafted_traffic, shop_rules, visit, write_jsonl
from rulesets import decide_one

from edgeproxy.files.snapshot_file import load_snapshot


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeproxy.cli", "replay", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


EXPECTATIONS_YAML = """\
defaults:
  now: "2026-11-22T10:00:00Z"
expectations:
  - name: GB visitor sees the UK segment
    request: {url: "https://shop.example/", userUid: g1, geo: {country: GB}}
    expect:
      "0": "0"
      dormant: null
      "1": ["0", "1"]
  - name: US visitor is in no segment
    request: {url: "https://shop.example/", userUid: s1, geo: {country: US}}
    expect:
      segments: null
"""


def test_passing_expectations_exit_0_and_write_junit(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    spec = tmp_path / "expect.yaml"
    spec.write_text(EXPECTATIONS_YAML)
    junit = tmp_path / "out" / "junit.xml"
    junit.parent.mkdir()  # --junit does not create folders (a typo must not scatter them)
    result = cli("--rules", str(rules), "--expect", str(spec), "--junit", str(junit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "expectations: 2 of 2 passed" in result.stdout
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "0"
    cases = root.findall("./testsuite[@name='expectations']/testcase")
    assert [c.get("name") for c in cases] == ["GB visitor sees the UK segment", "US visitor is in no segment"]
    assert all(c.find("failure") is None for c in cases)


def test_a_failed_expectation_exits_1_with_the_explanation_in_text_and_junit(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    spec = tmp_path / "expect.json"
    spec.write_text(json.dumps([
        {"name": "US visitor wrongly expected in the UK segment",
         "request": {"url": "https://shop.example/", "userUid": "x", "geo": {"country": "US"}, "now": NOW},
         "expect": {"0": "0", "2": None}},
        {"name": "fine", "request": {"userUid": "y", "geo": {"country": "GB"}, "now": NOW}, "expect": {"0": "0"}},
    ]))  # fmt: skip
    junit = tmp_path / "junit.xml"
    result = cli("--rules", str(rules), "--expect", str(spec), "--junit", str(junit))
    assert result.returncode == 1
    assert "1 of 2 expectations FAILED" in result.stdout
    assert "experience 0: expected '0', got null (not in experience)" in result.stdout
    assert "COUNTRY STRING_EQUALS 'GB'  (value: 'US')" in result.stdout  # why: the explanation
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "1"
    failed = root.find("./testsuite/testcase[@name='US visitor wrongly expected in the UK segment']")
    assert failed is not None
    failure = failed.find("failure")
    assert failure is not None and failure.get("type") == "ExpectationFailed"
    assert "expected '0', got null" in (failure.get("message") or "")
    assert "COUNTRY STRING_EQUALS 'GB'" in (failure.text or "")
    ok = root.find("./testsuite/testcase[@name='fine']")
    assert ok is not None and ok.find("failure") is None
    data = json.loads(cli("--rules", str(rules), "--expect", str(spec), "--json").stdout)
    assert data["expectations"]["failed"] == 1
    assert data["expectations"]["cases"][0]["failures"][0] == {
        "experience": "0", "expected": "0", "actual": None, "decided": True,
    }  # fmt: skip


def test_expectation_files_naming_unknown_things_exit_2(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    spec = tmp_path / "bad.yaml"
    spec.write_text("- request: {}\n  expect: {nosuch: '0'}\n")
    result = cli("--rules", str(rules), "--expect", str(spec))
    assert result.returncode == 2
    assert "bad.yaml: $[0].expect.nosuch: no live experience 'nosuch'" in result.stderr
    spec.write_text("- request: {}\n  expect: {'0': '9'}\n")
    result = cli("--rules", str(rules), "--expect", str(spec))
    assert result.returncode == 2 and "has no variant '9'" in result.stderr
    spec.write_text("expectations: [\n")
    result = cli("--rules", str(rules), "--expect", str(spec))
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def _decision_log(rules: Path, descriptions: list[dict[str, object]]) -> str:
    """What `serve --decision-log` writes: the request as decided (userUid, now, storedAttributes, geo), the
    decision and the snapshot version."""
    snapshot = load_snapshot(rules)
    lines = []
    for description in descriptions:
        decision = decide_one(snapshot, description)
        request = {**description, "userUid": decision["userUid"], "storedAttributes": {}}
        record = {"ts": description["now"], "request": request, "decision": decision, "snapshot": snapshot.version}
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


def test_from_log_reproduces_the_decision_log_and_a_tampered_log_fails(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    log = tmp_path / "decisions.jsonl"
    log.write_text(_decision_log(rules, crafted_traffic()))
    junit = tmp_path / "junit.xml"
    ok = cli(str(log), "--rules", str(rules), "--from-log", "--junit", str(junit))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "recorded decisions: 30 of 30 reproduced exactly" in ok.stdout
    assert ET.parse(junit).getroot().get("failures") == "0"

    records = [json.loads(line) for line in log.read_text().splitlines()]
    records[4]["decision"]["activeVariants"]["0"] = "1"
    records[4]["decision"]["experiences"][0]["activeVariantShortUid"] = "1"
    records[7]["decision"]["variantParam"] = "0_9"
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(json.dumps(r) + "\n" for r in records))
    bad = cli(str(tampered), "--rules", str(rules), "--from-log", "--junit", str(junit))
    assert bad.returncode == 1
    assert "2 of 30 recorded decisions differ" in bad.stdout
    assert f"MISMATCH {tampered}:5" in bad.stdout and f"MISMATCH {tampered}:8" in bad.stdout
    assert "'0': {'recorded': '1', 'replayed': '0'}" in bad.stdout
    root = ET.parse(junit).getroot()
    failure = root.find("./testsuite[@name='recorded decisions']/testcase/failure")
    assert failure is not None and "2 replayed decision(s) differ" in (failure.get("message") or "")
    data = json.loads(cli(str(tampered), "--rules", str(rules), "--from-log", "--json").stdout)
    assert data["recorded"]["mismatched"] == 2
    assert data["recorded"]["mismatches"][1]["differences"] == [
        {
            "field": "variantParam",
            "recorded": "0_9",
            "replayed": data["recorded"]["mismatches"][1]["replayed"]["variantParam"],
        }
    ]


def test_from_log_uses_the_logged_geo_clock_and_stored_attributes(tmp_path: Path) -> None:
    """A log line records what was decided: the replay must not look the IP up again nor use today's clock."""
    rules = shop_rules(tmp_path)
    description = {**visit("p", "US", tier="platinum"), "ip": "81.2.69.160"}  # a London IP in the test database
    log = tmp_path / "decisions.jsonl"
    log.write_text(
        _decision_log(rules, [description]).replace(
            '"storedAttributes": {}', '"storedAttributes": {"tier": "platinum"}'
        )
    )
    geoip = str(Path(__file__).parent / "data" / "GeoIP2-City-Test.mmdb")
    result = cli(str(log), "--rules", str(rules), "--from-log", "--geoip", geoip)
    assert result.returncode == 0, result.stdout


def test_from_log_without_recorded_decisions_is_an_error(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    traffic = write_jsonl(tmp_path / "t.jsonl", crafted_traffic())
    result = cli(str(traffic), "--rules", str(rules), "--from-log")
    assert result.returncode == 2 and "no recorded decisions" in result.stderr


def test_a_log_line_without_now_is_decided_at_its_ts(tmp_path: Path) -> None:
    """Black-Friday-style time rules: the clock of a log line is its `ts` when the request has no `now`."""
    from rulesets import audience as make_audience
    from rulesets import experience as make_experience
    from rulesets import group, rule, segmented_variant, uid_for, version, write_rules

    rules = write_rules(
        tmp_path,
        audiences=[make_audience("week", group("AND", rule("preset", "DATE_AND_TIME", "BETWEEN_TIME",
                                                              {"start": "2026-11-27T00:00:00Z",
                                                               "end": "2026-12-01T00:00:00Z"})))],
        experiences=[(make_experience("bf", "0"), [version("ACTIVE", [segmented_variant("0", [uid_for("week")])])])],
    )  # fmt: skip
    decided = {"userUid": "t1", "experiences": [{"shortUid": "0", "activeVariantShortUid": "0"}],
               "activeVariants": {"0": "0"}, "aliases": ["cs_personalize_0_0"], "variantParam": "0_0"}  # fmt: skip
    line = {"ts": "2026-11-28T12:00:00Z", "request": {"url": "https://shop.example/"}, "decision": decided}
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(line) + "\n")
    result = cli(str(log), "--rules", str(rules), "--from-log", "--now", "2026-12-24T00:00:00Z")
    assert result.returncode == 0, result.stdout


def test_expectation_spellings_aliases_names_and_none(tmp_path: Path) -> None:
    rules = shop_rules(tmp_path)
    spec = tmp_path / "spellings.yaml"
    spec.write_text(
        "cases:\n"
        "  - request: {userUid: g2, geo: {country: GB}, now: '2026-11-22T10:00:00Z'}\n"
        "    expected: {segments: cs_personalize_0_0, dormant: none, '0': 'variant 0'}\n"
    )
    result = cli("--rules", str(rules), "--expect", str(spec), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["expectations"]["passed"] == 1
