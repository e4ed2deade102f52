"""Behavioural attributes, the pure part (edgeproxy/visitor/behaviour.py, SPEC §13): the `[behaviour]` section,
visits and page views, days since, the first external referrer, the last utm_source, sliding path windows, and the
stored text. Times are given; nothing here reads a clock."""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.engine.decide import compile_project
from edgeproxy.files.rules import load_project
from edgeproxy.replay.behaviour import load_behaviour
from edgeproxy.visitor.behaviour import (
    DAY,
    PATH_VIEWS_KEPT,
    STATE_KEY,
    Behaviour,
    BehaviourConfig,
    PageView,
    attributes_of,
    behaviour_config,
    behaviour_of,
    decode,
    encode,
    observe,
    observe_fields,
    parse_duration,
    reading,
)

T0 = 1_795_000_000.0
SECTION = {
    "session_timeout": "30m",
    "visits": "visit_count",
    "pageviews": "pageview_count",
    "days_since_first_visit": "days_since_first_visit",
    "days_since_last_visit": "days_since_last_visit",
    "first_referrer": "first_referrer_domain",
    "utm_source": "last_utm_source",
    "paths": [{"attribute": "checkout_views_7d", "path": "/checkout*", "within": "7d"}],
}
CONFIG = behaviour_config(SECTION)
RULES = Path(__file__).resolve().parent.parent / "rules"


def view(url: str = "https://shop.example/", referer: str | None = None) -> PageView:
    return PageView.of(url, referer)


def walk(*steps: tuple[float, PageView]) -> Behaviour:
    state = None
    for at, page in steps:
        state = observe(CONFIG, state, page, at)
    assert state is not None
    return state


def test_the_first_page_view_is_a_first_visit_without_days_since_last() -> None:
    state = walk((T0, view("https://www.shop.example/?utm_source=news", "https://www.google.com/search?q=x")))
    assert attributes_of(CONFIG, state, T0) == {
        "visit_count": 1, "pageview_count": 1, "days_since_first_visit": 0, "first_referrer_domain": "www.google.com",
        "last_utm_source": "news", "checkout_views_7d": 0,
    }  # fmt: skip


def test_a_new_visit_starts_after_the_session_timeout_and_not_before() -> None:
    state = walk((T0, view()), (T0 + 29 * 60, view()), (T0 + 29 * 60 + 1801, view()))
    assert (state.visits, state.pageviews) == (2, 3)
    assert state.previous_visit == T0 + 29 * 60  # the last page view of the first visit
    later = T0 + 29 * 60 + 3 * DAY + 10
    assert attributes_of(CONFIG, state, later)["days_since_last_visit"] == 3
    assert attributes_of(CONFIG, state, later)["days_since_first_visit"] == 3


def test_the_first_referrer_is_the_first_other_site_and_never_changes() -> None:
    state = walk(
        (T0, view("https://shop.example/", "https://shop.example/other")),  # own site: not a referrer
        (T0 + 1, view("https://shop.example/", None)),
        (T0 + 2, view("https://shop.example/", "https://news.example.org/a")),
        (T0 + 3, view("https://shop.example/", "https://www.google.com/")),
    )
    assert state.first_referrer == "news.example.org"


def test_utm_source_is_the_last_one_seen() -> None:
    state = walk(
        (T0, view("https://s/?utm_source=a")),
        (T0 + 1, view("https://s/p")),
        (T0 + 2, view("https://s/?utm_source=b&x=1")),
    )
    assert attributes_of(CONFIG, state, T0 + 3)["last_utm_source"] == "b"


def test_path_views_count_in_a_sliding_window() -> None:
    state = walk(
        (T0, view("https://s/checkout")),
        (T0 + 2 * DAY, view("https://s/checkout/payment")),
        (T0 + 2 * DAY + 5, view("https://s/cart")),  # not a checkout view
        (T0 + 6 * DAY, view("https://s/checkout")),
    )
    assert attributes_of(CONFIG, state, T0 + 6 * DAY)["checkout_views_7d"] == 3
    assert attributes_of(CONFIG, state, T0 + 7 * DAY + 1)["checkout_views_7d"] == 2  # the first left the window
    assert attributes_of(CONFIG, state, T0 + 14 * DAY)["checkout_views_7d"] == 0
    many = walk(*((T0 + n, view("https://s/checkout")) for n in range(PATH_VIEWS_KEPT + 20)))
    assert attributes_of(CONFIG, many, T0 + 200)["checkout_views_7d"] == PATH_VIEWS_KEPT  # saturates


