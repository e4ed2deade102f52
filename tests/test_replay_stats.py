"""The chi-square survival function (no SciPy): against closed forms and published critical values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.replay.stats import chi_square_goodness_of_fit, chi_square_sf, regularized_upper_gamma

# (statistic, degrees of freedom, p): critical values from standard chi-square tables (NIST/SEMATECH handbook).
CRITICAL_VALUES = [
    (3.841458820694124, 1, 0.05),
    (6.634896601021214, 1, 0.01),
    (10.827566170662733, 1, 0.001),
    (5.991464547107979, 2, 0.05),
    (13.815510557964274, 2, 0.001),
    (7.814727903251178, 3, 0.05),
    (11.070497693516351, 5, 0.05),
    (15.08627246938899, 5, 0.01),
    (18.307038053275146, 10, 0.05),
    (23.209251158954356, 10, 0.01),
    (31.410432844230918, 20, 0.05),
    (124.34211340400407, 100, 0.05),
    (0.10258658877510106, 2, 0.95),
    (0.35184631774927144, 3, 0.95),
]


@pytest.mark.parametrize(("statistic", "dof", "p"), CRITICAL_VALUES)
def test_chi_square_sf_matches_published_critical_values(statistic: float, dof: int, p: float) -> None:
    assert chi_square_sf(statistic, dof) == pytest.approx(p, rel=1e-9)


@given(st.floats(min_value=1e-6, max_value=400.0))
def test_one_degree_of_freedom_is_erfc(x: float) -> None:
    assert chi_square_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9, abs=1e-300)


@given(st.floats(min_value=1e-6, max_value=600.0), st.integers(min_value=1, max_value=30))
def test_even_degrees_of_freedom_match_the_poisson_sum(x: float, half: int) -> None:
    # For k = 2m: Q(m, x/2) = exp(-x/2) * sum_{i<m} (x/2)^i / i!
    y = x / 2
    expected = math.exp(-y) * sum(y**i / math.factorial(i) for i in range(half))
    assert chi_square_sf(x, 2 * half) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_edges() -> None:
    assert chi_square_sf(0.0, 3) == 1.0
    assert chi_square_sf(-1.0, 3) == 1.0
    assert chi_square_sf(1e6, 3) == 0.0
    assert regularized_upper_gamma(2.5, 0.0) == 1.0
    with pytest.raises(ValueError):
        chi_square_sf(1.0, 0)
    with pytest.raises(ValueError):
        regularized_upper_gamma(0.0, 1.0)


def test_goodness_of_fit_of_a_fair_and_a_skewed_split() -> None:
    fair = chi_square_goodness_of_fit([5010, 4990], [5000, 5000])
    assert fair is not None and fair.p_value > 0.5 and fair.reliable
    skewed = chi_square_goodness_of_fit([5300, 4700], [5000, 5000])
    assert skewed is not None
    assert skewed.statistic == pytest.approx(36.0)
    assert skewed.p_value == pytest.approx(math.erfc(math.sqrt(18.0)), rel=1e-9)
    # Zero-weight variants are left out; one category left is untestable.
    assert chi_square_goodness_of_fit([10, 0], [10000, 0]) is None
    assert chi_square_goodness_of_fit([0, 0], [5000, 5000]) is None
    small = chi_square_goodness_of_fit([2, 1], [5000, 5000])
    assert small is not None and not small.reliable
