"""Pearson's chi-square goodness-of-fit test, with its survival function computed here (SciPy is not a dependency).

The chi-square survival function with k degrees of freedom is the regularized upper incomplete gamma function
Q(k/2, x/2). It is evaluated the classic way (Numerical Recipes §6.2): the series for P when x < a + 1, Lentz's
continued fraction for Q otherwise, both in log space with `math.lgamma`, accurate to ~1e-14 relative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

_EPSILON = 1e-15
_TINY = 1e-300
_MAX_ITERATIONS = 10_000


def _lower_series(a: float, x: float) -> float:
    """P(a, x) by its power series; converges quickly for x < a + 1."""
    term = 1.0 / a
    total = term
    n = a
    for _ in range(_MAX_ITERATIONS):
        n += 1.0
        term *= x / n
        total += term
        if abs(term) < abs(total) * _EPSILON:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _upper_fraction(a: float, x: float) -> float:
    """Q(a, x) by its continued fraction (modified Lentz); converges quickly for x >= a + 1."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPSILON:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def regularized_upper_gamma(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a), for a > 0 and x >= 0."""
    if a <= 0:
        raise ValueError(f"a must be positive, got {a}")
    if x < 0:
        raise ValueError(f"x must be non-negative, got {x}")
    if x == 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _lower_series(a, x))
    return _upper_fraction(a, x)


def chi_square_sf(statistic: float, degrees_of_freedom: int) -> float:
    """P(X >= statistic) for X ~ chi-square(degrees_of_freedom): the p-value of a chi-square statistic."""
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {degrees_of_freedom}")
    if statistic <= 0:
        return 1.0
    return regularized_upper_gamma(degrees_of_freedom / 2.0, statistic / 2.0)


@dataclass(frozen=True, slots=True)
class ChiSquareResult:
    statistic: float
    degrees_of_freedom: int
    p_value: float
    expected: tuple[float, ...]
    # Pearson's approximation wants every expected count >= 5; below that the p-value is only indicative.
    reliable: bool


def chi_square_goodness_of_fit(observed: Sequence[int], weights: Sequence[float]) -> ChiSquareResult | None:
    """Observed counts against expected proportions `weights` (any positive scale). None when untestable
    (fewer than two categories with weight, or no observations)."""
    if len(observed) != len(weights):
        raise ValueError("observed and weights must have the same length")
    pairs = [(o, w) for o, w in zip(observed, weights, strict=True) if w > 0]
    total_weight = sum(w for _, w in pairs)
    n = sum(o for o, _ in pairs)
    if len(pairs) < 2 or n == 0 or total_weight <= 0:
        return None
    expected = tuple(n * w / total_weight for _, w in pairs)
    statistic = sum((o - e) ** 2 / e for (o, _), e in zip(pairs, expected, strict=True))
    dof = len(pairs) - 1
    return ChiSquareResult(
        statistic=statistic,
        degrees_of_freedom=dof,
        p_value=chi_square_sf(statistic, dof),
        expected=expected,
        reliable=min(expected) >= 5.0,
    )
