"""Behavioural attributes through the real proxy (SPEC §13): page views counted before the decision, what is not a
page view not counted, written behind to SQLite and read back after a restart, the keys the section owns refused
on PATCH, a deleted user forgotten. The proxy runs in-process in front of the Node example origin (the harness of
tests/test_preview_proxy.py) on a clock the test moves; the decision log shows what each decision read."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from test_behaviour import SECTION
from test_preview_proxy import DESKTOP, OPS, T0, P, Proxy, config_for, origin, running, token

from edgeproxy.exchange.plan import Plan
from edgeproxy.runtime.behaviour import COUNTS_EVERY, BehaviourTracker
from edgeproxy.runtime.serve import make_state
from edgeproxy.runtime.state import ProxyState
from edgeproxy.store.base import AttributeLimits, StoreError
from edgeproxy.store.sqlite_store import SqliteStore
from edgeproxy.visitor.behaviour import (
    STATE_KEY,
    behaviour_config,
    behaviour_of,
    decode,
    observe_fields,
)

__all__ = ["origin"]  # the module-scoped Node origin fixture, shared

BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def behaviour_state(origin: str, tmp: Path, clock: Clock, **settings: Any) -> ProxyState:
    config = replace(config_for(origin, tmp, decision_log=str(tmp / "decisions.jsonl")),
                     behaviour=behaviour_config(SECTION), **settings)  # fmt: skip
    return make_state(config, clock=clock)


def run(state: ProxyState, origin: str, scenario: Callable[[Proxy], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running(state, origin) as proxy:
            await scenario(proxy)

    asyncio.run(main())


def decided(tmp: Path) -> list[dict[str, Any]]:
    """What each logged decision read: the request's path and its stored attributes (behaviour included)."""
    lines = [json.loads(line) for line in (tmp / "decisions.jsonl").read_text().splitlines()]
    return [{"url": line["request"]["url"], **{k: v for k, v in line["request"]["storedAttributes"].items()
                                               if k != STATE_KEY}} for line in lines]  # fmt: skip


def stored_behaviour(tmp: Path, uid: str) -> Any:
    with sqlite3.connect(f"file:{tmp}/state.sqlite3?mode=ro", uri=True) as db:
        row = db.execute("SELECT state FROM visitor_behaviour WHERE user_uid=?", (uid,)).fetchone()
    return decode(row[0]) if row else None


def test_page_views_count_visits_and_the_second_visit_is_already_a_returning_one(origin: str, tmp_path: Path) -> None:
    clock = Clock()

    async def scenario(proxy: Proxy) -> None:
        page = await proxy.get("/?utm_source=newsletter", uid="ann", headers={"Referer": "https://www.google.com/"})
        assert page.status == 200
        clock.now += 60
        await proxy.get("/checkout", uid="ann")
        clock.now += 1801  # more than the session timeout since the last page view
        await proxy.get("/checkout", uid="ann")
        clock.now += 2 * 86_400
        await proxy.get("/", uid="ann")

    run(behaviour_state(origin, tmp_path, clock), origin, scenario)
    first, second, third, fourth = decided(tmp_path)
    assert first.pop("url").endswith("/?utm_source=newsletter")
    assert first == {
        "visit_count": 1,
        "pageview_count": 1,
        "days_since_first_visit": 0,
        "first_referrer_domain": "www.google.com",
        "last_utm_source": "newsletter",
        "checkout_views_7d": 0,
    }
    assert (second["visit_count"], second["pageview_count"], second["checkout_views_7d"]) == (1, 2, 1)
    assert "days_since_last_visit" not in second  # still the first visit
    assert (third["visit_count"], third["pageview_count"], third["checkout_views_7d"]) == (2, 3, 2)  # returning
    assert third["days_since_last_visit"] == 0
    assert (fourth["visit_count"], fourth["days_since_first_visit"], fourth["days_since_last_visit"]) == (3, 2, 2)
    assert fourth["last_utm_source"] == "newsletter" and fourth["first_referrer_domain"] == "www.google.com"
    kept = stored_behaviour(tmp_path, "ann")  # written behind, and all of it at the clean stop
    assert kept is not None and (kept.visits, kept.pageviews) == (3, 4)


