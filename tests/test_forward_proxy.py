"""Forwarding to Contentstack (SPEC §12) through the real proxy: every write it accepts (Edge API events, attribute
patches, merges, and its own impressions) reaches a faithful Edge API (the bundled fake, in-process here) as the SDK
would send it, in order per user, through each fault the fake injects; a full outbox refuses forwarding without
refusing the write; consent, preview and data subject requests apply; status and metrics show the backlog.

The proxy runs in-process in front of the Node example origin on SQLite state (tests/test_preview_proxy.py's
harness); its decision clock is fixed. The forwarder's backoff runs on real time (it waits for a real server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.processes import free_port
from test_preview_proxy import P, Proxy, origin, running, state_for, token

from edgeproxy.analytics.impressions import ImpressionRecorder
from edgeproxy.forward.forwarder import Forwarder
from edgeproxy.forward.outbox import SqliteOutbox
from edgeproxy.runtime.state import ProxyState
from edgeproxy.sync.fake_edge_api import FakeEdgeApi

__all__ = ["origin"]  # the module-scoped Node origin fixture, shared

SDK_AGENT = "personalize-edge-sdk-js/1.0.27"


class Fake:
    """The fake Edge API on a free port, and a client for its /_fake endpoints."""

    def __init__(self, api: FakeEdgeApi, url: str, session: aiohttp.ClientSession) -> None:
        self.api = api
        self.url = url
        self.session = session

    async def fault(self, **fault: Any) -> None:
        async with self.session.post(f"{self.url}/_fake/faults", json=fault) as answer:
            assert answer.status == 200, await answer.text()

    async def clear_faults(self) -> None:
        async with self.session.delete(f"{self.url}/_fake/faults") as answer:
            assert answer.status == 200

    def received(self) -> list[dict[str, Any]]:
        return list(self.api.received)

    async def until(self, done: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        """Wait (polling) until `done()`; the wait bounds a hang, it asserts nothing about speed."""
        for _ in range(int(timeout / 0.05)):
            if done():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not within {timeout:g} s: {what}; received {self.api.received}")


@asynccontextmanager
async def fake_edge_api(port: int | None = None) -> AsyncIterator[Fake]:
    api = FakeEdgeApi([P])
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    port = port or free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Fake(api, f"http://127.0.0.1:{port}", session)
    finally:
        await runner.cleanup()


def forwarding_state(origin: str, tmp: Path, to: str, *, max_items: int = 1000, timeout: float = 2.0,
                     **settings: Any) -> ProxyState:  # fmt: skip
    """The proxy's state with a forwarder, as `serve` builds it with forward_edge_api (and impressions = proxy)."""
    state = state_for(origin, tmp, impressions="proxy", forward_edge_api=to, **settings)
    forwarder = Forwarder(SqliteOutbox(f"{tmp}/state.sqlite3"), to, max_items, timeout=timeout,
                          jitter=lambda: 0.0)  # fmt: skip
    state.forwarder = forwarder
    state.metrics.forwarder = forwarder
    state.impressions = ImpressionRecorder(state.store, lambda: P, clock=state.clock, forwarder=forwarder,
                                           flush_interval=0.05)  # fmt: skip
    return state


def sdk_headers(uid: str | None) -> dict[str, str]:
    headers = {"X-Project-Uid": P, "X-User-Agent": SDK_AGENT}
    if uid is not None:
        headers["X-CS-Personalize-User-Uid"] = uid
    return headers


async def event(proxy: Proxy, uid: str, *items: dict[str, str], cookies: tuple[str, ...] = ()) -> int:
    answer = await proxy.request("POST", "/_personalize/events", uid=None, cookies=cookies, headers=sdk_headers(uid),
                                 data=json.dumps(list(items)))  # fmt: skip
    return answer.status


async def patch(proxy: Proxy, uid: str, attributes: dict[str, Any]) -> int:
    answer = await proxy.request("PATCH", "/_personalize/user-attributes", uid=None, headers=sdk_headers(uid),
                                 data=json.dumps(attributes))  # fmt: skip
    return answer.status


async def merge(proxy: Proxy, source: str, target: str) -> int:
    answer = await proxy.request("POST", "/_personalize/user-attributes/actions/merge", uid=None,
                                 headers=sdk_headers(None),
                                 data=json.dumps({"sourceUserUid": source, "targetUserUid": target}))  # fmt: skip
    return answer.status


