"""One definition of the report's semantics, two SQL dialects: the same events stored in SQLite and in PostgreSQL
give the same tallies (random streams, against the reference fold too), the same `edgeproxy report --json` (whole
report, windows, one experience; several seeded histories) and the same dashboard data; `report --events` and
the dashboard read the PostgreSQL event store."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.analytics_backends import store_events
from support.analytics_data import example_history
from support.postgres import PostgresServer, store_postgres_events
from support.processes import free_port, redis_server

from edgeproxy.analytics.postgres_source import postgres_tallies
from edgeproxy.analytics.report import daily_series, report_scope
from edgeproxy.analytics.sources import change_marker, collect_tallies
from edgeproxy.analytics.sqlite_source import AnalyticsError, sqlite_tallies
from edgeproxy.analytics.tallies import Event, Scope, Tallies, day_of, fold_events
from edgeproxy.endpoints.dashboard import dashboard_handler
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.runtime.config import load_config
from edgeproxy.runtime.serve import make_state
from edgeproxy.store import EventRecord
from edgeproxy.store.postgres_events import PostgresEventStore

P = "6565d3b1a3f0c7b2e1d4a9f0"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
D = 86_400.0
ROOT = Path(__file__).resolve().parent.parent
SCOPE = Scope({"a": frozenset({"buy", "click"}), "b": frozenset({"buy"}), "c": frozenset()})
TOKEN = "t0ken"
OTHER_PROJECT = "7777d3b1a3f0c7b2e1d4a9f0"

# Times on a coarse grid (hours over ~70 days) so that ties, exact 30-day gaps and same-second events happen often,
# and a few users so that each has many events.
# Half the times on a 6-hour grid: two variants first seen at the same second (the tie-break) and conversions
# exactly 30 days after an impression are frequent.
times = st.one_of(
    st.integers(min_value=0, max_value=70 * 24).map(lambda h: T0 + h * 3600.0),
    st.integers(min_value=0, max_value=70 * 4).map(lambda q: T0 + q * 6 * 3600.0),
)
users = st.sampled_from([f"u{i}" for i in range(6)])
impressions = st.builds(
    lambda t, u, e, v, s: EventRecord(t, P, u, "IMPRESSION", e, v, None, s),
    times, users, st.sampled_from(["a", "b", "c", "z"]), st.sampled_from(["0", "1", "2"]),
    st.sampled_from(["sdk", "proxy", "origin"]),
)  # fmt: skip
conversions = st.builds(
    lambda t, u, k: EventRecord(t, P, u, "EVENT", None, None, k, "sdk"),
    times, users, st.sampled_from(["buy", "click", "other"]),
)  # fmt: skip
windows = st.sampled_from(
    [
        (None, None),
        (T0 + 10 * D, None),
        (None, T0 + 40 * D),
        (T0 + 5 * D, T0 + 35 * D),
        (T0 + 5.5 * D, T0 + 6 * D),
        (T0 + 2.25 * D, T0 + 33.75 * D),
    ]
)


def fold(events: list[EventRecord], scope: Scope) -> Tallies:
    return fold_events((Event(e.ts, e.user_uid, e.type, e.experience_short_uid, e.variant_short_uid, e.event_key)
                        for e in events if e.project_uid == P), scope)  # fmt: skip


def same_tallies(got: Tallies, expected: Tallies, *, daily: bool) -> None:
    assert got.impressions == expected.impressions
    assert got.daily_conversions == expected.daily_conversions
    assert got.first_impression == expected.first_impression
    if daily:
        assert got.daily_impressions == expected.daily_impressions
    else:
        assert got.daily_impressions is None


_examples = itertools.count()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.one_of(impressions, conversions), max_size=60), window=windows)
def test_postgres_aggregation_equals_sqlite_and_the_reference_fold(
    tmp_path: Path, postgres_url: str, events: list[EventRecord], window: tuple[float | None, float | None]
) -> None:
    # One database for every example: each example writes to its own project (and event ids), other projects'
    # events are there too and must not count.
    n = next(_examples)
    project = f"{n:024x}"
    mine = [dataclasses.replace(e, project_uid=project) for e in events]
    store_postgres_events(postgres_url, mine, id_prefix=f"x{n}-")
    scope = Scope(SCOPE.metrics, *window)
    path = tmp_path / f"example-{n}.db"
    store_events(f"sqlite:///{path}", mine)
    expected = fold(events, scope)
    for daily in (True, False):
        from_postgres = postgres_tallies(postgres_url, project, scope, daily=daily)
        same_tallies(from_postgres, expected, daily=daily)
        same_tallies(sqlite_tallies(str(path), project, scope, daily=daily), expected, daily=daily)


def random_stream(seed: int, project: str, size: int = 600) -> list[EventRecord]:
    """`size` events of 12 users over 70 days: times on a 6-hour grid, on the hour or at any second (ties, exact
    30-day gaps, events just inside and outside windows), every source, metric and non-metric keys."""
    rng = random.Random(seed)
    events = []
    for _ in range(size):
        grid = rng.random()
        if grid < 0.4:
            ts = T0 + rng.randrange(70 * 4) * 6 * 3600.0
        elif grid < 0.7:
            ts = T0 + rng.randrange(70 * 24) * 3600.0
        else:
            ts = T0 + rng.random() * 70 * D
        user = f"u{rng.randrange(12)}"
        if rng.random() < 0.55:
            source = rng.choice(["sdk", "proxy", "origin"])
            experience, variant = rng.choice("abcz"), rng.choice("012")
            events.append(EventRecord(ts, project, user, "IMPRESSION", experience, variant, None, source))  # type: ignore[arg-type]
        else:
            events.append(EventRecord(ts, project, user, "EVENT", None, None, rng.choice(["buy", "click", "other"])))
    return events


RANDOM_WINDOWS = [
    (None, None),
    (T0 + 10 * D, None),
    (None, T0 + 40 * D),
    (T0 + 2.25 * D, T0 + 33.75 * D),
    (T0 + 5.5 * D + 1, T0 + 6 * D),
    (T0 + 31 * D, T0 + 62.5 * D),
]


@pytest.mark.parametrize("seed", range(8))
def test_postgres_equals_sqlite_and_the_fold_on_seeded_random_streams(
    tmp_path: Path, postgres_url: str, seed: int
) -> None:
    events = random_stream(seed, P)
    events += random_stream(seed + 100, OTHER_PROJECT, size=100)  # another project's events never count
    # Small batches, out of time order: later batches lower first-seen times that earlier ones set.
    store_postgres_events(postgres_url, events, batch=97)
    path = tmp_path / "state.db"
    store_events(f"sqlite:///{path}", events)
    converted = 0
    for window in RANDOM_WINDOWS:
        scope = Scope(SCOPE.metrics, *window)
        expected = fold(events, scope)
        converted += sum(expected.daily_conversions.values())
        for daily in (True, False):
            same_tallies(postgres_tallies(postgres_url, P, scope, daily=daily), expected, daily=daily)
            same_tallies(sqlite_tallies(str(path), P, scope, daily=daily), expected, daily=daily)
    assert converted > 0, "the streams must convert: comparing empty tallies would prove nothing"


def test_the_boundaries_of_attribution_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    def imp(ts: float, user: str, variant: str, experience: str = "a") -> EventRecord:
        return EventRecord(ts, P, user, "IMPRESSION", experience, variant, None, "sdk")

    def buy(ts: float, user: str) -> EventRecord:
        return EventRecord(ts, P, user, "EVENT", None, None, "buy", "sdk")

    events = [
        imp(T0, "tie", "0"), imp(T0, "tie", "1"), buy(T0 + D, "tie"),  # same first-seen: the variant sorting last
        imp(T0, "edge", "2"), buy(T0 + 30 * D, "edge"),  # exactly 30 days after: counts
        imp(T0, "late", "2"), buy(T0 + 30 * D + 1, "late"),  # a second more: does not
        imp(T0 + 5, "same", "0"), buy(T0 + 5, "same"), buy(T0 + D + 6, "same"),  # at the impression's second, once
        imp(T0, "two", "0"), imp(T0 + D, "two", "1"), buy(T0 + 2 * D, "two"),  # the latest first-seen variant
        buy(T0, "before"), imp(T0 + 1, "before", "0"),  # before any impression: ignored
        imp(T0, "switch", "0"), imp(T0 + 2 * D, "switch", "1"), buy(T0 + 3 * D, "switch"), buy(T0 + D, "switch"),
    ]  # fmt: skip
    store_postgres_events(postgres_url, events)
    store_events(f"sqlite:///{tmp_path}/state.db", events)
    scope = Scope({"a": frozenset({"buy"})})
    # "switch" converts first on day 1, while seeing variant 0; the later conversion under variant 1 is not counted.
    expected = {("a", "1", "buy", day_of(T0 + D)): 1, ("a", "2", "buy", day_of(T0 + 30 * D)): 1,
                ("a", "0", "buy", day_of(T0)): 1, ("a", "0", "buy", day_of(T0 + D)): 1,
                ("a", "1", "buy", day_of(T0 + 2 * D)): 1}  # fmt: skip
    for daily in (True, False):
        assert postgres_tallies(postgres_url, P, scope, daily=daily).daily_conversions == expected
        assert sqlite_tallies(f"{tmp_path}/state.db", P, scope, daily=daily).daily_conversions == expected
    assert fold(events, scope).daily_conversions == expected


def report_json(*flags: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_report(*flags, env=env)
    assert result.returncode == 0, result.stderr
    data = dict(json.loads(result.stdout))
    data.pop("generatedAt")
    data.pop("source")  # names the store: the one field that differs by design
    return data


def run_report(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", "report", "--rules", "rules", "--json", "--now",
         "2026-01-29T00:00:00Z", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**environ, **(env or {})},
    )  # fmt: skip


REPORT_FLAGS = [
    (),
    ("--since", "2026-01-10", "--until", "2026-01-20T12:00:00Z"),
    ("--since", "2026-01-15T06:30:00Z"),
    ("--until", "2026-01-08"),
    ("--experience", "2"),
]


@pytest.mark.parametrize("seed", [7, 23, 2026])
def test_the_same_report_json_from_sqlite_and_postgres(tmp_path: Path, postgres_url: str, seed: int) -> None:
    events = example_history(T0 + 28 * D, users=700, seed=seed)
    sqlite_url = f"sqlite:///{tmp_path}/state.db"
    store_events(sqlite_url, events)
    assert store_postgres_events(postgres_url, events) == len(events)
    for flags in REPORT_FLAGS:
        from_sqlite = report_json("--state", sqlite_url, *flags)
        from_postgres = report_json("--events", postgres_url, *flags)
        assert from_postgres == from_sqlite, flags
        assert sum(e["impressions"] for e in from_sqlite["experiences"]) > 0
    # EDGEPROXY_EVENTS is read as the flag's default; the `source` names the event store, password hidden.
    secret = postgres_url.replace("edgeproxy@", "edgeproxy:pw@")
    result = run_report(env={"EDGEPROXY_EVENTS": secret})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"] == secret.replace("edgeproxy:pw@", "***@")


@pytest.mark.parametrize("seed", [7, 11])
def test_the_daily_series_are_the_same_from_sqlite_and_postgres(tmp_path: Path, postgres_url: str, seed: int) -> None:
    events = example_history(T0 + 28 * D, users=500, seed=seed)
    sqlite_url = f"sqlite:///{tmp_path}/state.db"
    store_events(sqlite_url, events)
    store_postgres_events(postgres_url, events)
    project = load_snapshot("rules").project
    for since, until in [(None, None), (T0 + 3 * D, T0 + 20 * D)]:
        scope = report_scope(project, None, since, until)
        from_sqlite = collect_tallies(sqlite_url, P, scope, daily=True)
        from_postgres = collect_tallies(postgres_url, P, scope, daily=True)
        same_tallies(from_postgres, from_sqlite, daily=True)
        assert daily_series(project, from_postgres, scope) == daily_series(project, from_sqlite, scope)


def test_report_events_errors_say_what_and_where(postgres_server: PostgresServer, postgres_url: str) -> None:
    bad = run_report("--events", "mysql://db/events")
    assert bad.returncode == 2 and "--events" in bad.stderr and "postgresql://" in bad.stderr
    empty = run_report("--events", postgres_url)  # a database the proxy never wrote to
    assert empty.returncode == 2 and "no edgeproxy_events table" in empty.stderr
    unreachable = run_report("--events", f"postgresql://edgeproxy:pw@127.0.0.1:{free_port()}/events")
    assert unreachable.returncode == 2 and "cannot connect to the PostgreSQL event store" in unreachable.stderr
    assert "pw" not in unreachable.stderr and "Traceback" not in unreachable.stderr + empty.stderr


def test_change_marker_moves_when_events_are_inserted_or_deleted(postgres_url: str) -> None:
    with pytest.raises(AnalyticsError):
        collect_tallies(postgres_url, P, SCOPE)  # no table yet
    assert change_marker(postgres_url, P) is None
    store_postgres_events(postgres_url, [EventRecord(T0, P, "u1", "IMPRESSION", "a", "0", None, "sdk")])
    first = change_marker(postgres_url, P)
    store_postgres_events(postgres_url, [EventRecord(T0 - 3 * D, P, "u2", "IMPRESSION", "a", "1", None, "sdk")],
                          id_prefix="older")  # fmt: skip
    second = change_marker(postgres_url, P)
    assert second not in (None, first)
    assert store_postgres_events(postgres_url, [EventRecord(T0, P, "u1", "IMPRESSION", "a", "0", None, "sdk")]) == 0
    assert change_marker(postgres_url, P) == second  # a replay changed nothing

    async def delete() -> int:
        store = PostgresEventStore(postgres_url)
        await store.start()
        try:
            return await store.delete_user_events("u2")
        finally:
            await store.close()

    assert asyncio.run(delete()) == 1
    assert change_marker(postgres_url, P) not in (None, first, second)


def dashboard_data(state_url: str, events_url: str = "") -> dict[str, Any]:
    values = {"origin": "http://127.0.0.1:9", "rules": "rules", "state": state_url, "events": events_url,
              "ops_token": TOKEN, "now": "2026-01-29T00:00:00Z"}  # fmt: skip
    state = make_state(load_config(None, {}, values))

    async def handle(request: web.Request) -> web.StreamResponse:
        return await dashboard_handler(request, state)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)

    async def main() -> dict[str, Any]:
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/_edgeproxy/dashboard/data.json?token=" + TOKEN)
            assert response.status == 200, await response.text()
            return dict(await response.json())

    data = asyncio.run(main())
    for volatile in ("generatedAt", "computeSeconds", "live"):  # live: this process's decisions since it started
        data.pop(volatile)
    data["report"].pop("generatedAt")
    return data


def test_the_dashboard_reads_the_configured_event_store(tmp_path: Path, postgres_url: str) -> None:
    # A fleet: Redis state (no events in it) and the PostgreSQL event store; the dashboard shows what the same
    # events in a single machine's SQLite state show.
    events = example_history(T0 + 28 * D, users=400, seed=5)
    with_events = f"sqlite:///{tmp_path}/with-events.db"
    store_events(with_events, events)
    store_postgres_events(postgres_url, events)
    from_sqlite = dashboard_data(with_events)
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as redis_url:
        from_postgres = dashboard_data(redis_url, postgres_url)
    assert from_postgres["report"].pop("source") == postgres_url.replace("edgeproxy@", "***@")
    from_sqlite["report"].pop("source")
    assert from_postgres == from_sqlite
    assert sum(e["impressions"] for e in from_postgres["report"]["experiences"]) > 0


@pytest.mark.parametrize("seed", [3, 4])
def test_first_seen_times_follow_retention_and_deletion(postgres_url: str, seed: int) -> None:
    # Without a window the report reads the first-seen times the store maintains; after retention drops the
    # impressions they came from, and after a user's deletion, they are what the remaining events say.
    events = random_stream(seed, P, size=800)
    store_postgres_events(postgres_url, events)
    older_than = T0 + 20 * D + 7 * 3600
    gone = "u3"

    async def purge_and_delete() -> tuple[int, int]:
        store = PostgresEventStore(postgres_url)
        await store.start()
        try:
            return await store.purge_events(older_than), await store.delete_user_events(gone)
        finally:
            await store.close()

    purged, deleted = asyncio.run(purge_and_delete())
    remaining = [e for e in events if e.ts >= older_than and e.user_uid != gone]
    assert purged == sum(1 for e in events if e.ts < older_than)
    assert deleted == sum(1 for e in events if e.ts >= older_than and e.user_uid == gone) > 0
    for daily in (True, False):
        same_tallies(postgres_tallies(postgres_url, P, SCOPE, daily=daily), fold(remaining, SCOPE), daily=daily)
    # Late events older than the limit (a drain that was behind) count again until the next purge.
    late = [EventRecord(T0 + D, P, "u5", "IMPRESSION", "a", "2", None, "sdk")]
    store_postgres_events(postgres_url, late, id_prefix="late")
    same_tallies(postgres_tallies(postgres_url, P, SCOPE), fold(remaining + late, SCOPE), daily=False)