def test_what_is_not_a_page_view_is_not_counted_but_still_decides_with_the_attributes(
    origin: str, tmp_path: Path
) -> None:
    clock = Clock()

    async def scenario(proxy: Proxy) -> None:
        await proxy.get("/", uid="bea")  # one page view
        asset = await proxy.get("/static/site.css", uid="bea")  # static: not personalized, not counted
        assert asset.status in (200, 404)
        await proxy.get("/", uid="bea", headers={"Sec-Fetch-Mode": "cors"})  # a script's fetch
        await proxy.get("/", uid="bea", headers={"X-Requested-With": "XMLHttpRequest"})
        await proxy.get("/", uid="bea", headers={"Sec-Purpose": "prefetch"})
        await proxy.get("/", uid="bea", headers={"User-Agent": BOT})  # a bot
        await proxy.get(f"/?cs_preview={token(('0', '1'))}", uid="bea")  # a preview
        manifest = await proxy.manifest(uid="bea")  # the Edge API
        assert manifest.status == 200
        await proxy.request("HEAD", "/", uid="bea")
        assert proxy.state.behaviour is not None
        known = proxy.state.behaviour.known("bea")
        assert known is not None and known.pageviews == 1

    run(behaviour_state(origin, tmp_path, clock), origin, scenario)
    lines = decided(tmp_path)
    assert [line["pageview_count"] for line in lines] == [1] * len(lines)  # every decision read the one view
    assert len(lines) >= 5


def test_without_consent_nothing_is_counted_or_stored(origin: str, tmp_path: Path) -> None:
    clock = Clock()

    async def scenario(proxy: Proxy) -> None:
        await proxy.get("/", uid="cid")
        await proxy.get("/", uid="cid", cookies=("site_consent=yes",))

    state = behaviour_state(origin, tmp_path, clock, consent_cookie="site_consent")
    run(state, origin, scenario)
    kept = stored_behaviour(tmp_path, "cid")
    assert kept is not None and kept.pageviews == 1  # only the consenting view


def test_a_referer_no_parser_reads_is_a_page_view_without_a_referrer_not_an_error(origin: str, tmp_path: Path) -> None:
    """A hostile or broken Referer (an unclosed IPv6 literal, an IP literal that is none) names no site: the page is
    served and counted; the next page view from a real site is the first referrer."""
    clock = Clock()

    async def scenario(proxy: Proxy) -> None:
        for referer in ("http://[::1/", "http://[x]/", "http://a]b/", "http://[1.2.3.4]/"):
            page = await proxy.get("/", uid="rex", headers={"Referer": referer})
            assert page.status == 200, (referer, page.status)
        await proxy.get("/", uid="rex", headers={"Referer": "https://www.news.example/a"})

    run(behaviour_state(origin, tmp_path, clock), origin, scenario)
    lines = decided(tmp_path)
    assert [line["pageview_count"] for line in lines] == [1, 2, 3, 4, 5]
    assert [line.get("first_referrer_domain") for line in lines] == [None, None, None, None, "www.news.example"]