def conversion(key: str) -> dict[str, str]:
    return {"type": "EVENT", "eventKey": key}


def keys_of(received: list[dict[str, Any]], uid: str) -> list[str]:
    """The event keys the fake received for `uid`, in arrival order."""
    mine = [r for r in received if r["path"] == "/events" and r["headers"].get("X-CS-Personalize-User-Uid") == uid]
    return [item["eventKey"] for r in mine for item in r["body"] if item["type"] == "EVENT"]


def run_with_fake(state_of: Callable[[str], ProxyState], origin: str,
                  scenario: Callable[[Proxy, Fake], Awaitable[None]]) -> None:  # fmt: skip
    async def main() -> None:
        async with fake_edge_api() as fake:
            state = state_of(fake.url)
            async with running(state, origin) as proxy:
                await scenario(proxy, fake)

    asyncio.run(main())


def test_every_accepted_write_arrives_as_the_sdk_sends_it(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy, fake: Fake) -> None:
        impression = {"type": "IMPRESSION", "experienceShortUid": "2", "variantShortUid": "1"}
        assert await event(proxy, "visitor-a", impression, conversion("signup")) == 200
        assert await patch(proxy, "visitor-a", {"tier": "gold", "age": 41}) == 200
        assert await merge(proxy, "visitor-a", "visitor-b") == 200
        page = await proxy.get("/", uid="visitor-c")  # impressions = proxy: the page's variants, forwarded too
        assert page.status == 200
        await fake.until(lambda: len(fake.received()) >= 4, "four writes")
        received = fake.received()
        sdk = [r for r in received if r["headers"].get("X-User-Agent") == SDK_AGENT]
        assert [(r["method"], r["path"]) for r in sdk] == [
            ("POST", "/events"),
            ("PATCH", "/user-attributes"),
            ("POST", "/user-attributes/actions/merge"),
        ]
        events, attributes, merged = sdk
        assert events["headers"]["X-Project-Uid"] == P
        assert events["headers"]["X-CS-Personalize-User-Uid"] == "visitor-a"
        assert events["headers"]["Content-Type"] == "text/plain;charset=UTF-8"  # what fetch labels a string body
        assert events["body"] == [impression, conversion("signup")]
        assert attributes["body"] == {"tier": "gold", "age": 41}
        assert attributes["headers"]["X-CS-Personalize-User-Uid"] == "visitor-a"
        assert merged["body"] == {"sourceUserUid": "visitor-a", "targetUserUid": "visitor-b"}
        assert "X-CS-Personalize-User-Uid" not in merged["headers"]  # as the SDK's merge: project only
        own = [r for r in received if r["headers"].get("X-User-Agent", "").startswith("edgeproxy/")]
        assert len(own) == 1 and own[0]["headers"]["X-CS-Personalize-User-Uid"] == "visitor-c"
        shown = {(i["experienceShortUid"], i["variantShortUid"]) for i in own[0]["body"]}
        assert shown and all(i["type"] == "IMPRESSION" for i in own[0]["body"])
        assert shown == {(e, v) for e, v in json.loads(page.set_cookie("cs-personalize-manifest").split("=", 1)[1]
                         .partition("; Path=")[0])["activeVariants"].items() if v is not None}  # fmt: skip
        status = (await proxy.ops("GET", "status")).json()["forwarding"]
        await fake.until(lambda: proxy.state.forwarder is not None and proxy.state.forwarder.counts.sent == 4, "acks")
        assert status["to"] == fake.url and status["thisProcess"]["queued"] == 4

    run_with_fake(lambda url: forwarding_state(origin, tmp_path, url), origin, scenario)


FAULTS = [
    pytest.param({"mode": "error", "status": 500, "count": 3}, id="500s"),
    pytest.param({"mode": "error", "status": 503, "count": 2, "paths": ["/events"]}, id="503-on-events"),
    pytest.param({"mode": "error", "status": 408, "count": 1}, id="408"),
    pytest.param({"mode": "rate_limited", "retry_after": 1, "count": 2}, id="429-retry-after"),
    pytest.param({"mode": "timeout", "count": 2}, id="timeout"),
    pytest.param({"mode": "slow", "delay": 1.5, "count": 2}, id="slow-past-the-timeout"),
    pytest.param({"mode": "refuse", "count": 3}, id="refused"),
]


