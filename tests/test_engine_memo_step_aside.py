"""The memo steps aside when it does not pay (`StepAside`), and stays exact whichever way a decision goes.

Per tag selection, after each window of memo decisions with too few answered from the memo, the next decisions
are the plain engine's; each such window in a row doubles the bypass up to a bound; a window that pays resets it.
Checked against a model of that policy on random traffic and policies, with every manifest compared to
`CompiledSnapshot.decide` on a fresh context; and on the traffic it is for: a stream of visitors whose features do
not repeat (it steps aside) and returning visitors (it never does).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rulesets import FIXED_NOW_TS

from edgeproxy.engine.context import VisitorContext, context_from_description
from edgeproxy.engine.decide import CompiledSnapshot
from edgeproxy.engine.memo import MemoDecider, StepAside
from edgeproxy.files.snapshot_file import load_snapshot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from limits_project import random_visitors, write_limits_project

POOL = random_visitors(400, seed=23)  # distinct visitors of the limits project: their feature keys rarely repeat
SELECTIONS: list[tuple[str, ...] | None] = [None, ("section:1",)]


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory) -> CompiledSnapshot:
    return load_snapshot(write_limits_project(tmp_path_factory.mktemp("limits")))


def context(snapshot: CompiledSnapshot, description: dict[str, Any]) -> VisitorContext:
    return context_from_description(
        description, clock=lambda: FIXED_NOW_TS, new_uid=lambda: "new", classifier=snapshot.classifier,
        geo_lookup=None,
    ).context  # fmt: skip


@dataclass
class PolicyModel:
    """What `StepAside` says, for one selection: whether the next decision is plain, given the memo's outcomes."""

    policy: StepAside
    window_left: int = 0
    window: int = 0
    hits: int = 0
    bypass_left: int = 0
    next_bypass: int = 0

    def __post_init__(self) -> None:
        self.window_left = self.window = self.policy.warmup  # the first window: the warm-up
        self.next_bypass = self.policy.bypass

    def next_is_plain(self) -> bool:
        if self.window_left == 0:
            if Fraction(self.hits, self.window) >= Fraction(self.policy.min_hits, self.policy.window):
                self.next_bypass = self.policy.bypass
            else:
                self.bypass_left = self.next_bypass
                self.next_bypass = min(self.next_bypass * 2, self.policy.longest)
            self.window_left = self.window = self.policy.window
            self.hits = 0
        if self.bypass_left:
            self.bypass_left -= 1
            return True
        self.window_left -= 1
        return False

    def memo_answered(self, hit: bool) -> None:
        self.hits += hit


policies = st.builds(
    lambda window, share, bypass, factor, warmup: StepAside(
        window, round(window * share), bypass, bypass * factor, warmup
    ),
    window=st.integers(1, 8),
    share=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    bypass=st.integers(1, 6),
    factor=st.sampled_from([1, 2, 4, 16]),
    warmup=st.integers(1, 12),
)


@settings(max_examples=80, deadline=None)
@given(
    policy=policies,
    pool=st.sampled_from([1, 2, 3, 10, 50, len(POOL)]),  # a small pool repeats visitors; the whole pool does not
    visits=st.lists(st.tuples(st.integers(0, len(POOL) - 1), st.sampled_from(SELECTIONS)), min_size=20, max_size=150),
)
def test_the_memo_steps_aside_as_its_policy_says_and_every_decision_is_the_engines(
    limits: CompiledSnapshot, policy: StepAside, pool: int, visits: list[tuple[int, tuple[str, ...] | None]]
) -> None:
    decider = MemoDecider(limits, step_aside=policy)
    models = {selection: PolicyModel(policy) for selection in SELECTIONS}
    for index, selection in visits:
        description = POOL[index % pool]  # a small pool repeats visitors (memo hits), a large one does not
        hits, misses, bypassed = decider.hits, decider.misses, decider.bypassed
        expect_plain = models[selection].next_is_plain()
        manifest = decider.decide(context(limits, description), selection)
        assert manifest == limits.decide(context(limits, description), selection), (description, selection)
        assert decider.bypassed - bypassed == expect_plain
        if not expect_plain:
            assert (decider.hits - hits) + (decider.misses - misses) == 1
            models[selection].memo_answered(decider.hits > hits)
    assert decider.hits + decider.misses + decider.bypassed == len(visits)


def test_it_steps_aside_on_visitors_whose_features_do_not_repeat_and_tries_again_later(
    limits: CompiledSnapshot,
) -> None:
    decider = MemoDecider(limits, step_aside=StepAside(window=16, min_hits=8, bypass=32, longest=64, warmup=24))
    visitors = random_visitors(600, seed=29)
    outcomes = []
    for description in visitors:
        before = decider.bypassed
        manifest = decider.decide(context(limits, description))
        assert manifest == limits.decide(context(limits, description))
        outcomes.append("plain" if decider.bypassed > before else "memo")
    assert decider.hits <= 4  # new visitors, new keys: the memo answered (almost) nothing
    # 24 through the memo (the warm-up), then 32 plain; 16, 64 plain; then 16 and 64 plain while it does not pay.
    expected = ["memo"] * 24 + ["plain"] * 32 + ["memo"] * 16 + ["plain"] * 64
    expected += (["memo"] * 16 + ["plain"] * 64) * 6
    assert outcomes == expected[: len(outcomes)]


def test_it_never_steps_aside_for_returning_visitors(limits: CompiledSnapshot) -> None:
    decider = MemoDecider(limits)  # the default policy
    returning = random_visitors(40, seed=31)
    for n in range(3000):
        description = returning[n % len(returning)]
        assert decider.decide(context(limits, description)) == limits.decide(context(limits, description))
    assert decider.bypassed == 0
    assert decider.misses == len(returning)  # each visitor's first visit; every later one is answered


def test_the_memo_comes_back_when_traffic_starts_to_repeat(limits: CompiledSnapshot) -> None:
    decider = MemoDecider(limits, step_aside=StepAside(window=10, min_hits=5, bypass=20, longest=40, warmup=10))
    for description in random_visitors(200, seed=37):  # nothing repeats: it steps aside
        decider.decide(context(limits, description))
    assert decider.bypassed > 100
    bypassed = decider.bypassed
    returning = random_visitors(3, seed=41)
    for n in range(300):  # the same three visitors: the next window pays and the memo stays
        description = returning[n % 3]
        assert decider.decide(context(limits, description)) == limits.decide(context(limits, description))
    assert decider.bypassed - bypassed <= 40 + 10  # at most the bypass under way, and one more window's worth
    assert decider.hits >= 240


def test_each_selection_judges_its_own_memo(limits: CompiledSnapshot) -> None:
    decider = MemoDecider(limits, step_aside=StepAside(window=8, min_hits=4, bypass=16, longest=16, warmup=8))
    fresh = iter(random_visitors(300, seed=43))
    returning = random_visitors(2, seed=47)
    for n in range(200):
        decider.decide(context(limits, next(fresh)), ("section:2",))  # steps aside
        before = decider.bypassed
        decider.decide(context(limits, returning[n % 2]), ("section:3",))  # pays
        assert decider.bypassed == before


@pytest.mark.parametrize(
    "fields",
    [
        {"window": 0},
        {"window": 4, "min_hits": 5},
        {"min_hits": -1},
        {"bypass": 0},
        {"bypass": 100, "longest": 50},
        {"warmup": 0},
    ],
)
def test_a_policy_that_cannot_work_is_refused(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="StepAside needs"):
        StepAside(**fields)