def test_without_a_decision_log_only_the_keys_rules_read_are_computed_and_decisions_are_the_same(
    origin: str, tmp_path: Path
) -> None:
    def visits(logged: bool) -> list[dict[str, str | None]]:
        clock, manifests = Clock(), []

        async def scenario(proxy: Proxy) -> None:
            for path, later in (("/", 0), ("/checkout", 60), ("/checkout", 60), ("/", 1801), ("/checkout", 7 * 86_400)):
                clock.now += later
                page = await proxy.get(path, uid="ivy", headers={"Referer": "https://news.example/"})
                assert page.status == 200
                manifests.append(page.manifest())

        where = tmp_path / ("logged" if logged else "unlogged")
        where.mkdir()
        state = behaviour_state(origin, where, clock, **({} if logged else {"decision_log": ""}))
        run(state, origin, scenario)
        return manifests

    logged, unlogged = visits(True), visits(False)
    assert unlogged == logged
    assert len({json.dumps(m, sort_keys=True) for m in logged}) > 1  # the behaviour audiences changed variants
    assert "pageview_count" in decided(tmp_path / "logged")[-1]  # the log has every computed key

    def stored_read(logged: bool) -> set[str]:
        """The stored attributes a page's decision read, planned directly (no server needed)."""
        where = tmp_path / f"planned-{logged}"
        where.mkdir()
        state = behaviour_state(origin, where, Clock(), **({} if logged else {"decision_log": ""}))
        headers = CIMultiDictProxy(
            CIMultiDict({"Host": "shop.example", "User-Agent": DESKTOP, "Referer": "https://a.b/"})
        )
        client = state.planner.client("127.0.0.1", "http", "shop.example", headers)
        plan = state.planner.plan(
            state.holder.current, "GET", "/checkout", "/checkout", headers, client, has_body=False, upgrade=False
        )
        assert isinstance(plan, Plan) and plan.decision is not None
        return set(plan.decision.ctx.stored)

    assert stored_read(True) == {"visit_count", "pageview_count", "days_since_first_visit", "first_referrer_domain",
                                 "checkout_views_7d"}  # fmt: skip
    assert stored_read(False) == {"visit_count", "checkout_views_7d"}  # what the example rules read


def test_a_planned_page_view_counts_by_its_path_and_referer_and_not_for_a_bot(origin: str, tmp_path: Path) -> None:
    """The planner's page path (the target up to its query) and the Referer and User-Agent as the decision's
    context reads them: a request without a User-Agent is a page view, a bot's is not."""
    clock = Clock()
    state = behaviour_state(origin, tmp_path, clock)
    planner = state.planner

    def page(raw_path: str, **headers: str) -> tuple[Any, dict[str, Any]]:
        request = CIMultiDictProxy(CIMultiDict({"Host": "shop.example", "Cookie": "cs-personalize-user-uid=uma"}))
        request = CIMultiDictProxy(CIMultiDict({**request, **{k.replace("_", "-"): v for k, v in headers.items()}}))
        client = planner.client("127.0.0.1", "http", "shop.example", request)
        path = raw_path.partition("?")[0]
        plan = planner.plan(state.holder.current, "GET", raw_path, path, request, client, has_body=False, upgrade=False)
        if not isinstance(plan, Plan):  # the store is asked (a NeedStored): nothing is stored for this visitor yet
            plan = planner.plan(state.holder.current, "GET", raw_path, path, request, client, has_body=False,
                                upgrade=False, stored={})  # fmt: skip
        assert isinstance(plan, Plan) and plan.decision is not None
        state.count_decision(plan.decision)
        clock.now += 60
        counted = plan.decision.behaviour
        return None if counted is None else behaviour_of(counted), dict(plan.decision.ctx.stored)

    counted, read = page("/checkout?utm_source=mail")  # no User-Agent: a page view
    assert counted is not None and counted.pageviews == 1 and counted.utm_source == "mail"
    assert read["checkout_views_7d"] == 1 and read["pageview_count"] == 1
    bot, read = page("/checkout", User_Agent=BOT)
    assert bot is None and read["checkout_views_7d"] == 1  # not counted, decided with the visitor's values
    counted, read = page("/checkout/pay", User_Agent=DESKTOP, Referer="https://www.news.example/story")
    assert counted is not None and counted.first_referrer == "www.news.example" and read["checkout_views_7d"] == 2
    counted, read = page("/cart?next=/checkout", User_Agent=DESKTOP)  # the query is not the path
    assert counted is not None and counted.pageviews == 3 and read["checkout_views_7d"] == 2


