"""The pure part of forwarding (edgeproxy/forward/items.py): what is sent, how writes are merged into requests and
chains, what an answer means, Retry-After, backoff, the Edge API host setting."""

from __future__ import annotations

import json

import pytest

from edgeproxy.forward.items import (
    BACKOFF_CAP,
    MAX_EVENTS_PER_REQUEST,
    RETRY_AFTER_CAP,
    ForwardItem,
    attributes_item,
    backoff,
    chains,
    decode_item,
    edge_api_base,
    encode_item,
    events_items,
    merge_item,
    outcome_of,
    parse_retry_after,
)
from edgeproxy.store.base import EventRecord

P = "project"
NOW = 1_800_000_000.0


def event(user: str, key: str, project: str = P) -> EventRecord:
    return EventRecord(ts=1.0, project_uid=project, user_uid=user, type="EVENT", event_key=key)


def impression(user: str, experience: str, variant: str) -> EventRecord:
    return EventRecord(
        ts=1.0,
        project_uid=P,
        user_uid=user,
        type="IMPRESSION",
        experience_short_uid=experience,
        variant_short_uid=variant,
        source="proxy",
    )


def test_events_become_one_post_per_user_in_the_sdks_body_shape() -> None:
    items = events_items([event("a", "k1"), impression("b", "2", "1"), event("a", "k2"), event("", "anon")], NOW)
    assert [(i.user_uid, json.loads(i.body)) for i in items] == [
        ("a", [{"eventKey": "k1", "type": "EVENT"}, {"eventKey": "k2", "type": "EVENT"}]),
        ("b", [{"experienceShortUid": "2", "variantShortUid": "1", "type": "IMPRESSION"}]),
    ]  # a visitor without a uid (no consent) is never forwarded
    assert all(i.method == "POST" and i.path == "/events" and i.queued_at == NOW for i in items)
    many = events_items([event("a", f"k{n}") for n in range(MAX_EVENTS_PER_REQUEST + 1)], NOW)
    assert [len(json.loads(i.body)) for i in many] == [MAX_EVENTS_PER_REQUEST, 1]


def test_headers_are_the_sdks_and_a_merge_has_no_user_header() -> None:
    patch = attributes_item(P, "a", {"tier": "gold"}, NOW, "personalize-edge-sdk-js/1.0.27")
    assert patch.headers() == {
        "X-Project-Uid": P,
        "X-User-Agent": "personalize-edge-sdk-js/1.0.27",
        "Content-Type": "text/plain;charset=UTF-8",
        "X-CS-Personalize-User-Uid": "a",
    }
    merge = merge_item(P, "old", "new", NOW)
    assert "X-CS-Personalize-User-Uid" not in merge.headers() and merge.headers()["X-User-Agent"].startswith(
        "edgeproxy/"
    )
    assert json.loads(merge.body) == {"sourceUserUid": "old", "targetUserUid": "new"}
    assert merge.orders_by == "new" and merge.other_uid == "old"  # ordered with the identity that goes on


def test_an_item_survives_encoding_and_garbage_is_refused() -> None:
    item = merge_item(P, "old", "new", NOW, "agent/1")
    assert decode_item(encode_item(item)) == item
    for garbage in (b"", b"\x93\x01\x02", b"not msgpack at all \xff"):
        with pytest.raises(ValueError, match="not a queued write"):
            decode_item(garbage)
    wrong_path = ForwardItem("DELETE", "/events", P, "a", b"[]", NOW)
    with pytest.raises(ValueError):
        decode_item(encode_item(wrong_path))


def test_chains_keep_each_users_order_and_merge_only_adjacent_events() -> None:
    a1, a2 = events_items([event("a", "1")], NOW)[0], events_items([event("a", "2")], NOW)[0]
    b1 = events_items([event("b", "1")], NOW)[0]
    a_patch = attributes_item(P, "a", {"x": 1}, NOW)
    a3 = events_items([event("a", "3")], NOW)[0]
    merge_to_a = merge_item(P, "c", "a", NOW)
    other_project = events_items([event("a", "4", project="other")], NOW)[0]
    entries = [("1", a1), ("2", b1), ("3", a2), ("4", a_patch), ("5", a3), ("6", merge_to_a), ("7", other_project)]
    found = chains(entries)
    assert [[r.ids for r in chain] for chain in found] == [
        [("1", "3"), ("4",), ("5",), ("6",), ("7",)],  # a: events 1+3 merged, then the patch stops merging
        [("2",)],
    ]
    assert json.loads(found[0][0].item.body) == [{"eventKey": "1", "type": "EVENT"}, {"eventKey": "2", "type": "EVENT"}]


