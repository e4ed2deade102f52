"""Statistics against independent computations: exact Beta comparisons, numerical integration, closed forms."""

from __future__ import annotations

import math

import pytest

from edgeproxy.analytics.stats import (
    DRAWS,
    chi_square_survival,
    draw_seed,
    probability_to_be_best,
    sample_ratio_mismatch,
    wilson_interval,
)

MC_SD = 0.5 / math.sqrt(DRAWS)  # the largest Monte Carlo standard error of a probability with 15,000 draws


def log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def exact_b_beats_a(a_conv: int, a_n: int, b_conv: int, b_n: int) -> float:
    """P(pB > pA) for pA ~ Beta(1 + cA, 1 + nA - cA), pB ~ Beta(1 + cB, ...), integer parameters (Evan Miller's
    closed form: a finite sum of Beta functions)."""
    alpha_a, beta_a = 1 + a_conv, 1 + a_n - a_conv
    alpha_b, beta_b = 1 + b_conv, 1 + b_n - b_conv
    total = 0.0
    for i in range(alpha_b):
        total += math.exp(
            log_beta(alpha_a + i, beta_a + beta_b) - math.log(beta_b + i) - log_beta(1 + i, beta_b)
            - log_beta(alpha_a, beta_a)
        )  # fmt: skip
    return total


def integrated_best(params: list[tuple[int, int]], steps: int = 20_000) -> list[float]:
    """P(variant i is best) = ∫ f_i(x) Π_{j≠i} F_j(x) dx, by the midpoint rule on the Beta densities."""
    shapes = [(1.0 + c, 1.0 + n - c) for c, n in params]
    xs = [(k + 0.5) / steps for k in range(steps)]
    densities = []
    for a, b in shapes:
        norm = log_beta(a, b)
        densities.append([math.exp((a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - norm) for x in xs])
    cdfs = []
    for dens in densities:
        running, cdf = 0.0, []
        for d in dens:
            cdf.append(running + d / (2 * steps))  # F at the midpoint
            running += d / steps
        cdfs.append(cdf)
    result = []
    for i in range(len(shapes)):
        total = 0.0
        for k in range(steps):
            product = densities[i][k]
            for j in range(len(shapes)):
                if j != i:
                    product *= cdfs[j][k]
            total += product / steps
        result.append(total)
    return result


@pytest.mark.parametrize(
    ("a", "b"),
    [((30, 1000), (45, 1000)), ((10, 200), (10, 200)), ((0, 50), (3, 50)), ((120, 4000), (95, 2600)),
     ((5, 40), (1, 9))],
)
def test_p2bb_of_two_variants_matches_the_exact_beta_comparison(a: tuple[int, int], b: tuple[int, int]) -> None:
    p_a, p_b = probability_to_be_best([a[0], b[0]], [a[1], b[1]], seed=draw_seed("x", f"{a}{b}"))
    exact = exact_b_beats_a(a[0], a[1], b[0], b[1])
    assert abs(p_b - exact) < 4 * MC_SD, (p_b, exact)
    assert p_a + p_b == pytest.approx(1.0)


def test_p2bb_of_three_variants_matches_numerical_integration() -> None:
    params = [(40, 1000), (52, 1000), (47, 900)]
    simulated = probability_to_be_best([c for c, _ in params], [n for _, n in params], seed=draw_seed("three"))
    integrated = integrated_best(params)
    assert sum(integrated) == pytest.approx(1.0, abs=1e-3)
    for s, i in zip(simulated, integrated, strict=True):
        assert abs(s - i) < 4 * MC_SD, (simulated, integrated)


def test_p2bb_is_reproducible_with_the_same_seed() -> None:
    args = ([30, 41, 35], [1000, 1000, 1000])
    assert probability_to_be_best(*args, seed=7) == probability_to_be_best(*args, seed=7)
    assert draw_seed("exp-uid", "event-uid") == draw_seed("exp-uid", "event-uid")
    assert draw_seed("exp-uid", "event-uid") != draw_seed("exp-uid", "other-event")


def test_p2bb_of_one_or_no_variant() -> None:
    assert probability_to_be_best([3], [10], seed=1) == [1.0]
    assert probability_to_be_best([], [], seed=1) == []


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [(0, 10, 0.0, 0.277533), (5, 10, 0.236593, 0.763407), (10, 10, 0.722467, 1.0), (30, 1000, 0.021094, 0.042503)],
)
def test_wilson_interval_known_values(successes: int, trials: int, low: float, high: float) -> None:
    interval = wilson_interval(successes, trials)
    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=1e-6)
    assert interval[1] == pytest.approx(high, abs=1e-6)


