"""Data subject requests and retention (SPEC §11) from the outside: `edgeproxy user export|delete UID` as a process,
`GET`/`DELETE /_edgeproxy/users/{uid}` through the proxy's real server (in-process, tests/support/proxy_server.py),
a fleet of two proxies sharing one Redis `state`, and the background `Retention` job.

Everything runs on real SQLite files and a real redis-server (a missing redis-server fails, never skips). Every
clock is fixed and every event time is given: nothing here decides by the wall clock. Stored data is checked
without the store: sqlite3 on the file, a raw Redis client on every key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from support.processes import free_port, redis_server
from support.proxy_server import proxy_server
from test_store_user_data import Backend, backend, doc, event, run  # the same backends and event helpers

from edgeproxy.clock import parse_instant
from edgeproxy.runtime import users
from edgeproxy.runtime.config import ProxyConfig
from edgeproxy.runtime.serve import make_state
from edgeproxy.runtime.state import ProxyState
from edgeproxy.runtime.users import Retention
from edgeproxy.store import EventRecord, StateStore

ROOT = Path(__file__).resolve().parents[1]
P = json.loads((ROOT / "rules" / "personalize" / "projects" / "projects.json").read_text())[0]["uid"]
P2 = "7777aaaabbbbccccddddeeee"  # a second project sharing the store
__all__ = ["backend"]  # the fixture, shared
T = parse_instant("2026-11-22T10:00:00Z")  # every clock of this file
T_ISO = "2026-11-22T10:00:00Z"
DAY = 86_400.0
OPS = "ops-token-of-test-users"
ANN = "Ann-3F9c"  # mixed case on purpose: user uids are case-sensitive
ANN_FOLDED = "ann-3f9c"  # another user
BOB = "bob-81d2"
SECRET_VALUES = ("platinum-secret", "Leeds-secret")  # attribute values that must never reach a log line
VIP = {"tier": "gold", "lifetime_value": 1500}  # "VIP customers": experience 0 -> variant "0" (the example rules)


# -- backends ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


ANN_ATTRIBUTES = {P: {"tier": "platinum-secret", "visits": 3}, P2: {"city": "Leeds-secret"}}
ANN_EVENTS = [
    event(T - 3 * DAY, P, ANN, experience_short_uid="2", variant_short_uid="1", source="proxy"),
    event(T - 2 * DAY, P2, ANN, event_key="purchase"),
    event(T - DAY, P, ANN, event_key="signup", source="origin"),
]
OTHER_ATTRIBUTES = {ANN_FOLDED: {P: {"tier": "bronze"}}, BOB: {P: {"tier": "silver"}, P2: {"city": "York"}}}
OTHER_EVENTS = [
    event(T - 2.5 * DAY, P, ANN_FOLDED, event_key="purchase"),
    event(T - 1.5 * DAY, P, BOB, experience_short_uid="2", variant_short_uid="0"),
]


async def seed(store: StateStore) -> None:
    for uid, projects in [(ANN, ANN_ATTRIBUTES), *OTHER_ATTRIBUTES.items()]:
        for project, values in projects.items():
            await store.patch_attributes(project, uid, values)
    await store.append_events([OTHER_EVENTS[0], ANN_EVENTS[0], ANN_EVENTS[1]])
    await store.append_events([OTHER_EVENTS[1], ANN_EVENTS[2]])


def seed_store(backend: Backend, clock: float = T) -> None:
    async def go() -> None:
        store = backend.open(clock)
        await store.start()
        await seed(store)
        await store.close()

    run(go())


ANN_DOCUMENT = {"userUid": ANN, "attributes": ANN_ATTRIBUTES, "events": [doc(e) for e in ANN_EVENTS]}


def raw_traces(url: str, needle: str, path: Path | None = None) -> list[str]:
    """Every stored row, key, field, member or stream entry that mentions `needle`, read without the store."""
    found: list[str] = []
    if path is not None:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):  # names read from the schema itself
                if any(needle in str(column) for column in row):
                    found.append(f"{table}: {row}")
        db.close()
        return found
    client = redis.Redis.from_url(url, decode_responses=True)
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: list[str] = [key]
        if kind == "stream":
            values += [f"{i} {f}" for i, f in client.xrange(key)]  # type: ignore[union-attr]
        elif kind == "hash":
            values += [f"{k}={v}" for k, v in client.hgetall(key).items()]  # type: ignore[union-attr]
        elif kind == "zset":
            values += list(client.zrange(key, 0, -1))  # type: ignore[arg-type]
        elif kind == "set":
            values += list(client.smembers(key))  # type: ignore[arg-type]
        elif kind == "list":
            values += list(client.lrange(key, 0, -1))  # type: ignore[arg-type]
        elif kind == "string":
            values.append(str(client.get(key)))
        found += [f"{kind} {key}: {value}" for value in values if needle in value]
    client.close()
    return found


def user_data(backend: Backend, uid: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        store = backend.open()
        await store.start()
        try:
            return await store.user_data(uid)
        finally:
            await store.close()

    result: dict[str, Any] = run(go())
    return result


# -- 1. the command line -----------------------------------------------------------------------------------------------


def cli(*args: str, now: str = T_ISO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m edgeproxy.cli ARGS` with no EDGEPROXY_* of the caller's, on the proxy's clock setting `now`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    full.update({"EDGEPROXY_NOW": now, **(env or {})})
    argv = [sys.executable, "-m", "edgeproxy.cli", *args]
    return subprocess.run(argv, cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def test_cli_export_prints_one_json_document_of_the_users_attributes_and_events(backend: Backend) -> None:
    seed_store(backend)
    result = cli("user", "export", ANN, "--state", backend.url)
    assert result.returncode == 0, result.stderr
    # One document, the whole of stdout; the command also searches the forwarding outbox (empty here).
    assert json.loads(result.stdout) == {**ANN_DOCUMENT, "forwarding": []}
    assert "bronze" not in result.stdout and BOB not in result.stdout  # the case-folded uid is another user

    nobody = cli("user", "export", "nobody-here", "--state", backend.url)
    assert nobody.returncode == 0, nobody.stderr
    assert json.loads(nobody.stdout) == {"userUid": "nobody-here", "attributes": {}, "events": [], "forwarding": []}


def test_cli_delete_removes_everything_of_the_user_prints_counts_and_logs_no_user_data(backend: Backend) -> None:
    seed_store(backend)
    others = {uid: user_data(backend, uid) for uid in (ANN_FOLDED, BOB)}
    assert raw_traces(backend.url, ANN, backend.path)  # the check below sees the user when it is there

    result = cli("user", "delete", ANN, "--state", backend.url)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"userUid": ANN, "deleted": {"attributes": 2, "events": 3, "forwarding": 0}}
    assert raw_traces(backend.url, ANN, backend.path) == []
    for value in SECRET_VALUES:
        assert raw_traces(backend.url, value, backend.path) == []
    assert {uid: user_data(backend, uid) for uid in (ANN_FOLDED, BOB)} == others
    # The deletion is logged for the operator's audit trail: who asked, the counts, never the uid or the data.
    lines = [line for line in result.stderr.splitlines() if "user data deleted" in line]
    assert len(lines) == 1, result.stderr
    assert "command line" in lines[0] and "2 attribute sets" in lines[0] and "3 events" in lines[0], lines[0]
    assert users.uid_digest(ANN) in lines[0]
    for secret in (ANN, ANN.lower(), *SECRET_VALUES, "visits"):
        assert secret not in result.stderr, result.stderr

    again = cli("user", "delete", ANN, "--state", backend.url)  # idempotent
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["deleted"] == {"attributes": 0, "events": 0, "forwarding": 0}


def test_cli_reads_the_proxys_settings_attribute_lifetime_and_clock(tmp_path: Path) -> None:
    """Attributes written 200 days before `now` are still live for a proxy with attribute_ttl_days = 400: the
    export (what the proxy decides with) must show them, so the command must use the proxy's settings, not
    defaults, and the proxy's `now`."""
    path = tmp_path / "state.db"
    backend = Backend(f"sqlite:///{path}", "sqlite", path)
    seed_store(backend, clock=T - 200 * DAY)
    config = tmp_path / "edgeproxy.toml"
    config.write_text(f'state = "sqlite:///{path}"\nattribute_ttl_days = 400\n')
    result = cli("user", "export", ANN, "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["attributes"] == ANN_ATTRIBUTES
    # 800 days on, they are past the proxy's lifetime: not the user's live data any more
    later = cli("user", "export", ANN, "--config", str(config), now="2029-01-31T10:00:00Z")
    assert later.returncode == 0, later.stderr
    assert json.loads(later.stdout)["attributes"] == {}


@pytest.mark.parametrize("uid", ["has space", "x;Domain=evil.test", "x" * 257, "", 'quo"te', "é"])
@pytest.mark.parametrize("action", ["export", "delete"])
def test_cli_refuses_an_invalid_uid_with_one_clear_line(action: str, uid: str, tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    seed_store(Backend(f"sqlite:///{path}", "sqlite", path))
    result = cli("user", action, uid, "--state", f"sqlite:///{path}")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"edgeproxy: user {action}: ") and "user uid" in lines[0], lines[0]


def test_cli_refuses_a_bad_state_with_one_clear_line(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    missing = tmp_path / "no-such-state.db"
    for state in ("ftp://example.test/state", "sqlite:///", closed, f"sqlite:///{missing}"):
        for action in ("export", "delete"):
            result = cli("user", action, ANN, "--state", state)
            assert result.returncode == 2, (state, result.stdout, result.stderr)
            assert result.stdout == "", state
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"edgeproxy: user {action}: "), (state, result.stderr)
    # A mistyped SQLite path is an error, not an empty store created on the spot that "deletes 0 events".
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


# -- 2. the ops API through the proxy's server -------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    session: aiohttp.ClientSession
    port: int

    async def request(self, method: str, path: str, *, token: str | None = OPS, headers: dict[str, str] | None = None,
                      data: Any = None) -> Answer:  # fmt: skip
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        body = None if data is None else json.dumps(data)
        url = f"http://127.0.0.1:{self.port}{path}"
        async with self.session.request(method, url, headers=sent, data=body, allow_redirects=False) as response:
            return Answer(response.status, dict(response.headers), await response.read())

    async def user(self, method: str, uid: str, **kwargs: Any) -> Answer:
        headers = {"Accept": "application/json"}  # errors as JSON (a browser gets a page)
        return await self.request(method, f"/_edgeproxy/users/{uid}", headers=headers, **kwargs)

    async def edge(self, method: str, endpoint: str, uid: str, data: Any = None) -> Answer:
        headers = {"X-Project-Uid": P, "X-CS-Personalize-User-Uid": uid, "Content-Type": "application/json"}
        return await self.request(method, f"/_personalize/{endpoint}", token=None, headers=headers, data=data)

    async def variants(self, uid: str) -> dict[str, str | None]:
        answer = await self.edge("GET", "manifest", uid)
        assert answer.status == 200, answer
        variants: dict[str, str | None] = answer.json()["activeVariants"]
        return variants


def config_for(state: str, **settings: Any) -> ProxyConfig:
    base = ProxyConfig(origin="http://127.0.0.1:9", rules=str(ROOT / "rules"), state=state, ops_token=OPS)
    return replace(base, **settings)


@asynccontextmanager
async def serving(state: ProxyState) -> AsyncIterator[Client]:
    async with proxy_server(state) as server, aiohttp.ClientSession() as session:
        assert server.port is not None
        yield Client(session, server.port)


def ops_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The proxy's own log lines. (The access log, aiohttp's here and `--access-log` in serve, names every path,
    `users/{uid}` included: it is a log of requests, not of this feature.)"""
    return [record.getMessage() for record in caplog.records if record.name.startswith("edgeproxy")]


def test_ops_api_exports_and_deletes_a_user(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    state = make_state(config_for(backend.url), clock=lambda: T)

    async def scenario() -> None:
        async with serving(state) as client:
            await seed(state.store)
            others = {uid: await state.store.user_data(uid) for uid in (ANN_FOLDED, BOB)}
            got = await client.user("GET", ANN)
            assert got.status == 200, got
            assert got.headers["Content-Type"].startswith("application/json")
            assert got.json() == ANN_DOCUMENT
            assert (await client.user("GET", ANN_FOLDED)).json()["attributes"] == OTHER_ATTRIBUTES[ANN_FOLDED]

            deleted = await client.user("DELETE", ANN)
            assert deleted.status == 200, deleted
            assert deleted.json() == {"userUid": ANN, "deleted": {"attributes": 2, "events": 3}}
            after = await client.user("GET", ANN)
            assert after.status == 200 and after.json() == {"userUid": ANN, "attributes": {}, "events": []}
            assert {uid: await state.store.user_data(uid) for uid in (ANN_FOLDED, BOB)} == others
            assert (await client.user("DELETE", ANN)).json()["deleted"] == {"attributes": 0, "events": 0}

    run(scenario())
    assert raw_traces(backend.url, ANN, backend.path) == []
    lines = [line for line in ops_records(caplog) if "user data deleted" in line]
    assert len(lines) == 2 and "ops API" in lines[0] and "2 attribute sets, 3 events" in lines[0], lines
    for line in ops_records(caplog):
        for secret in (ANN, *SECRET_VALUES):
            assert secret not in line, line


def test_ops_api_uid_with_percent_encoded_characters(tmp_path: Path) -> None:
    state = make_state(config_for(f"sqlite:///{tmp_path}/state.db"), clock=lambda: T)
    uids = {"50%off": "50%25off", "team/ann": "team%2Fann", "a+b=c": "a+b=c"}

    async def scenario() -> None:
        async with serving(state) as client:
            for uid in uids:
                await state.store.patch_attributes(P, uid, {"who": uid})
            for uid, spelled in uids.items():
                got = await client.user("GET", spelled)
                assert got.status == 200 and got.json()["attributes"] == {P: {"who": uid}}, (uid, got)
                gone = await client.user("DELETE", spelled)
                assert gone.json() == {"userUid": uid, "deleted": {"attributes": 1, "events": 0}}, (uid, gone)

    run(scenario())


def test_ops_api_refusals(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    guarded = make_state(config_for(url), clock=lambda: T)
    unguarded = make_state(config_for(url, ops_token=""), clock=lambda: T)

    async def scenario() -> None:
        async with serving(guarded) as client:
            await guarded.store.patch_attributes(P, ANN, {"tier": "gold"})
            for method in ("GET", "DELETE"):
                missing = await client.user(method, ANN, token=None)
                assert missing.status == 401, (method, missing)
                assert missing.headers.get("WWW-Authenticate", "").startswith("Bearer"), missing.headers
                wrong = await client.user(method, ANN, token="not-the-token")
                assert wrong.status == 401, (method, wrong)
                assert "gold" not in missing.body.decode() + wrong.body.decode()
            for spelled in ("has%20space", "x%3BDomain%3Devil", "x" * 257, "%C3%A9"):
                bad = await client.user("GET", spelled)
                assert bad.status == 400 and bad.json()["error"] == "invalid_user_uid", (spelled, bad)
            for method in ("POST", "PUT", "PATCH"):
                not_allowed = await client.user(method, ANN, data={"tier": "x"})
                assert not_allowed.status == 405, (method, not_allowed)
                assert set(not_allowed.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "DELETE"}
            assert await guarded.store.get_attributes(P, ANN) == {"tier": "gold"}  # nothing of the above deleted
        async with serving(unguarded) as client:
            for method in ("GET", "DELETE"):
                off = await client.user(method, ANN)
                assert off.status == 403 and "ops_token" in off.json()["message"], (method, off)
            assert await unguarded.store.get_attributes(P, ANN) == {"tier": "gold"}

    run(scenario())


# -- 3. a fleet sharing Redis ------------------------------------------------------------------------------------------


def test_fleet_attributes_written_through_one_instance_are_deleted_fleet_wide(redis_url: str) -> None:
    a = make_state(config_for(redis_url), clock=lambda: T)
    b = make_state(config_for(redis_url), clock=lambda: T)
    uid = "fleet-visitor-7Q"

    async def scenario() -> None:
        async with serving(a) as on_a, serving(b) as on_b:
            assert (await on_b.variants(uid))["0"] is None  # no attributes yet: not a VIP
            patched = await on_a.edge("PATCH", "user-attributes", uid, VIP)
            assert patched.status == 200, patched
            assert (await on_b.variants(uid))["0"] == "0"  # B decides with what A stored
            events = [{"type": "IMPRESSION", "experienceShortUid": "0", "variantShortUid": "0"},
                      {"type": "EVENT", "eventKey": "purchase"}]  # fmt: skip
            posted = await on_b.edge("POST", "events", uid, events)
            assert 200 <= posted.status < 300, posted
            exported = (await on_b.user("GET", uid)).json()
            assert exported["attributes"] == {P: VIP}
            assert [e["type"] for e in exported["events"]] == ["IMPRESSION", "EVENT"]
            assert raw_traces(redis_url, uid)

            deleted = await on_a.user("DELETE", uid)
            assert deleted.status == 200, deleted
            assert deleted.json() == {"userUid": uid, "deleted": {"attributes": 1, "events": 2}}
            assert raw_traces(redis_url, uid) == []  # no key, field, member or stream entry left
            assert (await on_b.variants(uid))["0"] is None  # B's next manifest no longer sees the attributes
            assert (await on_b.user("GET", uid)).json() == {"userUid": uid, "attributes": {}, "events": []}

    run(scenario())


# -- 4. retention ------------------------------------------------------------------------------------------------------


def retention_events() -> tuple[list[EventRecord], list[EventRecord]]:
    """(older than 30 days before T, younger), across two projects and users, appended in time order."""
    old = [event(T - d * DAY, p, u, event_key=f"old{d}") for d, p, u in
           ((45, P, ANN), (40, P2, BOB), (35, P, BOB), (31, P2, ANN), (30.5, P, ANN))]  # fmt: skip
    young = [event(T - d * DAY, p, u, event_key=f"young{d}") for d, p, u in
             ((29.5, P, ANN), (10, P2, BOB), (0, P, BOB))]  # fmt: skip
    return old, young


def remaining(backend: Backend) -> list[float]:
    return sorted(e["ts"] for uid in (ANN, BOB) for e in user_data(backend, uid)["events"])


def test_retention_deletes_only_events_older_than_the_period(backend: Backend) -> None:
    old, young = retention_events()

    async def scenario() -> tuple[int, int]:
        store = backend.open()
        await store.start()
        await store.append_events(sorted(old + young, key=lambda e: e.ts))
        await store.patch_attributes(P, ANN, {"tier": "gold"})
        retention = Retention(store, lambda: T, 30)
        first, second = await retention.run_once(), await retention.run_once()
        assert await store.get_attributes(P, ANN) == {"tier": "gold"}  # attributes are not events
        await store.close()
        return first, second

    assert run(scenario()) == (len(old), 0)
    assert remaining(backend) == sorted(e.ts for e in young)


def test_retention_work_per_run_is_bounded(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users, "RETENTION_BATCH", 2)
    monkeypatch.setattr(users, "RETENTION_BATCHES_PER_RUN", 2)
    old, young = retention_events()

    async def scenario() -> tuple[list[int], int]:
        store = backend.open()
        await store.start()
        await store.append_events(sorted(old + young, key=lambda e: e.ts))
        retention = Retention(store, lambda: T, 30)
        runs = [await retention.run_once() for _ in range(3)]
        await store.close()
        return runs, retention.deleted

    runs, deleted = run(scenario())
    assert runs == [4, 1, 0]  # at most 2 batches of 2 per run; the rest waits for the next run
    assert deleted == len(old)
    assert remaining(backend) == sorted(e.ts for e in young)


async def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` every 10 ms (a bound on waiting, not a clock the outcome depends on)."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "edgeproxy.users" and "retention run failed" in r.getMessage()]


def test_retention_keeps_running_when_the_sqlite_store_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgeproxy.users")
    backend = Backend(f"sqlite:///{tmp_path}/state.db", "sqlite", tmp_path / "state.db")

    async def scenario() -> None:
        store = backend.open()
        await store.start()
        await store.append_events(retention_events()[0])
        await store.close()  # a real store, closed: every run fails
        retention = Retention(store, lambda: T, 30, interval=0.01)
        retention.start()
        try:
            await _wait_for(lambda: len(_failures(caplog)) >= 3, "three failed runs")
            assert retention._task is not None and not retention._task.done()  # the loop goes on
        finally:
            await retention.stop()
        assert retention.deleted == 0

    run(scenario())
    failures = _failures(caplog)
    assert all(r.levelno == logging.WARNING for r in failures)
    assert len(remaining(backend)) == len(retention_events()[0])


def test_retention_recovers_when_redis_comes_back(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgeproxy.users")
    backend = Backend(redis_url, "redis")
    old, young = retention_events()

    async def scenario() -> None:
        store = backend.open()
        await store.start()
        await store.append_events(old + young)
        await store.close()
        retention = Retention(store, lambda: T, 30, interval=0.01)
        retention.start()
        try:
            await _wait_for(lambda: len(_failures(caplog)) >= 2, "failed runs on the closed store")
            await store.start()  # the store is back: the next run does the work
            await _wait_for(lambda: retention.deleted == len(old), "the old events deleted")
        finally:
            await retention.stop()
            await store.close()

    run(scenario())
    assert remaining(backend) == sorted(e.ts for e in young)
    assert any("retention: 5 events" in r.getMessage() for r in caplog.records)


def test_serve_runs_retention_when_retention_days_is_set(tmp_path: Path) -> None:
    backend = Backend(f"sqlite:///{tmp_path}/state.db", "sqlite", tmp_path / "state.db")
    old, young = retention_events()

    async def seed_events() -> None:
        store = backend.open()
        await store.start()
        await store.append_events(old + young)
        await store.close()

    run(seed_events())
    without = make_state(config_for(backend.url), clock=lambda: T, serving=True)
    assert without.retention is None  # off by default: events are kept
    state = make_state(config_for(backend.url, retention_days=30.0), clock=lambda: T, serving=True)
    assert state.retention is not None

    async def scenario() -> None:
        async with serving(state):
            retention = state.retention
            assert retention is not None
            await _wait_for(lambda: retention.deleted == len(old), "the first retention run")

    run(scenario())
    assert remaining(backend) == sorted(e.ts for e in young)
