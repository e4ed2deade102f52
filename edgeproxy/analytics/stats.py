"""The statistics of an A/B report: Wilson intervals, probability to be best, sample-ratio mismatch.

Pure functions on counts; no I/O. docs/contract.md §8 fixes the Beta(1 + conversions, 1 + impressions - conversions)
posterior and the 15,000 Monte Carlo draws; the rest (Wilson 95% interval, chi-square SRM test at p < 0.001,
the seed) is ours and documented in the README.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
DRAWS = 15_000  # docs/contract.md §8
SRM_ALPHA = 0.001


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; None without trials."""
    if trials <= 0:
        return None
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def draw_seed(*parts: str) -> int:
    """A stable 63-bit seed from names (experience uid, metric event uid): the same data gives the same report."""
    digest = hashlib.sha256(":".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def probability_to_be_best(
    conversions: Sequence[int], impressions: Sequence[int], seed: int, draws: int = DRAWS
) -> list[float]:
    """P(variant i has the highest conversion rate), each rate ~ Beta(1 + c, 1 + n - c) (docs/contract.md §8).

    Monte Carlo with `draws` joint draws from a seeded PCG64 generator: reproducible for the same counts and seed.
    """
    k = len(impressions)
    if k == 0:
        return []
    if k == 1:
        return [1.0]
    alpha = np.array([1.0 + c for c in conversions])
    beta = np.array([1.0 + max(0, n - c) for c, n in zip(conversions, impressions, strict=True)])
    rng = np.random.Generator(np.random.PCG64(seed))
    samples = rng.beta(alpha[:, None], beta[:, None], size=(k, draws))
    wins = np.bincount(samples.argmax(axis=0), minlength=k)
    return [float(w) / draws for w in wins]


def chi_square_survival(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof): the regularized upper incomplete gamma Q(dof/2, x/2)."""
    if dof <= 0:
        raise ValueError("degrees of freedom must be positive")
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    return _gamma_q(dof / 2.0, x / 2.0)


def _gamma_q(a: float, x: float) -> float:
    # Numerical Recipes §6.2: the series for P when x < a + 1, else Lentz's continued fraction for Q.
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(1.0, math.exp(log_prefix) * h)


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Chi-square goodness of fit of observed impressions against the configured split."""

    checked: bool
    chi_square: float | None
    dof: int | None
    p_value: float | None
    mismatch: bool
    reason: str  # why not checked, or the verdict in words


def sample_ratio_mismatch(observed: Sequence[int], weights: Sequence[float], alpha: float = SRM_ALPHA) -> SrmResult:
    """Compare observed counts with the shares `weights` (any positive scale; 0 = gets no traffic).

    Not checked with fewer than 2 weighted variants or an expected count under 5 (the chi-square approximation
    needs it). Traffic to a variant whose weight is 0 is a mismatch outright (p = 0).
    """
    total_weight = sum(w for w in weights if w > 0)
    total = sum(observed)
    if total_weight <= 0 or sum(1 for w in weights if w > 0) < 2:
        return SrmResult(False, None, None, None, False, "fewer than two variants with traffic allocated")
    if total == 0:
        return SrmResult(False, None, None, None, False, "no impressions yet")
    if any(n > 0 and w <= 0 for n, w in zip(observed, weights, strict=True)):
        return SrmResult(True, math.inf, None, 0.0, True, "impressions on a variant with no traffic allocated")
    pairs = [(n, total * w / total_weight) for n, w in zip(observed, weights, strict=True) if w > 0]
    smallest = min(e for _, e in pairs)
    if smallest < 5:
        return SrmResult(
            False, None, None, None, False, f"too few impressions (smallest expected count {smallest:.1f} < 5)"
        )
    chi2 = sum((n - e) ** 2 / e for n, e in pairs)
    dof = len(pairs) - 1
    p = chi_square_survival(chi2, dof)
    mismatch = p < alpha
    verdict = (
        f"sample ratio mismatch: p = {p:.2g} < {alpha:g}"
        if mismatch
        else f"split as configured (p = {p:.2g} >= {alpha:g})"
    )
    return SrmResult(True, chi2, dof, p, mismatch, verdict)
