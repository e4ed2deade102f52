"""Behavioural attributes (SPEC §13) against an independent computation: a model written from the contract and the
README's decisions alone, which recomputes every value from the visitor's whole list of page views at each
decision (no state carried between page views, none of edgeproxy's parsing). Compared with the pure functions on
generated traffic (with the behaviour going through the stored text at random points, as another process or a
restart reads it), and with the real proxy in front of the Node example origin: interleaved visitors, requests that
are not page views, hostile Referers, a restart in the middle, and configs other than the example's."""

from __future__ import annotations

import asyncio
import json
import math
import random
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_behaviour import SECTION
from test_behaviour_proxy import BOT, Clock
from test_preview_proxy import T0, config_for, origin, running

from edgeproxy.runtime.serve import make_state
from edgeproxy.visitor.behaviour import STATE_KEY, attributes_of, behaviour_config, decode, encode, observe_fields

__all__ = ["origin"]  # the module-scoped Node origin fixture, shared

DAY = 86_400
UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
KEPT = 100  # README: "a path counter keeps the last 100 matching views (counts saturate there)"


def seconds(text: str) -> int:
    return int(text[:-1]) * UNITS[text[-1]]


def site(host: str) -> str:
    host = host.lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def referrer_host(url: str, referer: str | None) -> str | None:
    """The Referer's host when it is another site's than the page's (README: a leading www. is the same site)."""
    if not referer:
        return None
    try:
        host = urlsplit(referer).hostname
    except ValueError:
        return None
    own = urlsplit(url).hostname or ""
    return host.rstrip(".") if host and host.rstrip(".") and site(host) != site(own) else None


@dataclass
class Model:
    section: dict[str, Any]
    ttl_days: int = 90  # the proxy's attribute_ttl_days: behaviour expires this long after the last page view

    def attributes(self, views: list[tuple[int, str, str | None]], now: int) -> dict[str, object]:
        """The attributes at `now` of a visitor whose page views (time, URL, Referer) so far are `views`."""
        ttl = self.ttl_days * DAY
        if not views or now - views[-1][0] >= ttl:
            return {}
        fresh = [n for n in range(1, len(views)) if views[n][0] - views[n - 1][0] >= ttl]
        views = views[fresh[-1] :] if fresh else views  # what expired is forgotten: a new visitor from there
        timeout = seconds(self.section.get("session_timeout", "30m"))
        times = [t for t, _, _ in views]
        starts = [n for n in range(len(times)) if n == 0 or times[n] - times[n - 1] > timeout]
        out: dict[str, object] = {}
        named = self.section.get
        if named("visits"):
            out[named("visits")] = len(starts)
        if named("pageviews"):
            out[named("pageviews")] = len(views)
        if named("days_since_first_visit"):
            out[named("days_since_first_visit")] = max(0, math.floor((now - times[0]) / DAY))
        if named("days_since_last_visit") and len(starts) > 1:
            previous_visit_end = times[starts[-1] - 1]
            out[named("days_since_last_visit")] = max(0, math.floor((now - previous_visit_end) / DAY))
        first = next((h for _, url, ref in views if (h := referrer_host(url, ref))), None)
        if named("first_referrer") and first:
            out[named("first_referrer")] = first
        sources = [v[0] for _, url, _ in views if (v := parse_qs(urlsplit(url).query).get("utm_source"))]
        if named("utm_source") and sources:
            out[named("utm_source")] = sources[-1]
        for counter in self.section.get("paths", []):
            within = seconds(counter.get("within", "30d"))
            matching = [t for t, url, _ in views if fnmatchcase(urlsplit(url).path, counter["path"])]
            out[counter["attribute"]] = min(KEPT, sum(1 for t in matching[-KEPT:] if now - t < within))
        return out


OTHER_SECTION = {
    "session_timeout": "10m",
    "visits": "sessions",
    "days_since_last_visit": "away_days",
    "first_referrer": "came_from",
    "utm_source": "campaign",
    "paths": [
        {"attribute": "cart_1h", "path": "/c?rt", "within": "1h"},
        {"attribute": "shop_2d", "path": "/shop/*/[ab]*", "within": "2d"},
        {"attribute": "any_1w", "path": "/*", "within": "1w"},
    ],
}
OTHER_TTL_DAYS = 3  # (attribute_ttl_days for OTHER_SECTION: gaps of a week expire the visitor)
SECTIONS = [(SECTION, 90), (OTHER_SECTION, OTHER_TTL_DAYS)]
GAPS = [0, 1, 59, 599, 600, 601, 1799, 1800, 1801, 3599, 3600, 3601, DAY - 1, DAY, 2 * DAY + 7, 3 * DAY - 1, 3 * DAY,
        7 * DAY, 7 * DAY + 1]  # fmt: skip
PATHS = ["/", "/checkout", "/checkout/pay", "/cart", "/cort", "/shop/x/apple", "/shop/x/y/banana", "/shop/cherry",
         "/Checkout", "/check%6Fut"]  # fmt: skip
QUERIES = ["", "?utm_source=news", "?utm_source=", "?a=1&utm_source=ads&utm_source=later", "?utm_source=x%20y",
           "?q=utm_source", "?utm%5Fsource=encoded", "?utm%5fsource=lower&b=%20", "?q=%20"]  # fmt: skip
REFERERS = [None, "", "https://shop.example/", "https://www.shop.example/a", "http://SHOP.example:8080/",
            "https://www.google.com/search?q=x", "https://News.Example.org./a", "https://duckduckgo.com/",
            "http://[::1/", "http://[x]/", "not a url", "android-app://com.google.android.gm/"]  # fmt: skip