def test_the_stored_text_round_trips_and_garbage_starts_afresh() -> None:
    state = walk((T0, view("https://s/checkout?utm_source=x", "https://ref.example/")), (T0 + 4000, view()))
    back = decode(encode(state))
    assert back == state
    for garbage in (None, 3, "", "[", "[2,1,1,null,1,1,null,null,{}]", '{"a":1}', "[1,2]"):
        assert decode(garbage) is None


def test_only_configured_keys_are_set() -> None:
    only_visits = behaviour_config({"visits": "v"})
    state = observe(only_visits, None, view(), T0)
    assert attributes_of(only_visits, state, T0) == {"v": 1}
    assert only_visits.owned_keys == frozenset({"v", STATE_KEY})
    assert attributes_of(CONFIG, None, T0) == {}


def test_a_decision_whose_rules_read_few_keys_gets_only_those_computed() -> None:
    state = walk((T0, view("https://s/checkout?utm_source=x", "https://ref.example/")), (T0 + 4000, view()))
    everything = attributes_of(CONFIG, state, T0 + 5000)
    read = frozenset({"visit_count", "checkout_views_7d", "tier"})  # "tier": a key behaviour does not compute
    assert attributes_of(reading(CONFIG, read), state, T0 + 5000) == {
        "visit_count": everything["visit_count"],
        "checkout_views_7d": everything["checkout_views_7d"],
    }
    assert reading(CONFIG, None) is CONFIG  # rules whose keys are not known: all of them
    assert attributes_of(reading(CONFIG, frozenset()), state, T0) == {}


def test_the_example_rules_read_the_keys_their_behaviour_audiences_use() -> None:
    snapshot = compile_project(load_project(RULES), "v1")
    assert snapshot.custom_keys_read is not None
    assert {"visit_count", "checkout_views_7d"} <= snapshot.custom_keys_read
    assert not {"pageview_count", "days_since_first_visit", "last_utm_source"} & snapshot.custom_keys_read


SEVERAL_COUNTERS = behaviour_config(
    {
        "visits": "visit_count",
        "paths": [
            {"attribute": "checkout_views", "path": "/checkout*", "within": "7d"},
            {"attribute": "cart_views", "path": "/c?rt", "within": "1d"},
            {"attribute": "c_views", "path": "/c*", "within": "1h"},
        ],
    }
)


@given(paths=st.lists(st.text(alphabet="/cheoutkarx*", max_size=10).map(lambda rest: "/" + rest), max_size=8))
def test_each_path_counter_counts_the_views_its_own_glob_matches_whether_the_path_is_given_or_read(
    paths: list[str],
) -> None:
    given_path, read = None, None  # observed with the path at hand (the proxy's page path), and read from the URL
    for n, path in enumerate(paths):
        url = f"https://shop.example{path}?q=1"
        given_path = observe_fields(SEVERAL_COUNTERS, given_path, url, None, T0 + n, path)
        read = observe(SEVERAL_COUNTERS, read, view(url), T0 + n)
    assert (given_path and behaviour_of(given_path)) == read
    found = attributes_of(SEVERAL_COUNTERS, given_path, T0 + len(paths)) if paths else {}
    for counter in SEVERAL_COUNTERS.paths:  # all views within every window: each counts what its glob matches
        if paths:
            assert found[counter.attribute] == sum(fnmatchcase(path, counter.path) for path in paths)


def test_a_visitor_without_path_views_keeps_none_until_a_counted_path_and_then_counts_it() -> None:
    state = observe_fields(SEVERAL_COUNTERS, None, "https://s/home", None, T0, "/home")
    assert state[7] is None and behaviour_of(state).path_views == {}
    state = observe_fields(SEVERAL_COUNTERS, state, "https://s/cart", None, T0 + 1, "/cart")
    assert behaviour_of(state).path_views == {"cart_views": (T0 + 1,), "c_views": (T0 + 1,)}
    later = observe_fields(SEVERAL_COUNTERS, state, "https://s/home", None, T0 + 7200, "/home")  # c_views left
    assert behaviour_of(later).path_views == {"cart_views": (T0 + 1,)}
    assert attributes_of(SEVERAL_COUNTERS, later, T0 + 7200) == {
        "visit_count": 2, "checkout_views": 0, "cart_views": 1, "c_views": 0,
    }  # fmt: skip


