"""The Edge API's contract for bad input and state (SPEC §5), against the real app and real stores."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support.processes import redis_server
from support.proxy_server import proxy_client

from edgeproxy.runtime.config import load_config
from edgeproxy.runtime.serve import make_state

P = "6565d3b1a3f0c7b2e1d4a9f0"
BASE = "/_personalize"
FIXED_NOW = "2026-11-22T10:00:00Z"  # before Black Friday week (rules/README.md)


def with_client(state_url: str, scenario: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    # The proxy's clock is injected (the `now` setting): Black Friday rules decide the same on any date.
    config = load_config(None, {}, {"origin": "http://127.0.0.1:9", "rules": "rules", "state": state_url,
                                    "now": FIXED_NOW})  # fmt: skip
    state = make_state(config)

    async def main() -> None:
        async with proxy_client(state) as client:
            await scenario(client)

    asyncio.run(main())


def headers(user: str | None = "u1", **extra: str) -> dict[str, str]:
    h = {"X-Project-Uid": P, **extra}
    if user:
        h["X-CS-Personalize-User-Uid"] = user
    return h


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state.db"


BAD_REQUESTS = [
    ("GET", "/manifest", {}, None, 400, "personalize.MISSING_PROJECT_UID"),
    ("GET", "/manifest", {"X-Project-Uid": "0" * 24}, None, 404, "personalize.MANIFEST.PROJECT_NOT_FOUND"),
    ("GET", "/manifest", headers(**{"X-Live-Attributes": "{nope"}), None, 400, "personalize.INVALID_LIVE_ATTRIBUTES"),
    ("GET", "/manifest", headers(**{"X-Live-Attributes": "[1]"}), None, 400, "personalize.INVALID_LIVE_ATTRIBUTES"),
    ("POST", "/events", headers(user=None), "[]", 400, "personalize.MISSING_USER_UID"),
    ("POST", "/events", headers(), "not json", 400, "personalize.INVALID_JSON"),
    ("POST", "/events", headers(), b"\xff\xfe", 400, "personalize.INVALID_JSON"),
    ("POST", "/events", headers(), '{"type":"EVENT"}', 400, "personalize.INVALID_EVENT"),
    ("POST", "/events", headers(), '[{"type":"EVENT"}]', 400, "personalize.INVALID_EVENT"),
    ("POST", "/events", headers(), '[{"type":"IMPRESSION","experienceShortUid":"0"}]', 400,
     "personalize.INVALID_EVENT"),
    ("POST", "/events", headers(), json.dumps([{"type": "EVENT", "eventKey": "k"}] * 101), 413,
     "personalize.TOO_MANY_EVENTS"),
    ("POST", "/events", headers(), "[" + " " * 70_000 + "]", 413, "personalize.BODY_TOO_LARGE"),
    ("PATCH", "/user-attributes", headers(), "[1,2]", 400, "personalize.INVALID_ATTRIBUTES"),
    ("PATCH", "/user-attributes", headers(), '{"a":{"b":1}}', 400, "personalize.INVALID_ATTRIBUTES"),
    ("PATCH", "/user-attributes", headers(), json.dumps({f"k{i}": i for i in range(101)}), 400,
     "personalize.INVALID_ATTRIBUTES"),
    ("POST", "/user-attributes/actions/merge", headers(), '{"sourceUserUid":"a"}', 400, "personalize.INVALID_MERGE"),
    ("DELETE", "/manifest", headers(), None, 405, "personalize.METHOD_NOT_ALLOWED"),
    ("GET", "/nope", headers(), None, 404, "personalize.NOT_FOUND"),
    ("GET", "/manifest", headers(user="x" * 300), None, 400, "personalize.INVALID_USER_UID"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "hdrs", "body", "status", "code"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_json_error_and_nothing_stored_is_lost(
    sqlite_url: str, method: str, path: str, hdrs: dict[str, str], body: str | bytes | None, status: int, code: str
) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        ok = await client.patch(BASE + "/user-attributes", headers=headers(), data='{"tier":"gold"}')
        assert ok.status == 200
        response = await client.request(method, BASE + path, headers=hdrs, data=body)
        assert response.status == status
        error = await response.json()
        assert error["error"] == code and error["message"]
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        manifest = await client.get(BASE + "/manifest", headers=headers())
        assert manifest.status == 200

    with_client(sqlite_url, scenario)
    db = sqlite3.connect(sqlite_url[len("sqlite:///") :])
    assert db.execute("SELECT value FROM user_attributes WHERE user_uid='u1' AND key='tier'").fetchone() == ('"gold"',)


def test_preflight_allows_the_sdk_headers_and_exposes_the_user_uid(sqlite_url: str) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.options(
            BASE + "/manifest",
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "x-project-uid,x-cs-personalize-user-uid,x-live-attributes"},
        )  # fmt: skip
        assert response.status == 204
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        for name in ("x-project-uid", "x-cs-personalize-user-uid", "x-page-url", "x-live-attributes", "content-type"):
            assert name in allowed
        assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
        manifest = await client.get(BASE + "/manifest", headers=headers(user=None))
        assert manifest.headers["Access-Control-Expose-Headers"] == "X-CS-Personalize-User-Uid"
        assert len(manifest.headers["X-CS-Personalize-User-Uid"]) == 36  # a new UUID4

    with_client(sqlite_url, scenario)


def test_manifest_uses_page_url_tags_live_and_stored_attributes(sqlite_url: str) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        await client.patch(BASE + "/user-attributes", headers=headers(), data='{"tier":"gold","lifetime_value":1500}')
        body = await (await client.get(BASE + "/manifest", headers=headers())).json()
        assert body["activeVariants"]["0"] == "0"  # VIP: stored tier gold and lifetime value > 1000
        live_headers = headers(**{"X-Live-Attributes": '{"tier":"bronze"}'})
        live = await (await client.get(BASE + "/manifest", headers=live_headers)).json()
        assert live["activeVariants"]["0"] != "0"  # live attributes override stored ones
        tagged = await (await client.get(BASE + "/manifest?tags[]=section:checkout", headers=headers())).json()
        assert [e["shortUid"] for e in tagged["experiences"]] == ["2"]
        utm = await (await client.get(BASE + "/manifest", headers=headers(
            user="new-user", **{"X-Page-Url": "https://shop.example/?utm_campaign=bf"}))).json()  # fmt: skip
        assert utm["activeVariants"]["1"] == "0"  # Black Friday campaign link from the page URL

    with_client(sqlite_url, scenario)


def test_with_redis_gone_manifests_still_decide_and_writes_report_503(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        holder: dict[str, Any] = {}

        async def scenario(client: TestClient[Any, Any]) -> None:
            assert (
                await client.patch(BASE + "/user-attributes", headers=headers(), data='{"tier":"gold"}')
            ).status == 200
            holder["client"] = client
            # stop redis underneath the running proxy
            import redis as redis_sync

            redis_sync.Redis.from_url(url).shutdown(nosave=True)
            await asyncio.sleep(0.2)
            manifest = await client.get(BASE + "/manifest", headers=headers())
            assert manifest.status == 200
            write = await client.patch(BASE + "/user-attributes", headers=headers(), data='{"tier":"silver"}')
            assert write.status == 503
            assert (await write.json())["error"] == "personalize.STORE_UNAVAILABLE"
            events = await client.post(BASE + "/events", headers=headers(), data='[{"type":"EVENT","eventKey":"k"}]')
            assert events.status == 503
            status = await (await client.get("/_edgeproxy/status")).json()
            assert status["requests"]["storeErrors"] >= 3

        with_client(url, scenario)