HOSTS = ["shop.example", "www.shop.example", "Shop.Example:8080"]


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[int, str, str | None, bool]]:
    """A visitor's page views: (seconds after the first, URL, Referer, read back from the stored text first)."""
    steps, at = [], 0
    for _ in range(draw(st.integers(1, 14))):
        at += draw(st.sampled_from(GAPS))
        url = f"https://{draw(st.sampled_from(HOSTS))}{draw(st.sampled_from(PATHS))}{draw(st.sampled_from(QUERIES))}"
        steps.append((at, url, draw(st.sampled_from(REFERERS)), draw(st.booleans())))
    return steps


LATER = [0, 1, 3599, 3600, DAY, 2 * DAY, 3 * DAY - 1, 3 * DAY, 7 * DAY, 8 * DAY, 90 * DAY]


@settings(max_examples=300, deadline=None)
@given(configured=st.sampled_from(SECTIONS), steps=traffic(), later=st.sampled_from(LATER))
def test_observed_attributes_are_the_independent_computation_at_every_page_view(
    configured: tuple[dict[str, Any], int], steps: list[tuple[int, str, str | None, bool]], later: int
) -> None:
    section, ttl_days = configured
    config = replace(behaviour_config(section), expires=ttl_days * DAY)
    model = Model(section, ttl_days)
    state: Any = None
    views: list[tuple[int, str, str | None]] = []
    for at, url, referer, from_store in steps:
        if from_store and state is not None:
            state = decode(encode(state))  # another process, or this one after a restart, reads the stored text
        now = int(T0) + at
        state = observe_fields(config, state, url, referer, float(now))
        views.append((now, url, referer))
        assert attributes_of(config, state, float(now)) == model.attributes(views, now), (url, referer)
    end = views[-1][0] + later  # the values at a decision without a page view (days grow, windows slide)
    assert attributes_of(config, state, float(end)) == model.attributes(views, end)


# -- through the real proxy ------------------------------------------------------------------------------------

NOT_PAGE_VIEWS: list[dict[str, str]] = [
    {"User-Agent": BOT}, {"Sec-Fetch-Mode": "cors"}, {"X-Requested-With": "XMLHttpRequest"}, {"Sec-Purpose": "prefetch"}
]  # fmt: skip


def proxy_traffic(seed: int, visitors: int, requests: int) -> list[tuple[int, str, str, dict[str, str], bool]]:
    """Interleaved visitors' requests: (clock step, uid, target, headers, a page view?); a fifth are not page views
    (a bot, a script's fetch, a prefetch), which decide without counting."""
    rng = random.Random(seed)
    out = []
    for _ in range(requests):
        uid = f"v{rng.randrange(visitors)}"
        target = rng.choice(PATHS[:-2]) + rng.choice(QUERIES)  # (paths the origin answers; the rest are above)
        headers = {"Host": rng.choice(HOSTS)}
        referer = rng.choice(REFERERS)
        if referer is not None:
            headers["Referer"] = referer
        page_view = rng.random() >= 0.2
        if not page_view:
            headers.update(rng.choice(NOT_PAGE_VIEWS))
        step = 3 * DAY if rng.random() < 0.02 else rng.choice(GAPS[:9] + GAPS[11:13])  # (now and then: days pass)
        out.append((step, uid, target, headers, page_view))
    return out


@pytest.mark.parametrize(
    ("section", "ttl_days", "seed"), [(SECTION, 90, 1), (OTHER_SECTION, OTHER_TTL_DAYS, 2)], ids=["example", "other"]
)
def test_the_proxy_decides_with_the_independent_computation_across_visitors_and_a_restart(
    origin: str, tmp_path: Path, section: dict[str, Any], ttl_days: int, seed: int
) -> None:
    log = tmp_path / "decisions.jsonl"
    config = replace(config_for(origin, tmp_path, decision_log=str(log), attribute_ttl_days=ttl_days),
                     behaviour=behaviour_config(section))  # fmt: skip
    model, clock = Model(section, ttl_days), Clock()
    clock.now = float(int(T0))
    views: dict[str, list[tuple[int, str, str | None]]] = {}
    expected: list[tuple[str, dict[str, object]]] = []
    plan = proxy_traffic(seed, visitors=12, requests=240)

    async def scenario(part: list[tuple[int, str, str, dict[str, str], bool]]) -> None:
        async with running(make_state(config, clock=clock), origin) as proxy:
            for step, uid, target, headers, page_view in part:
                clock.now += step
                now = int(clock.now)
                answer = await proxy.get(target, uid=uid, headers=headers)
                assert answer.status in (200, 404), (target, headers, answer.status)  # (the origin's pages)
                if page_view:
                    views.setdefault(uid, []).append((now, f"http://{headers['Host']}{target}", headers.get("Referer")))
                expected.append((uid, model.attributes(views.get(uid, []), now)))

    asyncio.run(scenario(plan[:120]))
    asyncio.run(scenario(plan[120:]))  # a restart: what was written behind is read back and counted on
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    got = [(line["userUid"], {k: v for k, v in line["request"]["storedAttributes"].items() if k != STATE_KEY})
           for line in lines]  # fmt: skip
    assert len(got) == len(expected)
    for n, (decided, wanted) in enumerate(zip(got, expected, strict=True)):
        assert decided == wanted, (n, plan[n])
    assert len({str(attributes) for _, attributes in expected}) > 100  # (varied: not the same few values)