@pytest.mark.parametrize("fault", FAULTS)
def test_writes_arrive_in_order_per_user_through_a_fault(origin: str, tmp_path: Path, fault: dict[str, Any]) -> None:
    users = [f"user-{n}" for n in range(4)]

    async def scenario(proxy: Proxy, fake: Fake) -> None:
        await fake.fault(**fault)
        for step in range(6):
            for uid in users:
                assert await event(proxy, uid, conversion(f"step-{step}")) == 200
                if step == 2:
                    assert await patch(proxy, uid, {"step": step}) == 200
        expected = [f"step-{n}" for n in range(6)]
        await fake.until(lambda: all(_without_repeats(keys_of(fake.received(), uid)) == expected for uid in users),
                         "every user's six events", timeout=40)  # fmt: skip
        received = fake.received()
        for uid in users:
            keys = keys_of(received, uid)
            # In order; a write whose answer was lost (slow) may arrive twice, never out of order or missing.
            assert _without_repeats(keys) == expected, (uid, keys)
            writes = [r for r in received if r["headers"].get("X-CS-Personalize-User-Uid") == uid]
            patched = next(n for n, r in enumerate(writes) if r["path"] == "/user-attributes")
            before = [k for r in writes[:patched] if r["path"] == "/events" for k in keys_of([r], uid)]
            assert set(before) <= {"step-0", "step-1", "step-2"} and "step-2" in before  # the patch in its place
        assert len(fake.api.faulted) >= 1  # the fault did happen
        forwarder = proxy.state.forwarder
        assert forwarder is not None and forwarder.counts.retried >= 1 and forwarder.counts.dead_lettered == 0

    run_with_fake(lambda url: forwarding_state(origin, tmp_path, url, timeout=1.0), origin, scenario)


def _without_repeats(keys: list[str]) -> list[str]:
    """`keys` with a repeat of an already-seen key removed (at-least-once delivery may repeat a write)."""
    seen: list[str] = []
    for key in keys:
        if key not in seen:
            seen.append(key)
    return seen


def test_a_body_refused_for_good_goes_to_the_dead_letters_and_the_rest_goes_on(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy, fake: Fake) -> None:
        await fake.fault(mode="reject_body", match="forbidden-key")
        assert await event(proxy, "user-x", conversion("first")) == 200
        assert await event(proxy, "user-x", conversion("forbidden-key")) == 200  # accepted here, refused there
        assert await event(proxy, "user-x", conversion("last")) == 200
        await fake.until(lambda: "last" in keys_of(fake.received(), "user-x"), "the write after the refused one")
        assert keys_of(fake.received(), "user-x") == ["first", "last"]  # merged request split: neighbours kept
        forwarder = proxy.state.forwarder
        assert forwarder is not None
        await fake.until(lambda: forwarder.counts.dead_lettered == 1, "one dead letter")
        letters = await forwarder.outbox.dead_letters(10)
        assert len(letters) == 1 and letters[0].item is not None
        assert b"forbidden-key" in letters[0].item.body and letters[0].reason.startswith("HTTP 400")
        await forwarder.refresh()
        status = (await proxy.ops("GET", "status")).json()["forwarding"]
        assert status["deadLetters"] == 1 and status["queued"] == 0
        metrics = (await proxy.request("GET", "/_edgeproxy/metrics", uid=None)).body.decode()
        assert 'edgeproxy_forward_writes_total{result="dead_lettered"} 1.0' in metrics
        assert 'edgeproxy_forward_backlog{kind="dead_letters"} 1.0' in metrics
        # Fixed at Contentstack: `forward retry` (revive) sends it again, now accepted.
        await fake.clear_faults()
        assert await forwarder.outbox.revive() == 1
        await fake.until(lambda: keys_of(fake.received(), "user-x") == ["first", "last", "forbidden-key"], "revived")

    run_with_fake(lambda url: forwarding_state(origin, tmp_path, url), origin, scenario)


def test_a_full_outbox_accepts_writes_locally_refuses_forwarding_and_says_so(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy, fake: Fake) -> None:
        await fake.fault(mode="error", status=503)  # Contentstack down: the outbox fills
        for n in range(5):
            assert await event(proxy, "user-full", conversion(f"k{n}")) == 200  # every write accepted locally
        forwarder = proxy.state.forwarder
        assert forwarder is not None
        assert forwarder.counts.queued == 3 and forwarder.counts.refused == 2
        assert await proxy.state.store.count_events(P) == 5
        await forwarder.refresh()
        status = (await proxy.ops("GET", "status")).json()["forwarding"]
        assert status["state"] == "full" and status["refusedEver"] == 2 and status["queued"] == 3
        ready = await proxy.request("GET", "/_edgeproxy/ready", uid=None)
        assert ready.status == 200  # decisions do not depend on Contentstack
        await fake.clear_faults()
        await fake.until(lambda: keys_of(fake.received(), "user-full") == ["k0", "k1", "k2"], "the queued three")

    run_with_fake(lambda url: forwarding_state(origin, tmp_path, url, max_items=3), origin, scenario)


