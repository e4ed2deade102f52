"""A/B bucketing, "hash v1" (docs/contract.md §4.6, ours): stable across processes, instances and releases."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import mmh3

BUCKETS = 10_000
HASH_VERSION = "v1"


def bucket(experience_uid: str, user_uid: str) -> int:
    """`(murmur3_x86_32(f"{experienceUid}:{userUid}", seed=0) * 10000) >> 32`, in [0, 10000)."""
    return (mmh3.hash(f"{experience_uid}:{user_uid}", 0, signed=False) * BUCKETS) >> 32


def cumulative(weights: Sequence[int]) -> tuple[int, ...]:
    total = 0
    sums = []
    for weight in weights:
        total += weight
        sums.append(total)
    return tuple(sums)


def pick(cumulative_weights: Sequence[int], bucket_value: int) -> int | None:
    """Index of the first variant whose cumulative weight exceeds the bucket; None past the total."""
    index = bisect_right(cumulative_weights, bucket_value)
    return index if index < len(cumulative_weights) else None