URL_PARTS = st.sampled_from(["http://", "https://", "HTTP://", "", "x://", "//"])
HOSTS = st.sampled_from(
    ["shop.example", "www.shop.example", "Shop.Example.", "other.org", "WWW.Other.org", "[::1]:8080", "u@shop.example",
     "h:80", "", "[::1", "[x]", "a:99999999"]
)  # fmt: skip
REST = st.text(alphabet="/?#=&.:@ acheoutkm_surcx\t", max_size=24)


@given(scheme=URL_PARTS, host=HOSTS, rest=REST, referer_scheme=URL_PARTS, referer_host=HOSTS, referer_rest=REST)
def test_the_path_and_referrer_read_without_a_full_parse_are_what_a_full_parse_gives(
    scheme: str, host: str, rest: str, referer_scheme: str, referer_host: str, referer_rest: str
) -> None:
    url, referer = f"{scheme}{host}{rest}", f"{referer_scheme}{referer_host}{referer_rest}"
    own_host, path, _ = PageView(url, None).split()
    try:
        hostname = (urlsplit(referer).hostname or "").rstrip(".")
    except ValueError:  # a Referer no parser reads names no site: none, no error
        hostname = ""
    site, own = (h.lower().rstrip(".").removeprefix("www.") for h in (hostname, own_host))
    state = observe(CONFIG, None, view(url, referer), T0)
    assert state.first_referrer == (hostname if site and site != own else None)
    counted = path.startswith("/checkout")
    assert attributes_of(CONFIG, state, T0)["checkout_views_7d"] == (1 if counted else 0)


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"visit": "x"}, "unknown key 'visit'"),
        ({"visits": "has space"}, "visits: expected an attribute key"),
        ({"session_timeout": "soon"}, "session_timeout: 'soon' is not a duration"),
        ({"session_timeout": 0}, "must be a positive duration"),
        ({"paths": [{"attribute": "a", "path": "checkout"}]}, "path: expected a path glob starting with '/'"),
        ({"paths": [{"attribute": "a", "path": "/c", "within": "forever"}]}, "within: 'forever'"),
        ({"paths": [{"attribute": "a", "path": "/c", "extra": 1}]}, "expected a table of attribute, path and within"),
        ({"visits": "a", "pageviews": "a"}, "used twice (a)"),
    ],
)
def test_a_bad_section_says_what_and_where(section: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match="behaviour") as caught:
        behaviour_config(section)
    assert words in str(caught.value)


def test_durations() -> None:
    assert [parse_duration(t, "x") for t in ("45s", "30m", "2h", "7d", "1w", 90, "1.5h")] == [
        45.0, 1800.0, 7200.0, 7 * DAY, 7 * DAY, 90.0, 5400.0]  # fmt: skip


def test_defaults_are_a_thirty_minute_session_and_nothing_computed() -> None:
    assert behaviour_config({}) == BehaviourConfig(session_timeout=1800.0)


def test_the_section_is_read_from_the_config_file_and_errors_name_it(tmp_path: Path) -> None:
    from edgeproxy.runtime.config import ConfigError, read_settings

    good = tmp_path / "good.toml"
    good.write_text('attribute_ttl_days = 7\n[behaviour]\nvisits = "visit_count"\n'
                    '[[behaviour.paths]]\nattribute = "c"\npath = "/c*"\n')  # fmt: skip
    config = read_settings(str(good), {"EDGEPROXY_BEHAVIOUR": "ignored: a table of the file only"}, {})
    assert config.behaviour is not None and config.behaviour.visits == "visit_count"
    assert [(p.attribute, p.within) for p in config.behaviour.paths] == [("c", 30 * DAY)]
    # It expires with the stored attributes, on the proxy and in replay (which reads the same file).
    assert config.behaviour.expires == 90 * DAY  # (the section alone: the default)
    assert config.behaviour_expiring() == replace(config.behaviour, expires=7 * DAY) == load_behaviour(str(good))
    bad = tmp_path / "bad.toml"
    bad.write_text('[behaviour]\nsession_timeout = "forever"\n')
    with pytest.raises(ConfigError) as caught:
        read_settings(str(bad), {}, {})
    assert str(bad) in str(caught.value) and "session_timeout: 'forever' is not a duration" in str(caught.value)
    assert read_settings(None, {}, {}).behaviour is None