@pytest.mark.parametrize(("successes", "trials"), [(1, 7), (30, 1000), (480, 500), (0, 3)])
def test_wilson_bounds_are_where_the_score_test_is_exactly_significant(successes: int, trials: int) -> None:
    # Independent definition: the bounds p solve (p̂ - p)² = z² p (1 - p) / n.
    z = 1.959963984540054
    interval = wilson_interval(successes, trials)
    assert interval is not None
    p_hat = successes / trials
    for p in interval:
        if 0.0 < p < 1.0:
            assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / trials, rel=1e-9, abs=1e-15)
    assert wilson_interval(0, 0) is None


@pytest.mark.parametrize("x", [0.1, 1.0, 3.84, 10.0, 25.0, 80.0])
def test_chi_square_survival_matches_closed_forms(x: float) -> None:
    assert chi_square_survival(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9, abs=1e-300)
    assert chi_square_survival(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9)
    assert chi_square_survival(x, 4) == pytest.approx(math.exp(-x / 2) * (1 + x / 2), rel=1e-9)
    assert chi_square_survival(x, 6) == pytest.approx(math.exp(-x / 2) * (1 + x / 2 + x * x / 8), rel=1e-9)


def test_chi_square_survival_textbook_critical_values() -> None:
    assert chi_square_survival(3.841459, 1) == pytest.approx(0.05, rel=1e-5)
    assert chi_square_survival(10.827566, 1) == pytest.approx(0.001, rel=1e-5)
    assert chi_square_survival(16.266236, 3) == pytest.approx(0.001, rel=1e-5)
    assert chi_square_survival(0.0, 3) == 1.0


def test_srm_flags_a_skewed_split_and_not_a_fair_one() -> None:
    skewed = sample_ratio_mismatch([5500, 4500], [5000, 5000])
    assert skewed.checked and skewed.mismatch
    assert skewed.chi_square == pytest.approx(100.0)
    assert skewed.p_value == pytest.approx(math.erfc(math.sqrt(50.0)), rel=1e-9)
    fair = sample_ratio_mismatch([5020, 4980], [5000, 5000])
    assert fair.checked and not fair.mismatch and fair.p_value is not None and fair.p_value > 0.5
    uneven = sample_ratio_mismatch([6000, 3000, 1000], [6000, 3000, 1000])  # custom split, matched exactly
    assert uneven.checked and not uneven.mismatch and uneven.p_value == pytest.approx(1.0)
    lost = sample_ratio_mismatch([6000, 2300], [6000, 4000])  # a variant losing impressions
    assert lost.mismatch and lost.p_value is not None and lost.p_value < 0.001


def test_srm_edge_cases() -> None:
    assert not sample_ratio_mismatch([3, 1], [5000, 5000]).checked  # expected counts under 5
    assert not sample_ratio_mismatch([0, 0], [5000, 5000]).checked
    assert not sample_ratio_mismatch([100], [10000]).checked
    zero = sample_ratio_mismatch([500, 500, 12], [5000, 5000, 0])  # traffic to a variant allocated none
    assert zero.mismatch and zero.p_value == 0.0
    at_threshold = sample_ratio_mismatch([5000 + 165, 5000 - 165], [1, 1])  # chi² = 10.89: p just under 0.001
    assert at_threshold.mismatch
    assert not sample_ratio_mismatch([5000 + 160, 5000 - 160], [1, 1]).mismatch  # chi² = 10.24: p > 0.001
