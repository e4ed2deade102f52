"""`--against`: users moved between variants, and re-bucketing of running A/B tests flagged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from replay_traffic import crafted_traffic, shop_rules, visit, write_jsonl

from edgeproxy.engine.bucketing import bucket
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.replay.run import ReplayOptions, replay


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeproxy.cli", "replay", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_segment_change_moves_users_and_is_not_rebucketing(tmp_path: Path) -> None:
    before = shop_rules(tmp_path / "a")
    after = shop_rules(tmp_path / "b", uk_country="US")  # the "UK" audience now matches US visitors
    traffic = write_jsonl(tmp_path / "t.jsonl", crafted_traffic())
    result = replay(load_snapshot(before), ReplayOptions([str(traffic)]), against=load_snapshot(after))
    diff = result.diff
    assert diff is not None
    moves = {(m.experience, m.before, m.after): m for m in diff.moves.values()}
    assert set(moves) == {("0", "0", None), ("0", None, "0")}
    assert (moves["0", "0", None].requests, len(moves["0", "0", None].users)) == (12, 4)
    assert (moves["0", None, "0"].requests, len(moves["0", None, "0"].users)) == (18, 6)
    assert not diff.rebucketed()
    assert diff.changed_requests == 30 and len(diff.changed_users) == 10
    assert len(moves["0", "0", None].samples) == 3
    assert moves["0", "0", None].samples[0]["userUid"] == "u0"
    # The first moves are explained under both snapshots.
    assert [(e["experience"], e["before"], e["after"]) for e in diff.explanations] == [
        ("0", "0", None),
        ("0", None, "0"),
    ]
    first = diff.explanations[0]
    assert first["explanationBefore"]["experiences"][0]["activeVariantShortUid"] == "0"
    assert first["explanationAfter"]["experiences"][0]["activeVariantShortUid"] is None
    assert "COUNTRY STRING_EQUALS 'US'" in first["text"] and "(value: 'GB')" in first["text"]


def test_changed_weights_rebucket_running_ab_users_and_are_flagged(tmp_path: Path) -> None:
    before = shop_rules(tmp_path / "a", ab_weights=(50, 50))
    after = shop_rules(tmp_path / "b", ab_weights=(20, 80))
    users = [f"user-{n}" for n in range(500)]
    traffic = write_jsonl(tmp_path / "t.jsonl", [visit(u, "US") for u in users])
    snapshot = load_snapshot(before)
    ab_uid = snapshot.experiences[1].experience.uid
    # Buckets in [2000, 5000) were arm 0 and are now arm 1; nobody moves the other way.
    expected = {u for u in users if 2000 <= bucket(ab_uid, u) < 5000}
    result = replay(snapshot, ReplayOptions([str(traffic)]), against=load_snapshot(after))
    diff = result.diff
    assert diff is not None
    moves = {(m.experience, m.before, m.after): m for m in diff.moves.values()}
    assert set(moves) == {("1", "0", "1")}
    assert moves["1", "0", "1"].rebucketing
    assert diff.rebucketed_users() == len(expected) > 0

    text = cli(str(traffic), "--rules", str(before), "--against", str(after))
    assert text.returncode == 0, text.stderr
    head = text.stdout.split("replayed", 1)[0]
    assert f"RE-BUCKETING: {len(expected):,} users of running A/B test(s) 1" in head  # before everything else
    assert "1: 0 -> 1" in text.stdout and "RE-BUCKETED" in text.stdout
    assert cli(str(traffic), "--rules", str(before), "--against", str(after), "--fail-on-rebucket").returncode == 1
    data = json.loads(cli(str(traffic), "--rules", str(before), "--against", str(after), "--json").stdout)
    assert data["against"]["rebucketing"]["users"] == len(expected)
    assert data["against"]["moves"][0]["rebucketing"] is True
    assert len(data["against"]["experiencesAfter"]) == 3


def test_pausing_a_test_is_not_rebucketing_but_shows_the_moves(tmp_path: Path) -> None:
    before = shop_rules(tmp_path / "a")
    after_dir = shop_rules(tmp_path / "b")
    versions = next((after_dir / "experiences" / "versions").glob("*.json"))
    # Pause whichever file holds the A/B test.
    for path in (after_dir / "experiences" / "versions").glob("*.json"):
        data = json.loads(path.read_text())
        if data[0]["variants"][0]["__type"] == "ABTestVariant":
            data[0]["status"] = "PAUSED"
            path.write_text(json.dumps(data))
            versions = path
    assert versions.exists()
    traffic = write_jsonl(tmp_path / "t.jsonl", crafted_traffic())
    result = replay(load_snapshot(before), ReplayOptions([str(traffic)]), against=load_snapshot(after_dir))
    assert result.diff is not None
    assert not result.diff.rebucketed()
    assert {(m.experience, m.after) for m in result.diff.moves.values()} == {("1", None)}
