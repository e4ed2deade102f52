"""A Bloom filter: "certainly not added" or "maybe added" for hashable keys, in a bytearray, without I/O.

The SQLite store keeps one of the users that have attribute rows and one of those with a behaviour row, so a
returning visitor with nothing stored is answered `{}` at once instead of with a read (issue 20). A false positive
costs the read it would have cost anyway; a key that was added always answers "maybe".

Positions by double hashing (Kirsch and Mitzenmacher): the key's 64-bit `hash()` split into two halves, h1 + i*h2,
in a table whose size is a power of two (a mask, not a division: the probe is what every request pays).
`hash()` of a str differs between processes (PYTHONHASHSEED) but not within one, and the filter never leaves its
process: it is built from the file at start and kept up to date by the writes it sees.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable


class BloomFilter:
    """Sized for `capacity` keys at `false_positive_rate` or better; past `capacity` the rate grows (`added` says
    how far)."""

    __slots__ = ("_bits", "_hashes", "_mask", "added", "capacity")

    def __init__(self, capacity: int, false_positive_rate: float = 0.01) -> None:
        if capacity < 1 or not 0.0 < false_positive_rate < 1.0:
            raise ValueError(
                f"a Bloom filter needs a capacity >= 1 and 0 < rate < 1: {capacity}, {false_positive_rate}"
            )
        self.capacity = capacity
        wanted = -capacity * math.log(false_positive_rate) / math.log(2) ** 2
        size = 1 << max(6, math.ceil(math.log2(wanted)))  # up to twice the bits asked for: fewer probes suffice
        self._mask = size - 1
        rates = [(expected_false_positive_rate(size, k, capacity), k) for k in range(1, 33)]
        reaching = [k for rate, k in rates if rate <= false_positive_rate]  # the fewest probes that reach the rate
        self._hashes = reaching[0] if reaching else min(rates)[1]  # (a table just the size asked for: the best k)
        self._bits = bytearray(size // 8)
        self.added = 0  # keys whose `add` set a bit: the distinct keys added, less the few that were false positives

    @property
    def size_bytes(self) -> int:
        return len(self._bits)

    @property
    def hashes(self) -> int:
        """Probes per key."""
        return self._hashes

    def add(self, key: Hashable) -> None:
        h = hash(key)
        step = (h >> 32) | 1
        bits, mask, new = self._bits, self._mask, False
        for i in range(self._hashes):
            at = (h + i * step) & mask
            bit = 1 << (at & 7)
            if not bits[at >> 3] & bit:
                bits[at >> 3] |= bit
                new = True
        self.added += new

    def add_all(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self.add(key)

    def __contains__(self, key: Hashable) -> bool:
        """False: `key` was never added. True: it probably was (or is a false positive)."""
        h = hash(key)
        mask, bits = self._mask, self._bits
        at = h & mask
        if not bits[at >> 3] & (1 << (at & 7)):
            return False  # most absent keys stop here, at the first probe
        step = (h >> 32) | 1
        for i in range(1, self._hashes):
            at = (h + i * step) & mask
            if not bits[at >> 3] & (1 << (at & 7)):
                return False
        return True


def expected_false_positive_rate(bits: int, hashes: int, keys: int) -> float:
    """The chance that a key never added answers "maybe", with `keys` added: (1 - e^(-hashes*keys/bits))^hashes."""
    return float((1.0 - math.exp(-hashes * keys / bits)) ** hashes)
