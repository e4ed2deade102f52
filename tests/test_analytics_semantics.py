"""Impression and conversion semantics (SPEC §8 and README "Analytics") on event streams whose answers are known in
closed form, each run through the Python fold, SQLite and a real Redis stream: all three must give them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from support.analytics_backends import BACKENDS, tallies_via
from support.processes import redis_server

from edgeproxy.analytics.report import report_scope
from edgeproxy.analytics.tallies import Scope, Tallies
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.store import EventRecord
from edgeproxy.store.base import EventSource

P = "6565d3b1a3f0c7b2e1d4a9f0"
OTHER = "0123456789abcdef01234567"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
D = 86_400.0
PROJECT = load_snapshot("rules").project
SCOPE = report_scope(PROJECT)  # '2' -> {purchase, add_to_cart}, '3' -> {purchase, begin_checkout}, '7' -> {promo...}


def imp(user: str, exp: str, var: str, t: float, source: EventSource = "sdk", project: str = P) -> EventRecord:
    return EventRecord(t, project, user, "IMPRESSION", exp, var, None, source)


def ev(user: str, key: str, t: float, project: str = P) -> EventRecord:
    return EventRecord(t, project, user, "EVENT", None, None, key)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def tally(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str):  # type: ignore[no-untyped-def]
    def run(events: Sequence[EventRecord], scope: Scope = SCOPE) -> Tallies:
        return tallies_via(request.param, events, scope, P, tmp=tmp_path, redis_url=redis_url)

    return run


def conversions(t: Tallies, exp: str, key: str) -> dict[str, int]:
    return {v: n for (e, v, k), n in t.conversions().items() if e == exp and k == key and n}


def test_impressions_are_unique_per_user_and_variant_across_sources(tally) -> None:  # type: ignore[no-untyped-def]
    t = tally([
        imp("u1", "2", "0", T0, "sdk"), imp("u1", "2", "0", T0 + 1, "proxy"), imp("u1", "2", "0", T0 + 2, "origin"),
        imp("u1", "2", "0", T0 + D, "sdk"),  # a later view of the same variant: still one impression
        imp("u2", "2", "0", T0 + 5, "origin"),
        imp("u3", "2", "1", T0 + 7, "proxy"),
        imp("u1", "3", "2", T0 + 9, "sdk"),  # another experience: counted there
        imp("u9", "2", "0", T0, "sdk", project=OTHER),  # another project: never counted
    ])  # fmt: skip
    assert t.impressions == {("2", "0"): 2, ("2", "1"): 1, ("3", "2"): 1}
    assert t.first_impression["2"] == T0
    day = int(T0 // D)
    assert t.daily_impressions == {("2", "0", day): 2, ("2", "1", day): 1, ("3", "2", day): 1}


def test_conversion_window_is_30_days_after_the_impression_inclusive(tally) -> None:  # type: ignore[no-untyped-def]
    users = {"same-second": 0.0, "day-30-exactly": 30 * D, "a-second-late": 30 * D + 1, "day-29": 29 * D}
    events = [imp(u, "2", "0", T0) for u in users] + [ev(u, "purchase", T0 + dt) for u, dt in users.items()]
    t = tally(events)
    assert conversions(t, "2", "purchase") == {"0": 3}  # all but "a-second-late"
    assert t.daily_conversions[("2", "0", "purchase", int((T0 + 30 * D) // D))] == 1


def test_conversions_before_the_impression_are_ignored_and_a_later_one_counts(tally) -> None:  # type: ignore[no-untyped-def]
    t = tally([
        ev("early", "purchase", T0 - 1), imp("early", "2", "1", T0),  # only before: ignored
        ev("both", "purchase", T0 - D), imp("both", "2", "1", T0), ev("both", "purchase", T0 + 2 * D),
        ev("never-saw", "purchase", T0 + D),  # no impression at all
    ])  # fmt: skip
    assert conversions(t, "2", "purchase") == {"1": 1}
    assert t.daily_conversions == {("2", "1", "purchase", int((T0 + 2 * D) // D)): 1}


def test_a_conversion_counts_once_per_user_and_metric(tally) -> None:  # type: ignore[no-untyped-def]
    t = tally([
        imp("u", "2", "0", T0), ev("u", "purchase", T0 + 10), ev("u", "purchase", T0 + 20), ev("u", "purchase", T0 + D),
        ev("u", "add_to_cart", T0 + 5), ev("u", "add_to_cart", T0 + 6),
    ])  # fmt: skip
    assert conversions(t, "2", "purchase") == {"0": 1}
    assert conversions(t, "2", "add_to_cart") == {"0": 1}
    assert t.daily_conversions[("2", "0", "purchase", int(T0 // D))] == 1  # dated by the first one


def test_attribution_after_a_variant_change_goes_to_the_latest_first_seen_variant(tally) -> None:  # type: ignore[no-untyped-def]
    t = tally([
        # switched 0 -> 1 on day 10, converts on day 12: variant 1
        imp("switch", "2", "0", T0), imp("switch", "2", "1", T0 + 10 * D), ev("switch", "purchase", T0 + 12 * D),
        # converts on day 5 (variant 0) and again on day 12 after switching: only the first counts, for 0
        imp("early", "2", "0", T0), imp("early", "2", "1", T0 + 10 * D),
        ev("early", "purchase", T0 + 5 * D), ev("early", "purchase", T0 + 12 * D),
        # sees 0 again after 1: the unique impression of 0 is still dated day 0, so 1 is the latest: variant 1
        imp("back", "2", "0", T0), imp("back", "2", "1", T0 + 5 * D), imp("back", "2", "0", T0 + 10 * D),
        ev("back", "purchase", T0 + 12 * D),
        # 0 on day 0, 1 on day 40: day 35 is past 0's window and before 1: ignored; day 41 counts for 1
        imp("late", "2", "0", T0), imp("late", "2", "1", T0 + 40 * D),
        ev("late", "purchase", T0 + 35 * D), ev("late", "purchase", T0 + 41 * D),
        # two variants first seen in the same second: the short uid that sorts last (2)
        imp("tie", "2", "1", T0), imp("tie", "2", "2", T0), ev("tie", "purchase", T0 + 1),
    ])  # fmt: skip
    assert conversions(t, "2", "purchase") == {"0": 1, "1": 3, "2": 1}
    assert t.impressions == {("2", "0"): 4, ("2", "1"): 5, ("2", "2"): 1}


def test_only_metric_events_of_the_experience_convert(tally) -> None:  # type: ignore[no-untyped-def]
    t = tally([
        imp("u", "2", "0", T0), imp("u", "3", "1", T0), imp("u", "7", "1", T0),
        ev("u", "newsletter_signup", T0 + 1),  # a metric of nothing
        ev("u", "promo_bar_click", T0 + 2),  # a metric of 7 only
        ev("u", "begin_checkout", T0 + 3),  # a metric of 3 only
        ev("u", "purchase", T0 + 4),  # a metric of 2 and 3: counts for both
        imp("s", "0", "1", T0), ev("s", "purchase", T0 + 1),  # segmented experience 0 has no metrics
    ])  # fmt: skip
    assert t.conversions() == {
        ("2", "0", "purchase"): 1, ("3", "1", "purchase"): 1, ("3", "1", "begin_checkout"): 1,
        ("7", "1", "promo_bar_click"): 1,
    }  # fmt: skip


def test_a_report_window_keeps_only_events_inside_it(tally) -> None:  # type: ignore[no-untyped-def]
    since, until = T0 + 10 * D, T0 + 20 * D
    t = tally([
        imp("before", "2", "0", T0), ev("before", "purchase", T0 + 11 * D),  # impression outside: no conversion
        imp("inside", "2", "1", T0 + 10 * D), ev("inside", "purchase", T0 + 19 * D),
        imp("after", "2", "1", T0 + 20 * D), ev("after", "purchase", T0 + 20 * D),  # until is exclusive
        imp("late-conv", "2", "0", T0 + 15 * D), ev("late-conv", "purchase", T0 + 21 * D),
        imp("first-before", "2", "2", T0), imp("first-before", "2", "2", T0 + 12 * D),  # dated 12 in the window
    ], Scope(SCOPE.metrics, since, until))  # fmt: skip
    assert t.impressions == {("2", "1"): 1, ("2", "0"): 1, ("2", "2"): 1}
    assert t.first_impression["2"] == since
    assert conversions(t, "2", "purchase") == {"1": 1}


def test_variants_missing_from_the_snapshot_are_tallied_apart(tally) -> None:  # type: ignore[no-untyped-def]
    t = tally([imp("u", "2", "9", T0), ev("u", "purchase", T0 + 1), imp("v", "2", "0", T0), imp("w", "5", "0", T0)])
    assert t.impressions == {("2", "9"): 1, ("2", "0"): 1}  # experience 5 is not live: not in scope
    assert conversions(t, "2", "purchase") == {"9": 1}