def test_the_tracker_keeps_each_visitor_as_an_exact_tuple_the_collector_untracks(origin: str, tmp_path: Path) -> None:
    """What a page view records is kept as it is (no copy): an exact tuple, which the cyclic collector stops
    tracking while the visitor has no path views; one with path views keeps them."""
    clock = Clock()
    state = behaviour_state(origin, tmp_path, clock)
    planner = state.planner
    for uid, path in (("ola", "/"), ("ola", "/about"), ("pia", "/checkout")):
        request = CIMultiDictProxy(CIMultiDict({"Host": "shop.example", "Cookie": f"cs-personalize-user-uid={uid}"}))
        client = planner.client("127.0.0.1", "http", "shop.example", request)
        plan = planner.plan(state.holder.current, "GET", path, path, request, client, has_body=False, upgrade=False,
                            stored={})  # fmt: skip
        assert isinstance(plan, Plan) and plan.decision is not None and plan.decision.behaviour is not None
        state.count_decision(plan.decision)
        clock.now += 60
    tracker = state.behaviour
    assert tracker is not None
    ola, pia = tracker.current_fields("ola", {}), tracker.current_fields("pia", {})
    assert type(ola) is tuple and type(pia) is tuple
    gc.collect()
    assert not gc.is_tracked(ola) and ola[7] is None
    assert behaviour_of(ola).pageviews == 2 and behaviour_of(ola).path_views == {}
    assert behaviour_of(pia).path_views["checkout_views_7d"] == (T0 + 120,)


def test_behaviour_written_behind_is_read_back_after_a_restart(origin: str, tmp_path: Path) -> None:
    clock = Clock()

    async def first(proxy: Proxy) -> None:
        await proxy.get("/checkout", uid="dan")
        await proxy.get("/checkout", uid="dan")

    async def second(proxy: Proxy) -> None:
        await proxy.get("/", uid="dan")

    run(behaviour_state(origin, tmp_path, clock), origin, first)
    clock.now += 3600
    run(behaviour_state(origin, tmp_path, clock), origin, second)  # a new process: nothing in its memory
    last = decided(tmp_path)[-1]
    assert (last["visit_count"], last["pageview_count"], last["checkout_views_7d"]) == (2, 3, 2)


def test_patch_refuses_the_keys_behaviour_owns_and_says_which(origin: str, tmp_path: Path) -> None:
    clock = Clock()

    async def scenario(proxy: Proxy) -> None:
        answer = await proxy.request("PATCH", "/_personalize/user-attributes", uid=None, headers={
            "X-Project-Uid": P, "X-CS-Personalize-User-Uid": "eve"},
            data=json.dumps({"visit_count": 99, STATE_KEY: "x", "tier": "gold"}))  # fmt: skip
        assert answer.status == 200, answer
        body = answer.json()
        assert body["updated"] == ["tier"] and body["refused"] == [STATE_KEY, "visit_count"]
        assert "behaviour" in body["message"]
        stored = await proxy.state.store.get_attributes(P, "eve")
        assert stored == {"tier": "gold"}

    run(behaviour_state(origin, tmp_path, clock), origin, scenario)


def test_deleting_a_user_forgets_their_behaviour(origin: str, tmp_path: Path) -> None:
    clock = Clock()

    async def scenario(proxy: Proxy) -> None:
        await proxy.get("/", uid="fay")
        deleted = await proxy.ops("DELETE", "users/fay", auth=OPS)
        assert deleted.status == 200
        assert proxy.state.behaviour is not None and proxy.state.behaviour.known("fay") is None

    run(behaviour_state(origin, tmp_path, clock), origin, scenario)
    assert stored_behaviour(tmp_path, "fay") is None  # nothing written behind after the deletion


def test_a_fleet_on_redis_shares_behaviour(origin: str, tmp_path: Path) -> None:
    from support.processes import redis_server

    clock = Clock()

    async def scenario(a: Proxy, b: Proxy) -> None:
        await a.get("/checkout", uid="gus")
        assert a.state.behaviour is not None
        await a.state.behaviour.flush()  # what the write behind does within a second
        clock.now += 10
        await b.get("/checkout", uid="gus")  # the other instance: nothing of gus in its memory
        assert b.state.behaviour is not None
        known = b.state.behaviour.known("gus")
        assert known is not None and (known.pageviews, known.path_views["checkout_views_7d"]) == (2, (T0, T0 + 10))

    async def main(url: str) -> None:
        state_a = behaviour_state(origin, tmp_path / "a", clock, state=url)
        state_b = behaviour_state(origin, tmp_path / "b", clock, state=url)
        async with running(state_a, origin) as a, running(state_b, origin) as b:
            await scenario(a, b)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with redis_server(tmp_path) as url:
        asyncio.run(main(url))
    assert decided(tmp_path / "b")[-1]["checkout_views_7d"] == 2