def test_without_consent_or_in_preview_nothing_is_forwarded(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy, fake: Fake) -> None:
        assert await event(proxy, "no-consent", conversion("x")) == 403
        page = await proxy.get("/", uid="no-consent-page")
        assert page.status == 200
        preview = f"cs-personalize-preview={token(('0', '1'))}"
        consented = ("site_consent=yes",)
        assert await event(proxy, "previewer", conversion("p"), cookies=(preview, *consented)) == 200
        assert await event(proxy, "consented", conversion("c"), cookies=consented) == 200
        await fake.until(lambda: keys_of(fake.received(), "consented") == ["c"], "the consenting visitor's event")
        await asyncio.sleep(0.3)  # the impression recorder's flushes have run (nothing may follow)
        assert {r["headers"].get("X-CS-Personalize-User-Uid") for r in fake.received()} == {"consented"}

    run_with_fake(lambda url: forwarding_state(origin, tmp_path, url, consent_cookie="site_consent"), origin,
                  scenario)  # fmt: skip


def test_deleting_a_user_removes_their_writes_waiting_to_be_forwarded(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy, fake: Fake) -> None:
        await fake.fault(mode="error", status=503)  # nothing leaves the outbox meanwhile
        assert await event(proxy, "leaving", conversion("a")) == 200
        assert await merge(proxy, "leaving", "staying") == 200  # names the deleted user as the source
        assert await event(proxy, "staying", conversion("b")) == 200
        exported = (await proxy.ops("GET", "users/leaving")).json()
        assert [(w["state"], w["path"]) for w in exported["forwarding"]] == [
            ("queued", "/events"),
            ("queued", "/user-attributes/actions/merge"),
        ]
        deleted = (await proxy.ops("DELETE", "users/leaving")).json()["deleted"]
        assert deleted["forwarding"] == 2
        await fake.clear_faults()
        await fake.until(lambda: keys_of(fake.received(), "staying") == ["b"], "the other user's write")
        await asyncio.sleep(0.3)
        assert all("leaving" not in json.dumps(r) for r in fake.received())

    run_with_fake(lambda url: forwarding_state(origin, tmp_path, url), origin, scenario)


def test_an_outbox_that_cannot_be_written_is_a_503_not_a_silent_loss(origin: str, tmp_path: Path) -> None:
    async def scenario(proxy: Proxy, fake: Fake) -> None:
        forwarder = proxy.state.forwarder
        assert forwarder is not None
        await forwarder.outbox.close()  # the outbox is gone (disk, Redis): the write is not acknowledged
        answer = await proxy.request("POST", "/_personalize/events", uid=None, headers=sdk_headers("u-503"),
                                     data=json.dumps([conversion("lost?")]))  # fmt: skip
        assert answer.status == 503 and answer.json()["error"] == "personalize.STORE_UNAVAILABLE"
        assert forwarder.counts.failed == 1

    run_with_fake(lambda url: forwarding_state(origin, tmp_path, url), origin, scenario)


def test_forward_settings_are_validated() -> None:
    from edgeproxy.runtime.config import ConfigError, ProxyConfig, validate

    base = ProxyConfig(origin="http://127.0.0.1:3000", rules="rules")
    validate(ProxyConfig(**{**_fields(base), "forward_edge_api": "eu"}))
    validate(ProxyConfig(**{**_fields(base), "forward_edge_api": "http://127.0.0.1:9/prefix"}))
    for value, words in (("mars", "neither a region"), ("ftp://x", "neither a region"),
                         ("https://h/?a=1", "without a query")):  # fmt: skip
        with pytest.raises(ConfigError, match="forward_edge_api") as caught:
            validate(ProxyConfig(**{**_fields(base), "forward_edge_api": value}))
        assert words in str(caught.value)
    with pytest.raises(ConfigError, match="forward_outbox_max"):
        validate(ProxyConfig(**{**_fields(base), "forward_outbox_max": 0}))


def _fields(config: Any) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__ if not name.startswith("_")}
