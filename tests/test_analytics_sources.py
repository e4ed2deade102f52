"""The SQL aggregation, the Redis stream reader and the Python fold agree: on random event streams (hypothesis) and
on four weeks of realistic traffic, where `edgeproxy report --json` is the same from SQLite and from Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.analytics_backends import store_events
from support.analytics_data import example_history
from support.processes import redis_server

from edgeproxy.analytics import sqlite_source
from edgeproxy.analytics.redis_source import redis_tallies
from edgeproxy.analytics.report import report_scope
from edgeproxy.analytics.sqlite_source import sqlite_tallies
from edgeproxy.analytics.tallies import Event, Scope, fold_events
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.store import EventRecord

P = "6565d3b1a3f0c7b2e1d4a9f0"
T0 = 1_767_225_600.0
D = 86_400.0
ROOT = Path(__file__).resolve().parent.parent
SCOPE = Scope({"a": frozenset({"buy", "click"}), "b": frozenset({"buy"}), "c": frozenset()})


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


# Times on a coarse grid (hours over ~70 days) so that ties, exact 30-day gaps and same-second events happen often.
times = st.integers(min_value=0, max_value=70 * 24).map(lambda h: T0 + h * 3600.0)
users = st.sampled_from([f"u{i}" for i in range(6)])
impressions = st.builds(
    lambda t, u, e, v: EventRecord(t, P, u, "IMPRESSION", e, v, None, "sdk"),
    times, users, st.sampled_from(["a", "b", "c", "z"]), st.sampled_from(["0", "1", "2"]),
)  # fmt: skip
conversions = st.builds(
    lambda t, u, k: EventRecord(t, P, u, "EVENT", None, None, k, "sdk"),
    times, users, st.sampled_from(["buy", "click", "other"]),
)  # fmt: skip
windows = st.sampled_from([(None, None), (T0 + 10 * D, None), (None, T0 + 40 * D), (T0 + 5 * D, T0 + 35 * D)])


def as_fold(events: list[EventRecord], scope: Scope):  # type: ignore[no-untyped-def]
    return fold_events((Event(e.ts, e.user_uid, e.type, e.experience_short_uid, e.variant_short_uid, e.event_key)
                        for e in events), scope)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.one_of(impressions, conversions), max_size=60), window=windows)
def test_sql_aggregation_equals_the_reference_fold(tmp_path: Path, events: list[EventRecord], window) -> None:  # type: ignore[no-untyped-def]
    scope = Scope(SCOPE.metrics, *window)
    path = tmp_path / f"h{time.monotonic_ns()}.db"
    store_events(f"sqlite:///{path}", events)
    expected = as_fold(events, scope)
    for daily in (True, False):
        got = sqlite_tallies(str(path), P, scope, daily=daily)
        assert got.impressions == expected.impressions
        assert got.daily_conversions == expected.daily_conversions
        assert got.first_impression == expected.first_impression
        if daily:
            assert got.daily_impressions == expected.daily_impressions


def test_redis_reader_pages_through_the_stream(redis_url: str) -> None:
    events = example_history(T0 + 28 * D, users=300)
    store_events(redis_url, events)
    scope = report_scope(load_snapshot("rules").project)
    expected = as_fold(events, scope)
    for page in (7, 1000, 100_000):
        got = redis_tallies(redis_url, P, scope, page=page)
        assert (got.impressions, got.daily_conversions, got.daily_impressions) == (
            expected.impressions, expected.daily_conversions, expected.daily_impressions,
        )  # fmt: skip


def report_json(state_url: str, *flags: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", "report", "--rules", "rules", "--state", state_url, "--json",
         "--now", "2026-01-29T00:00:00Z", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = dict(json.loads(result.stdout))
    data.pop("generatedAt")
    data.pop("source")
    return data


@pytest.mark.parametrize(
    "flags", [(), ("--since", "2026-01-10", "--until", "2026-01-20T12:00:00Z"), ("--experience", "2")]
)
def test_the_same_report_from_sqlite_and_redis(tmp_path: Path, redis_url: str, flags: tuple[str, ...]) -> None:
    events = example_history(T0 + 28 * D, users=1500)
    sqlite_url = f"sqlite:///{tmp_path}/state.db"
    store_events(sqlite_url, events)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    store_events(redis_url, events)
    from_sqlite = report_json(sqlite_url, *flags)
    assert from_sqlite == report_json(redis_url, *flags)
    exps = from_sqlite["experiences"]
    assert isinstance(exps, list) and exps
    assert sum(e["impressions"] for e in exps) > 0


@pytest.mark.parametrize("early", [1, 3, 100_000])
def test_first_impressions_when_experiences_start_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, early: int
) -> None:
    # Experience "b" starts 20 days after "a": with a short early walk its first impression needs the full pass.
    events = [EventRecord(T0 + h * 3600.0, P, f"u{h}", "IMPRESSION", "a", "0", None, "sdk") for h in range(48)]
    events += [EventRecord(T0 + 20 * D + h, P, f"v{h}", "IMPRESSION", "b", "1", None, "sdk") for h in range(5)]
    path = tmp_path / "late.db"
    store_events(f"sqlite:///{path}", events)
    monkeypatch.setattr(sqlite_source, "EARLY_IMPRESSIONS", early)
    for scope in (SCOPE, Scope(SCOPE.metrics, T0 + 10 * D, None)):
        got = sqlite_tallies(str(path), P, scope)
        assert got.first_impression == as_fold(events, scope).first_impression