def test_past_its_bound_the_tracker_forgets_the_least_recently_seen_and_still_writes_them(tmp_path: Path) -> None:
    config = behaviour_config(SECTION)

    async def scenario() -> None:
        store = SqliteStore(str(tmp_path / "state.sqlite3"), AttributeLimits())
        await store.start()
        tracker = BehaviourTracker(config, store, lambda: P, kept=3)
        for n, uid in enumerate(("a", "b", "c", "a", "d", "e", "b")):
            tracker.record(uid, observe_fields(config, tracker.known(uid), "http://shop.example/", None, T0 + n))
        # a, b, c; a seen again; d: b (least recently seen) goes; e: c goes; b comes back new: a goes
        assert [uid for uid in "abcde" if tracker.holds(uid)] == ["b", "d", "e"]
        await tracker.flush()  # forgotten here, written all the same
        for uid, views in (("a", 2), ("b", 1), ("c", 1), ("d", 1), ("e", 1)):
            kept = decode((await store.get_attributes(P, uid)).get(STATE_KEY))
            assert kept is not None and kept.pageviews == views, uid
        written = tracker.written
        for n, uid in enumerate("dfgh"):  # d only counts (in `_counting`), then goes; e and b go as written
            tracker.record(uid, observe_fields(config, tracker.known(uid), "http://shop.example/", None, T0 + n))
        assert [uid for uid in "bdefgh" if tracker.holds(uid)] == ["f", "g", "h"]
        assert await tracker.flush(everything=False) == 4  # the new f, g and h, and d's count: not e or b again
        assert tracker.written == written + 4
        fresh = SqliteStore(str(tmp_path / "state.sqlite3"), AttributeLimits())  # (no read-through cache of d)
        await fresh.start()
        kept = decode((await fresh.get_attributes(P, "d")).get(STATE_KEY))
        assert kept is not None and kept.pageviews == 2
        await fresh.close()
        await store.close()

    asyncio.run(scenario())


class Recording(SqliteStore):
    """A real SQLite store that keeps which users each behaviour write says are new."""

    news: list[list[str]]

    async def put_behaviour(
        self, project_uid: str, states: dict[str, str], *, new: Collection[str] | None = None
    ) -> None:
        self.news.append(sorted(states) if new is None else sorted(new))
        await super().put_behaviour(project_uid, states, new=new)


def test_a_visitors_row_is_marked_as_stored_at_its_first_write_and_again_after_expiring_not_at_each_count(
    tmp_path: Path,
) -> None:
    """The store's filter of users with a behaviour row (what lets a returning visitor with nothing stored skip a
    read) is told of a visitor at their first write, not at each page-view count; again when they start afresh
    after expiring (their row may have been purged meanwhile); and a visitor the tracker forgot is read back."""
    config = replace(behaviour_config(SECTION), expires=86_400.0)

    async def scenario() -> None:
        store = Recording(str(tmp_path / "state.sqlite3"), AttributeLimits())
        store.news = []
        await store.start()
        tracker = BehaviourTracker(config, store, lambda: P, kept=2)

        async def view(uid: str, at: float) -> None:
            tracker.record(uid, observe_fields(config, tracker.known(uid), "http://shop.example/", None, at))
            await tracker.flush()

        await view("ann", T0)
        await view("ann", T0 + 10)  # a count: the same row
        await view("ann", T0 + 2 * 86_400)  # expired: a first visit again, perhaps a new row
        await view("bob", T0 + 2 * 86_400 + 1)
        await view("cat", T0 + 2 * 86_400 + 2)  # ann is forgotten here (kept=2)
        await view("bob", T0 + 2 * 86_400 + 3)
        assert store.news == [["ann"], [], ["ann"], ["bob"], ["cat"], []]
        assert not tracker.holds("ann")
        assert store.cached_attributes(P, "ann", behaviour_at_hand=False) is None  # "maybe stored": read, not {}
        kept = decode((await store.get_attributes(P, "ann")).get(STATE_KEY))
        assert kept is not None and (kept.visits, kept.pageviews) == (1, 1)  # afresh at T0 + 2 days
        await store.close()

    asyncio.run(scenario())


