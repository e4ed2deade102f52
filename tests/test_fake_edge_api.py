"""`edgeproxy fake-edge-api`: the local Personalize Edge API that forwarding is tested against. It must accept and
record exactly what the SDK sends, reject what the real API rejects (without recording it), and fail on demand."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edgeproxy.sync.fake_edge_api import FakeEdgeApi

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "6565d3b1a3f0c7b2e1d4a9f0"
HEADERS = {"X-Project-Uid": PROJECT, "X-CS-Personalize-User-Uid": "u1"}
IMPRESSION = {"type": "IMPRESSION", "experienceShortUid": "0", "variantShortUid": "1"}
EVENT = {"type": "EVENT", "eventKey": "buy-now"}


class Client:
    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: str | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], Any]:  # fmt: skip
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        kwargs: dict[str, Any] = {"data": data, "headers": HEADERS if headers is None else headers}
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        async with self.session.request(method, str(self.server.make_url(path)), **kwargs) as reply:
            text = await reply.text()
            return reply.status, dict(reply.headers), json.loads(text) if text else None

    async def fault(self, fault: dict[str, Any]) -> None:
        status, _, _ = await self.call("POST", "/_fake/faults", fault, headers={})
        assert status == 200

    async def received(self, since: int | None = None) -> list[dict[str, Any]]:
        path = "/_fake/received" + (f"?since={since}" if since is not None else "")
        return (await self.call("GET", path, headers={}))[2]  # type: ignore[no-any-return]

    async def faulted(self) -> list[dict[str, Any]]:
        return (await self.call("GET", "/_fake/faulted", headers={}))[2]  # type: ignore[no-any-return]


@asynccontextmanager
async def serving(project_uids: tuple[str, ...] = ()) -> AsyncIterator[Client]:
    server = TestServer(FakeEdgeApi(project_uids).app(), host="127.0.0.1")  # a free loopback port
    async with server, aiohttp.ClientSession() as session:
        yield Client(server, session)


def run(test: Callable[[Client], Awaitable[None]], project_uids: tuple[str, ...] = ()) -> None:
    async def main() -> None:
        async with serving(project_uids) as client:
            await test(client)

    asyncio.run(main())


def test_each_write_path_is_accepted_and_recorded_in_order() -> None:
    async def test(c: Client) -> None:
        assert (await c.call("POST", "/events", [IMPRESSION, EVENT]))[0] == 200
        assert (await c.call("PATCH", "/user-attributes", {"tier": "gold", "age": 41}))[0] == 200
        merge = {"sourceUserUid": "u1", "targetUserUid": "u2"}
        only_project = {"X-Project-Uid": PROJECT}
        assert (await c.call("POST", "/user-attributes/actions/merge", merge, headers=only_project))[0] == 200
        got = await c.received()
        assert [(r["seq"], r["method"], r["path"]) for r in got] == [
            (1, "POST", "/events"), (2, "PATCH", "/user-attributes"), (3, "POST", "/user-attributes/actions/merge"),
        ]  # fmt: skip
        assert got[0]["body"] == [IMPRESSION, EVENT]
        assert got[0]["headers"]["X-Project-Uid"] == PROJECT and got[0]["headers"]["X-CS-Personalize-User-Uid"] == "u1"
        assert got[1]["body"] == {"tier": "gold", "age": 41}
        assert got[2]["body"] == merge and "X-CS-Personalize-User-Uid" not in got[2]["headers"]
        assert [r["seq"] for r in await c.received(since=2)] == [3]
        assert (await c.call("DELETE", "/_fake/received", headers={}))[0] == 200
        assert await c.received() == []
        await c.call("POST", "/events", [EVENT])
        assert [r["seq"] for r in await c.received()] == [4]  # sequence numbers keep counting

    run(test)


def test_the_manifest_is_empty_and_names_a_user() -> None:
    async def test(c: Client) -> None:
        status, headers, body = await c.call("GET", "/manifest")
        assert status == 200 and body == {"experiences": [], "activeVariants": {}}
        assert headers["X-CS-Personalize-User-Uid"] == "u1"
        status, headers, _ = await c.call("GET", "/manifest", headers={"X-Project-Uid": PROJECT})
        assert status == 200 and headers["X-CS-Personalize-User-Uid"]

    run(test)


@pytest.mark.parametrize(
    ("method", "path", "headers", "raw", "code"),
    [
        ("POST", "/events", {"X-CS-Personalize-User-Uid": "u1"}, "[]", "personalize.MISSING_PROJECT_UID"),
        ("POST", "/events", {"X-Project-Uid": PROJECT}, "[]", "personalize.MISSING_USER_UID"),
        ("PATCH", "/user-attributes", {"X-Project-Uid": PROJECT}, "{}", "personalize.MISSING_USER_UID"),
        ("POST", "/events", {**HEADERS, "X-CS-Personalize-User-Uid": "a;b"}, "[]", "personalize.INVALID_USER_UID"),
        ("POST", "/events", HEADERS, "[{", "personalize.INVALID_JSON"),
        ("POST", "/events", HEADERS, '{"type": "EVENT", "eventKey": "k"}', "personalize.INVALID_EVENT"),
        ("POST", "/events", HEADERS, '[{"type": "CLICK"}]', "personalize.INVALID_EVENT"),
        ("POST", "/events", HEADERS, '[{"type": "EVENT", "eventKey": ""}]', "personalize.INVALID_EVENT"),
        ("POST", "/events", HEADERS, '[{"type": "IMPRESSION", "experienceShortUid": "0"}]',
         "personalize.INVALID_EVENT"),
        ("PATCH", "/user-attributes", HEADERS, '["tier"]', "personalize.INVALID_ATTRIBUTES"),
        ("PATCH", "/user-attributes", HEADERS, "NaN", "personalize.INVALID_JSON"),
        ("POST", "/user-attributes/actions/merge", HEADERS, '{"sourceUserUid": "u1"}', "personalize.INVALID_MERGE"),
        ("POST", "/user-attributes/actions/merge", HEADERS, '{"sourceUserUid": "u1", "targetUserUid": 2}',
         "personalize.INVALID_MERGE"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_and_not_recorded(
    method: str, path: str, headers: dict[str, str], raw: str, code: str
) -> None:
    async def test(c: Client) -> None:
        status, _, body = await c.call(method, path, headers=headers, raw=raw)
        assert status == 400 and body["error"] == code and body["message"], body
        assert await c.received() == []

    run(test)


def test_another_project_is_not_found_when_projects_are_named() -> None:
    async def test(c: Client) -> None:
        other = {**HEADERS, "X-Project-Uid": "other"}
        for method, path in (("POST", "/events"), ("GET", "/manifest")):
            status, _, body = await c.call(method, path, [EVENT] if method == "POST" else None, headers=other)
            assert status == 404 and body["error"] == "personalize.MANIFEST.PROJECT_NOT_FOUND"
        assert (await c.call("POST", "/events", [EVENT]))[0] == 200
        assert len(await c.received()) == 1

    run(test, project_uids=("p0", PROJECT))


def test_unknown_paths_and_methods_are_refused_and_not_recorded() -> None:
    async def test(c: Client) -> None:
        assert (await c.call("POST", "/_personalize/events", [EVENT]))[0] == 404  # no prefix on the real host
        assert (await c.call("GET", "/events"))[0] == 405
        status, headers, _ = await c.call("OPTIONS", "/events", headers={"Origin": "https://shop.example"})
        assert status == 204 and "X-Project-Uid" in headers["Access-Control-Allow-Headers"]
        assert await c.received() == []

    run(test)


def test_error_fault_with_count_then_cleared() -> None:
    async def test(c: Client) -> None:
        await c.fault({"mode": "error", "status": 503, "count": 2})
        assert (await c.call("POST", "/events", [EVENT]))[0] == 503
        assert (await c.call("PATCH", "/user-attributes", {"a": 1}))[0] == 503
        assert (await c.call("POST", "/events", [EVENT]))[0] == 200
        assert [(r["seq"], r["fault"]) for r in await c.faulted()] == [(1, "error"), (2, "error")]
        assert [r["seq"] for r in await c.received()] == [3]

    run(test)


def test_a_fault_applies_only_to_its_paths_until_deleted() -> None:
    async def test(c: Client) -> None:
        await c.fault({"mode": "error", "paths": ["/user-attributes"]})
        assert (await c.call("POST", "/events", [EVENT]))[0] == 200
        assert (await c.call("PATCH", "/user-attributes", {"a": 1}))[0] == 500
        assert (await c.call("PATCH", "/user-attributes", {"a": 1}))[0] == 500  # no count: stays
        merge = {"sourceUserUid": "u1", "targetUserUid": "u2"}
        assert (await c.call("POST", "/user-attributes/actions/merge", merge))[0] == 500  # prefix match
        assert (await c.call("DELETE", "/_fake/faults", headers={}))[0] == 200
        assert (await c.call("PATCH", "/user-attributes", {"a": 1}))[0] == 200
        assert [r["path"] for r in await c.received()] == ["/events", "/user-attributes"]
        assert len(await c.faulted()) == 3

    run(test)


def test_rate_limited_is_a_429_with_retry_after() -> None:
    async def test(c: Client) -> None:
        await c.fault({"mode": "rate_limited", "retry_after": 7, "count": 1})
        status, headers, body = await c.call("POST", "/events", [EVENT])
        assert status == 429 and headers["Retry-After"] == "7" and body["error"]
        assert (await c.call("POST", "/events", [EVENT]))[0] == 200
        assert [r["fault"] for r in await c.faulted()] == ["rate_limited"]

    run(test)


def test_reject_body_rejects_only_matching_bodies_and_keeps_doing_so() -> None:
    async def test(c: Client) -> None:
        await c.fault({"mode": "reject_body", "match": "poison"})
        poison = {"type": "EVENT", "eventKey": "poison"}
        for _ in range(2):
            status, _, body = await c.call("POST", "/events", [EVENT, poison])
            assert status == 400 and "poison" in body["message"]
        assert (await c.call("POST", "/events", [EVENT]))[0] == 200
        assert [r["body"] for r in await c.received()] == [[EVENT]]
        assert [r["fault"] for r in await c.faulted()] == ["reject_body", "reject_body"]

    run(test)


def test_a_fault_needs_a_known_mode() -> None:
    async def test(c: Client) -> None:
        assert (await c.call("POST", "/_fake/faults", {"mode": "explode"}, headers={}))[0] == 400
        assert (await c.call("POST", "/_fake/faults", {"mode": "reject_body"}, headers={}))[0] == 400

    run(test)


def test_refuse_closes_the_connection_without_an_answer() -> None:
    async def test(c: Client) -> None:
        await c.fault({"mode": "refuse", "count": 1, "paths": ["/events"]})
        with pytest.raises(aiohttp.ClientConnectionError):
            await c.call("POST", "/events", [EVENT])
        assert (await c.call("POST", "/events", [EVENT]))[0] == 200
        assert [r["fault"] for r in await c.faulted()] == ["refuse"]
        assert [r["seq"] for r in await c.received()] == [2]

    run(test)


def test_timeout_never_answers_until_the_client_gives_up() -> None:
    async def test(c: Client) -> None:
        await c.fault({"mode": "timeout", "count": 1})
        with pytest.raises(TimeoutError):
            await c.call("POST", "/events", [EVENT], timeout=0.2)
        assert [r["fault"] for r in await c.faulted()] == ["timeout"]
        assert (await c.call("POST", "/events", [EVENT]))[0] == 200
        assert [r["seq"] for r in await c.received()] == [2]

    run(test)


def test_slow_answers_late_and_records_once_answered() -> None:
    async def test(c: Client) -> None:
        await c.fault({"mode": "slow", "delay": 600, "count": 1})
        with pytest.raises(TimeoutError):
            await c.call("POST", "/events", [EVENT], timeout=0.2)  # far shorter than the delay
        assert [r["fault"] for r in await c.faulted()] == ["slow"]
        await c.fault({"mode": "slow", "delay": 0.01, "count": 1})
        assert (await c.call("POST", "/events", [EVENT]))[0] == 200  # a patient client gets the answer
        assert [r["seq"] for r in await c.received()] == [2]

    run(test)


def test_fake_edge_api_rejects_a_bad_listen_address_in_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "edgeproxy.cli", "fake-edge-api", "--listen", "bad"],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and "--listen 'bad' is not HOST:PORT" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
