"""SPEC §4.6 "hash v1": the formula bit for bit, stability, and the split over 100,000 users."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.engine import VisitorContext
from edgeproxy.engine.bucketing import bucket, cumulative, pick
from edgeproxy.files.snapshot_file import load_snapshot

CHECKOUT_TEST = "9127deaef7ca31b39d6d7d42"  # example experience 2: CUSTOM_PERCENTAGE 50/30/20
SHIPPING_TEST = "3c6e9ed6be6141f55fe3ede5"  # example experience 3: EQUALLY_SPLIT x3, targeted to US/CA


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """Independent MurmurHash3 x86_32 (Austin Appleby's reference), to check the engine's mmh3 use."""
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed & 0xFFFFFFFF
    length = len(data)
    rounded = length - (length % 4)
    for i in range(0, rounded, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * c1) & 0xFFFFFFFF
        k = ((k << 15) | (k >> 17)) & 0xFFFFFFFF
        k = (k * c2) & 0xFFFFFFFF
        h ^= k
        h = ((h << 13) | (h >> 19)) & 0xFFFFFFFF
        h = (h * 5 + 0xE6546B64) & 0xFFFFFFFF
    tail = data[rounded:]
    k = 0
    if len(tail) >= 3:
        k ^= tail[2] << 16
    if len(tail) >= 2:
        k ^= tail[1] << 8
    if len(tail) >= 1:
        k ^= tail[0]
        k = (k * c1) & 0xFFFFFFFF
        k = ((k << 15) | (k >> 17)) & 0xFFFFFFFF
        k = (k * c2) & 0xFFFFFFFF
        h ^= k
    h ^= length
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def reference_bucket(experience_uid: str, user_uid: str) -> int:
    return (murmur3_x86_32(f"{experience_uid}:{user_uid}".encode()) * 10000) >> 32


def test_murmur_reference_matches_published_vectors() -> None:
    # Vectors from the MurmurHash3 test suite (x86_32, seed 0).
    assert murmur3_x86_32(b"") == 0
    assert murmur3_x86_32(b"hello") == 0x248BFA47
    assert murmur3_x86_32(b"The quick brown fox jumps over the lazy dog") == 0x2E4FF723


@settings(max_examples=500)
@given(st.text(min_size=0, max_size=40), st.text(min_size=0, max_size=60))
def test_bucket_equals_the_spec_formula_bit_for_bit(experience_uid: str, user_uid: str) -> None:
    value = bucket(experience_uid, user_uid)
    assert value == reference_bucket(experience_uid, user_uid)
    assert 0 <= value < 10000


def test_known_buckets_are_frozen() -> None:
    # Pinned so a dependency upgrade or refactor can never silently re-bucket running tests.
    assert bucket(CHECKOUT_TEST, "v01-london-newcomer") == 1762
    assert bucket(CHECKOUT_TEST, "v04-nyc-gold-vip") == 5821
    assert bucket(SHIPPING_TEST, "v02-us-iphone-bf-week") == 9732


@given(st.lists(st.integers(min_value=0, max_value=4000), min_size=1, max_size=8), st.integers(0, 9999))
def test_pick_returns_first_variant_whose_cumulative_weight_exceeds_the_bucket(weights: list[int], b: int) -> None:
    sums = cumulative(weights)
    index = pick(sums, b)
    if b >= sums[-1]:
        assert index is None
    else:
        assert index is not None
        assert sums[index] > b
        assert index == 0 or sums[index - 1] <= b


def _split(rules: Path, experience_short_uid: str, users: int, **ctx: object) -> Counter[str | None]:
    snapshot = load_snapshot(rules)
    counts: Counter[str | None] = Counter()
    for n in range(users):
        context = VisitorContext(user_uid=str(uuid.UUID(int=n * 7919 + 13)), now=1_790_000_000.0, **ctx)  # type: ignore[arg-type]
        counts[snapshot.decide(context).active_variants[experience_short_uid]] += 1
    return counts


def test_custom_split_of_100k_users_is_within_one_point_of_the_weights(example_rules: Path) -> None:
    counts = _split(example_rules, "2", 100_000)
    for variant, share in (("0", 0.50), ("1", 0.30), ("2", 0.20)):
        assert abs(counts[variant] / 100_000 - share) < 0.01, counts
    assert counts[None] == 0


def test_equal_split_of_100k_targeted_users_is_within_one_point_of_a_third(example_rules: Path) -> None:
    from edgeproxy.engine import Geo

    counts = _split(example_rules, "3", 100_000, geo=Geo(country="US"))
    for variant in ("0", "1", "2"):
        assert abs(counts[variant] / 100_000 - 1 / 3) < 0.01, counts


def test_same_user_always_gets_the_same_variant_across_snapshot_loads(example_rules: Path, tmp_path: Path) -> None:
    from edgeproxy.files.snapshot_file import write_snapshot_file

    first = load_snapshot(example_rules)
    write_snapshot_file(first, tmp_path / "s.msgpack")
    second = load_snapshot(tmp_path / "s.msgpack")
    for n in range(2000):
        uid = f"user-{n}"
        a = first.decide(VisitorContext(user_uid=uid, now=0.0)).variant_param
        b = second.decide(VisitorContext(user_uid=uid, now=0.0)).variant_param
        assert a == b
        assert first.decide(VisitorContext(user_uid=uid, now=0.0)).variant_param == a