def test_write_behind_stores_what_audiences_read_at_once_and_page_view_counts_within_counts_every_flushes(
    tmp_path: Path,
) -> None:
    config = behaviour_config(SECTION)

    async def scenario() -> None:
        store = SqliteStore(str(tmp_path / "state.sqlite3"), AttributeLimits())
        await store.start()
        tracker = BehaviourTracker(config, store, lambda: P)

        def view(uid: str, url: str, at: float) -> None:
            tracker.record(uid, observe_fields(config, tracker.known(uid), url, None, at))

        async def stored() -> dict[str, tuple[int, int] | None]:
            fresh = SqliteStore(str(tmp_path / "state.sqlite3"), AttributeLimits())  # another process: no cache
            await fresh.start()
            found = {}
            for uid in ("new", "counting", "checkout"):
                kept = decode((await fresh.get_attributes(P, uid)).get(STATE_KEY))
                found[uid] = None if kept is None else (kept.visits, kept.pageviews)
            await fresh.close()
            return found

        view("counting", "http://shop.example/", T0)
        view("checkout", "http://shop.example/", T0)
        await tracker.run_once()  # the first page views: written at once
        view("new", "http://shop.example/", T0 + 1)
        view("counting", "http://shop.example/", T0 + 2)  # only counts changed
        view("checkout", "http://shop.example/checkout", T0 + 2)  # a path counter changed
        view("counting", "http://shop.example/", T0 + 3 * 3600)  # a new visit
        view("counting", "http://shop.example/", T0 + 3 * 3600 + 5)  # counts again
        await tracker.run_once()
        assert await stored() == {"new": (1, 1), "counting": (2, 4), "checkout": (1, 2)}
        view("counting", "http://shop.example/", T0 + 3 * 3600 + 9)  # counts only
        for _ in range(COUNTS_EVERY - 3):
            await tracker.run_once()
        assert (await stored())["counting"] == (2, 4)  # not yet: a kill -9 now loses this page view
        await tracker.run_once()  # the COUNTS_EVERY-th flush writes the counts
        assert (await stored())["counting"] == (2, 5)
        view("counting", "http://shop.example/", T0 + 3 * 3600 + 12)
        await tracker.stop()  # a clean stop writes everything
        assert (await stored())["counting"] == (2, 6)
        await store.close()

    asyncio.run(scenario())


class FailingOnce(SqliteStore):
    """A real SQLite store whose first behaviour write fails (the store away for a moment), after `meanwhile` ran:
    what happens on the event loop while the write is on the store's thread."""

    meanwhile: Callable[[], None] | None = None

    async def put_behaviour(
        self, project_uid: str, states: dict[str, str], *, new: Collection[str] | None = None
    ) -> None:
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
            raise StoreError("SQLite state: disk I/O error (injected)")
        await super().put_behaviour(project_uid, states, new=new)


def test_a_failed_write_behind_is_retried_with_the_newest_page_view_at_the_next_flush(tmp_path: Path) -> None:
    config = behaviour_config(SECTION)

    async def scenario() -> None:
        store = FailingOnce(str(tmp_path / "state.sqlite3"), AttributeLimits())
        await store.start()
        tracker = BehaviourTracker(config, store, lambda: P)
        tracker.record("ann", observe_fields(config, None, "http://shop.example/", None, T0))

        def counts_only_view() -> None:  # a page view while the write is out: it only adds to the count
            tracker.record("ann", observe_fields(config, tracker.known("ann"), "http://shop.example/", None, T0 + 5))

        store.meanwhile = counts_only_view
        assert await tracker.run_once() == 0 and tracker.failed == 1  # not written: kept
        assert await tracker.run_once() == 1  # the next flush: the newest page view, with the first one's changes
        fresh = SqliteStore(str(tmp_path / "state.sqlite3"), AttributeLimits())
        await fresh.start()
        kept = decode((await fresh.get_attributes(P, "ann")).get(STATE_KEY))
        assert kept is not None and (kept.visits, kept.pageviews) == (1, 2)
        await fresh.close()
        await tracker.stop()
        await store.close()

    asyncio.run(scenario())