def test_a_merge_joins_its_two_users_chains_so_it_follows_the_sources_writes() -> None:
    a_patch = attributes_item(P, "a", {"tier": "gold"}, NOW)
    c_event = events_items([event("c", "x")], NOW)[0]
    merge_a_to_b = merge_item(P, "a", "b", NOW)
    b_event = events_items([event("b", "after")], NOW)[0]
    a_later = events_items([event("a", "later")], NOW)[0]
    found = chains([("1", a_patch), ("2", c_event), ("3", merge_a_to_b), ("4", b_event), ("5", a_later)])
    # One chain for a and b, in queue order: the patch before the merge, b's event after it; c on its own.
    assert [[r.ids for r in chain] for chain in found] == [[("1",), ("3",), ("4",), ("5",)], [("2",)]]


def test_merging_stops_at_the_request_size() -> None:
    half = MAX_EVENTS_PER_REQUEST // 2 + 1
    big = events_items([event("a", f"k{n}") for n in range(half)], NOW)[0]
    found = chains([("1", big), ("2", big), ("3", events_items([event("a", "z")], NOW)[0])])
    assert [r.ids for r in found[0]] == [("1",), ("2", "3")]


@pytest.mark.parametrize(
    ("status", "retry_after", "verdict", "wait"),
    [
        (200, None, "sent", 0.0),
        (204, None, "sent", 0.0),
        (None, None, "retry", 0.0),
        (500, None, "retry", 0.0),
        (503, "7", "retry", 7.0),
        (408, None, "retry", 0.0),
        (429, "2", "retry", 2.0),
        (429, "Thu, 01 Jan 2027 00:00:10 GMT", "retry", 10.0),
        (429, "soon", "retry", 0.0),
        (429, "999999", "retry", RETRY_AFTER_CAP),
        (400, None, "dead", 0.0),
        (404, None, "dead", 0.0),
        (413, None, "dead", 0.0),
        (301, None, "dead", 0.0),
    ],
)
def test_what_an_answer_means(status: int | None, retry_after: str | None, verdict: str, wait: float) -> None:
    now = 1798761600.0  # 2027-01-01T00:00:00Z
    outcome = outcome_of(status, retry_after, now, failure="ConnectionRefused", body='{"error":"bad"}')
    assert (outcome.verdict, outcome.retry_after) == (verdict, wait)
    if verdict == "dead":
        assert outcome.reason == f'HTTP {status}: {{"error":"bad"}}'
    if status is None:
        assert outcome.reason == "ConnectionRefused"


def test_retry_after_in_the_past_is_no_wait() -> None:
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:00 GMT", 1798761600.0) == 0.0


def test_backoff_grows_to_its_cap_with_half_of_it_random() -> None:
    assert backoff(1, lambda: 0.0) == 0.25 and backoff(1, lambda: 1.0) == 0.5
    assert backoff(2, lambda: 1.0) == 1.0 and backoff(3, lambda: 1.0) == 2.0
    assert backoff(40, lambda: 1.0) == BACKOFF_CAP and backoff(40, lambda: 0.0) == BACKOFF_CAP / 2


def test_the_edge_api_setting_takes_a_region_or_a_url() -> None:
    assert edge_api_base("eu") == "https://eu-personalize-edge.contentstack.com"
    assert edge_api_base("NA") == "https://personalize-edge.contentstack.com"
    assert edge_api_base("http://127.0.0.1:4001/") == "http://127.0.0.1:4001"
    for bad in ("mars", "ftp://h", "https://", "https://h/?x=1"):
        with pytest.raises(ValueError):
            edge_api_base(bad)
