"""The report built from known tallies (rates, intervals, uplift, P2BB, insights, leader, winner, SRM) and the
`edgeproxy report` command (table, JSON, errors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.analytics_backends import store_events

from edgeproxy.analytics.report import build_report, render_table, report_scope
from edgeproxy.analytics.stats import draw_seed, probability_to_be_best, wilson_interval
from edgeproxy.analytics.tallies import Tallies
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.store import EventRecord

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = load_snapshot("rules")
PROJECT = SNAPSHOT.project
P = PROJECT.uid
T0 = 1_767_225_600.0
D = 86_400.0
CHECKOUT = next(e for e in PROJECT.experiences if e.short_uid == "2")  # A/B 50/30/20; purchase (primary), add_to_cart


def checkout_tallies(imps: tuple[int, int, int], buys: tuple[int, int, int], first: float = T0) -> Tallies:
    day = int(T0 // D)
    return Tallies(
        impressions={("2", v): n for v, n in zip("012", imps, strict=True)},
        daily_conversions={("2", v, "purchase", day): n for v, n in zip("012", buys, strict=True) if n},
        first_impression={"2": first},
    )


def experience(report: dict[str, Any], short_uid: str) -> dict[str, Any]:
    return dict(next(e for e in report["experiences"] if e["shortUid"] == short_uid))


def build(tallies: Tallies, now: float, short_uid: str | None = "2") -> dict[str, Any]:
    scope = report_scope(PROJECT, short_uid)
    return build_report(PROJECT, SNAPSHOT.version, tallies, scope, now=now)


def test_rates_intervals_uplift_and_p2bb() -> None:
    report = build(checkout_tallies((1000, 600, 400), (30, 36, 10)), now=T0 + 20 * D)
    exp = experience(report, "2")
    control, green, sticky = exp["variants"]
    assert [v["impressions"] for v in exp["variants"]] == [1000, 600, 400]
    assert control["control"] and not green["control"]
    assert [v["split"] for v in exp["variants"]] == [0.5, 0.3, 0.2]
    assert green["metrics"]["purchase"]["rate"] == pytest.approx(0.06)
    assert green["metrics"]["purchase"]["interval"] == pytest.approx(list(wilson_interval(36, 600) or ()))
    assert control["metrics"]["purchase"]["uplift"] is None
    assert green["metrics"]["purchase"]["uplift"] == pytest.approx((0.06 - 0.03) / 0.03)
    assert sticky["metrics"]["purchase"]["uplift"] == pytest.approx((0.025 - 0.03) / 0.03)
    seed = draw_seed(CHECKOUT.uid, CHECKOUT.metrics[0].event_uid)
    expected = probability_to_be_best([30, 36, 10], [1000, 600, 400], seed)
    assert [v["metrics"]["purchase"]["probabilityToBeBest"] for v in exp["variants"]] == expected
    purchase = exp["metrics"][0]
    assert purchase["key"] == "purchase" and purchase["primary"] and purchase["seed"] == seed
    assert exp["leader"] == "1" and exp["insightsAvailable"]
    assert [m["key"] for m in exp["metrics"]] == ["purchase", "add_to_cart"]
    assert green["metrics"]["add_to_cart"] == {
        "conversions": 0, "rate": 0.0, "interval": pytest.approx([0.0, wilson_interval(0, 600)[1]]),  # type: ignore[index]
        "uplift": None, "probabilityToBeBest": pytest.approx(1 / 3, abs=0.03),
    }  # fmt: skip
    # The same counts give the same report (seeded draws).
    again = build(checkout_tallies((1000, 600, 400), (30, 36, 10)), now=T0 + 20 * D)
    assert again["experiences"] == report["experiences"]


@pytest.mark.parametrize(
    ("days", "declared"), [(13.99, False), (14.0, True), (30.0, True)]
)
def test_a_winner_needs_14_days(days: float, declared: bool) -> None:
    exp = experience(build(checkout_tallies((1000, 1000, 1000), (20, 60, 20)), now=T0 + days * D), "2")
    assert exp["leader"] == "1"
    assert exp["winner"] == ("1" if declared else None)
    assert ("winner" in exp["flags"]) is declared
    assert exp["runningDays"] == pytest.approx(days, abs=1e-3)


def test_a_winner_needs_95_percent() -> None:
    exp = experience(build(checkout_tallies((1000, 1000, 1000), (30, 36, 28)), now=T0 + 40 * D), "2")
    assert exp["leader"] == "1" and exp["metrics"][0]["leaderProbability"] < 0.95
    assert exp["winner"] is None


@pytest.mark.parametrize(
    ("imps", "buys", "available"),
    [((500, 300, 199), (5, 10, 14), False),  # 999 impressions, 29 conversions
     ((500, 300, 200), (0, 0, 0), True),  # 1,000 impressions
     ((100, 60, 40), (10, 10, 10), True)],  # 30 conversions
)  # fmt: skip
def test_insights_start_at_1000_impressions_or_30_conversions(imps: Any, buys: Any, available: bool) -> None:
    exp = experience(build(checkout_tallies(imps, buys), now=T0 + 30 * D), "2")
    assert exp["insightsAvailable"] is available
    assert ("insights_not_available" in exp["flags"]) is not available
    if not available:
        assert exp["winner"] is None


def test_srm_on_a_skewed_split() -> None:
    skewed = experience(build(checkout_tallies((1000, 1000, 1000), (10, 10, 10)), now=T0 + D), "2")
    assert skewed["srm"]["checked"] and skewed["srm"]["mismatch"]
    assert skewed["srm"]["pValue"] < 0.001 and skewed["srm"]["degreesOfFreedom"] == 2
    assert skewed["srm"]["expected"] == {"0": 0.5, "1": 0.3, "2": 0.2}
    assert "sample_ratio_mismatch" in skewed["flags"]
    assert "WARNING sample ratio mismatch" in render_table(build(checkout_tallies((1000, 1000, 1000), (1, 1, 1)), T0))
    fair = experience(build(checkout_tallies((1510, 890, 600), (10, 10, 10)), now=T0 + D), "2")
    assert fair["srm"]["checked"] and not fair["srm"]["mismatch"]


def test_segmented_experiences_have_impressions_but_no_ab_statistics() -> None:
    tallies = Tallies(impressions={("0", "1"): 40, ("0", "2"): 7}, first_impression={"0": T0})
    exp = experience(build(tallies, now=T0 + D, short_uid=None), "0")
    assert exp["type"] == "SEGMENTED" and exp["metrics"] == [] and exp["srm"] is None
    assert [v["impressions"] for v in exp["variants"]] == [0, 40, 7, 0]
    assert all(v["split"] is None and not v["control"] for v in exp["variants"])


def test_experiences_come_in_priority_order_and_unknown_filters_are_refused() -> None:
    report = build(Tallies(), now=T0, short_uid=None)
    assert [e["shortUid"] for e in report["experiences"]] == ["1", "0", "6", "3", "2", "4", "8", "9", "7"]
    assert [e["priority"] for e in report["experiences"]] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="no live experience with short uid '5'"):
        report_scope(PROJECT, "5")  # draft-only: not live


def run_report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeproxy.cli", "report", "--rules", "rules", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_report_command_table_and_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    events = [EventRecord(T0 + i, P, f"u{i}", "IMPRESSION", "2", "012"[i % 3], None, "proxy") for i in range(30)]
    events += [EventRecord(T0 + 100 + i, P, f"u{i}", "EVENT", None, None, "purchase") for i in range(0, 30, 5)]
    store_events(url, events)
    table = run_report("--state", url, "--now", "2026-01-20")
    assert table.returncode == 0, table.stderr
    assert "[2] Checkout button test · A/B test · ACTIVE · running 19.0 days" in table.stdout
    assert "Purchases *" in table.stdout and "control" in table.stdout
    assert table.stdout.index("[1] Black Friday banner") < table.stdout.index("[7] Promo bar copy test")
    result = run_report("--state", url, "--json", "--experience", "2", "--now", "2026-01-20T00:00:00Z")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["projectUid"] == P and data["snapshotVersion"] == SNAPSHOT.version
    assert data["now"] == "2026-01-20T00:00:00Z" and data["window"] == {"since": None, "until": None}
    assert data["settings"]["draws"] == 15_000 and data["settings"]["conversionWindowDays"] == 30
    [exp] = data["experiences"]
    assert [v["impressions"] for v in exp["variants"]] == [10, 10, 10]
    assert [v["metrics"]["purchase"]["conversions"] for v in exp["variants"]] == [2, 2, 2]  # u0,u15 / u5,u20 / ...
    assert exp["firstImpressionAt"] == "2026-01-01T00:00:00Z"


def test_report_command_errors(tmp_path: Path) -> None:
    missing = run_report("--state", f"sqlite:///{tmp_path}/nope.db")
    assert missing.returncode == 2 and "no SQLite state file" in missing.stderr
    bad_time = run_report("--state", f"sqlite:///{tmp_path}/nope.db", "--since", "yesterday")
    assert bad_time.returncode == 2 and "ISO-8601" in bad_time.stderr
    order = run_report("--since", "2026-02-01", "--until", "2026-01-01")
    assert order.returncode == 2 and "--since must be before --until" in order.stderr
    unknown = run_report("--state", f"sqlite:///{tmp_path}/nope.db", "--experience", "42")
    assert unknown.returncode == 2 and "known: 1 (Black Friday banner)" in unknown.stderr
    (tmp_path / "other.db").write_bytes(b"")
    not_ours = run_report("--state", f"sqlite:///{tmp_path}/other.db")
    assert not_ours.returncode == 2 and "no events table" in not_ours.stderr
    down = run_report("--state", "redis://127.0.0.1:1/0")
    assert down.returncode == 2 and "cannot read events from Redis" in down.stderr
