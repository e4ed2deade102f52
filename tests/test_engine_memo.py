"""MemoDecider is an optimization only: for any visitor it returns exactly what `CompiledSnapshot.decide` does.

Checked on the example project and on a generated project at Personalize's limits (100 experiences, 100
audiences over every kind of rule, A/B tests with and without targeting, paused experiences), for varied
visitors, tag selections and clocks, with each manifest compared entry by entry against a fresh context.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from replay_traffic import random_example_description
from rulesets import FIXED_NOW_TS, custom_rule, decide_one, group, segmented_experience

from edgeproxy.engine.context import context_from_description
from edgeproxy.engine.decide import CompiledSnapshot
from edgeproxy.engine.memo import MemoDecider, feature_key_for
from edgeproxy.files.snapshot_file import load_snapshot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from limits_project import random_visitors, write_limits_project


def check(snapshot: CompiledSnapshot, descriptions: list[dict[str, Any]], tag_choices: list[Any]) -> MemoDecider:
    decider = MemoDecider(snapshot, step_aside=None)  # every decision through the memo (stepping aside: its own tests)
    rng = random.Random(3)

    def context(description: dict[str, Any]) -> Any:
        return context_from_description(
            description, clock=lambda: FIXED_NOW_TS, new_uid=lambda: "new", classifier=snapshot.classifier,
            geo_lookup=None,
        ).context  # fmt: skip

    for description in descriptions:
        tags = rng.choice(tag_choices)
        memoized = decider.decide(context(description), tags)
        plain = snapshot.decide(context(description), tags)
        assert memoized == plain, (description, tags)
    return decider


def test_example_project(example_rules: Path) -> None:
    snapshot = load_snapshot(example_rules)
    rng = random.Random(7)
    visitors = [random_example_description(rng) for _ in range(4000)]
    tags = [None, ("section:homepage",), ("section:checkout",), ("section:cart",), ("campaign:black-friday",), ()]
    decider = check(snapshot, visitors, tags)
    assert feature_key_for(snapshot, snapshot.experiences) is not None  # the memo is on for this project
    assert decider.hits > 1000 and decider.misses > 50  # it did work, on varied keys


def test_project_at_the_limits(tmp_path: Path) -> None:
    snapshot = load_snapshot(write_limits_project(tmp_path))
    visitors = random_visitors(1500)
    rng = random.Random(5)
    for visitor in visitors:  # repeat features under other uids and clocks, as real traffic does
        visitor["now"] = random_example_description(rng)["now"]
    visitors += [dict(v, userUid=f"again-{n}") for n, v in enumerate(visitors[:500])]
    decider = check(snapshot, visitors, [None, ("section:1",), ("section:2", "section:3")])
    assert decider.hits + decider.misses == len(visitors)


@pytest.mark.parametrize("limit", [1, 3])
def test_a_full_memo_starts_over_and_stays_exact(example_rules: Path, limit: int) -> None:
    snapshot = load_snapshot(example_rules)
    rng = random.Random(11)
    decider = MemoDecider(snapshot, limit=limit, step_aside=None)
    for _ in range(300):
        description = random_example_description(rng)
        ctx = context_from_description(description, clock=lambda: FIXED_NOW_TS, new_uid=lambda: "n",
                                       classifier=snapshot.classifier, geo_lookup=None).context  # fmt: skip
        again = context_from_description(description, clock=lambda: FIXED_NOW_TS, new_uid=lambda: "n",
                                         classifier=snapshot.classifier, geo_lookup=None).context  # fmt: skip
        assert decider.decide(ctx) == snapshot.decide(again)
    assert all(len(plan.memo) <= limit for plan in decider._plans.values())


def test_attribute_values_of_different_types_never_share_a_memo_key(tmp_path: Path) -> None:
    """`1`, `true`, `1.0` and `"1"` (and the like) are different values to the memo: each decision is the plain
    engine's, whichever of them the memo saw first (ints key as themselves, the others typed), under rules that
    tell them apart (IS_TRUE: `true`, not `1`; STRING_EQUALS "1.0": `1.0`, not `1`)."""
    definition = group("OR", custom_rule("flag", "IS_TRUE"), custom_rule("flag", "STRING_EQUALS", "1.0"))
    snapshot = load_snapshot(segmented_experience(tmp_path, definition, attribute_keys=["flag"]))
    rng = random.Random(13)
    values: list[Any] = [1, True, 1.0, "1", "true", 0, False, 0.0, -0.0, "0", 2, None, [1], {"a": 1}]
    descriptions = []
    for _ in range(6):  # each order of first sight
        rng.shuffle(values)
        descriptions += [{"userUid": "same", "storedAttributes": {"flag": value}} for value in values]
    decider = check(snapshot, descriptions, [None])
    assert decider.hits > 0
    chosen = {repr(value): decide_one(snapshot, {"userUid": "u", "storedAttributes": {"flag": value}})
              ["activeVariants"]["0"] for value in (1, True, 1.0, "1")}  # fmt: skip
    assert chosen == {"1": None, "True": "0", "1.0": "0", "'1'": None}  # (so the values do decide apart)


# -- the query string a caller already has (the proxy) ---------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(
    host=st.text(alphabet="ab.:?#/\t@[]", max_size=6),
    path=st.text(alphabet="ab/?#=&%\t;", max_size=12),
)
def test_a_given_query_is_used_only_when_it_is_what_urlsplit_finds(host: str, path: str) -> None:
    from urllib.parse import urlsplit

    from edgeproxy.engine.context import VisitorContext

    url = f"https://{host}/{path}"
    query = path.partition("?")[2]  # what the proxy passes: the raw query of the request target
    given = VisitorContext(user_uid="u", now=0.0, page_url=url, query=query).query_string()
    parsed = VisitorContext(user_uid="u", now=0.0, page_url=url).query_string()
    assert given == parsed
    try:
        assert (parsed or "") == urlsplit(url).query
    except ValueError:  # a bracket out of place in the host: not a URL urlsplit accepts
        assert (parsed or "") == url.partition("?")[2].partition("#")[0]
