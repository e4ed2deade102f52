"""The bundled example project decides what rules/README.md says, by every route into the engine."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from edgeproxy.engine import context_from_description
from edgeproxy.engine.explain import explain, render_explanation
from edgeproxy.files.snapshot_file import load_snapshot, write_snapshot_file
from edgeproxy.geo import MaxMindGeo

# Worked out by hand from the rules (rules/README.md, "Sample visitors"), one per line of requests.jsonl.
EXPECTED_VARIANT_PARAMS = [
    "0_1,2_0,7_0",
    "1_1,0_2,3_2,2_0,7_1",
    "1_0,0_1,2_0,7_1",
    "0_0,6_2,3_0,2_1,7_0",
    "1_1,0_0,3_2,2_0,7_1",
    "1_0,0_4,2_0,7_0",
    "2_2,7_1",
    "6_1,3_0,2_0,7_1",
    "3_1,2_0,7_1",
    "0_1,6_0,2_2,7_0",
    "0_1,6_0,3_2,2_0,7_0",
    "0_2,6_2,2_1,7_0",
    "0_4,2_1,7_0",
    "3_2,2_0,7_0",
    "1_0,0_1,2_0,7_1",
    "2_0",
]
PRIORITY = ["1", "0", "6", "3", "2", "4", "8", "9", "7"]  # 5 is draft-only: omitted


def _requests(example_rules: Path) -> list[dict[str, object]]:
    lines = (example_rules / "requests.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _decide_all(snapshot_path: Path, example_rules: Path, geoip_db: Path) -> list[dict[str, object]]:
    snapshot = load_snapshot(snapshot_path)
    lookup = MaxMindGeo(geoip_db).lookup
    out = []
    for description in _requests(example_rules):
        described = context_from_description(
            description, clock=time.time, new_uid=lambda: str(uuid.uuid4()), geo_lookup=lookup
        )
        out.append(snapshot.decide(described.context, described.tags).to_dict())
    return out


def test_sample_visitors_get_the_documented_variants(example_rules: Path, geoip_db: Path) -> None:
    manifests = _decide_all(example_rules, example_rules, geoip_db)
    assert [m["variantParam"] for m in manifests] == EXPECTED_VARIANT_PARAMS


def test_manifests_list_experiences_in_priority_order_with_paused_as_null(
    example_rules: Path, geoip_db: Path
) -> None:
    for manifest in _decide_all(example_rules, example_rules, geoip_db)[:-1]:
        experiences = manifest["experiences"]
        assert isinstance(experiences, list)
        assert [e["shortUid"] for e in experiences] == PRIORITY
        assert manifest["activeVariants"]["4"] is None  # type: ignore[index]
        params = str(manifest["variantParam"]).split(",") if manifest["variantParam"] else []
        assert manifest["aliases"] == [f"cs_personalize_{p}" for p in params]


def test_compiled_msgpack_snapshot_decides_identically(example_rules: Path, geoip_db: Path, tmp_path: Path) -> None:
    write_snapshot_file(load_snapshot(example_rules), tmp_path / "snapshot.msgpack")
    assert _decide_all(tmp_path / "snapshot.msgpack", example_rules, geoip_db) == _decide_all(
        example_rules, example_rules, geoip_db
    )
    assert load_snapshot(tmp_path / "snapshot.msgpack").version == load_snapshot(example_rules).version


def test_explanation_agrees_with_the_decision_for_every_sample(example_rules: Path, geoip_db: Path) -> None:
    snapshot = load_snapshot(example_rules)
    lookup = MaxMindGeo(geoip_db).lookup
    for description in _requests(example_rules):
        described = context_from_description(description, clock=time.time, new_uid=lambda: "x", geo_lookup=lookup)
        manifest = snapshot.decide(described.context, described.tags)
        trace = explain(snapshot, described.context, described.tags)
        assert {e["shortUid"]: e["activeVariantShortUid"] for e in trace["experiences"]} == manifest.active_variants
        text = render_explanation(trace)
        assert f"user {manifest.user_uid}" in text
        json.dumps(trace)  # the structure is JSON-ready for the proxy's debug endpoint


def test_explanation_shows_rule_values_and_ab_bucket(example_rules: Path, geoip_db: Path) -> None:
    snapshot = load_snapshot(example_rules)
    description = _requests(example_rules)[0]  # London newcomer, Windows Chrome
    described = context_from_description(
        description, clock=time.time, new_uid=lambda: "x", geo_lookup=MaxMindGeo(geoip_db).lookup
    )
    text = render_explanation(explain(snapshot, described.context))
    assert "COUNTRY STRING_EQUALS 'GB'  (value: 'GB')" in text
    assert "bucket 1762 of 10000" in text  # experience 2 for this uid (pinned in test_bucketing)
    assert "experience 4 'Loyalty upsell' [SEGMENTED, PAUSED] -> null" in text
    assert "omitted (no ACTIVE or PAUSED version)" in text


@pytest.mark.parametrize("form", ["parent", "personalize", "relative"])
def test_rules_path_accepts_the_folder_or_its_parent_and_version_ignores_the_path(
    example_rules: Path, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if form == "relative":
        monkeypatch.chdir(example_rules.parent)
        path = Path("rules")
    else:
        path = example_rules if form == "parent" else example_rules / "personalize"
    assert load_snapshot(path).version == load_snapshot(example_rules.resolve()).version
