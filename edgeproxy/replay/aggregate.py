"""Who got what: per experience and variant, requests and distinct users; the A/B split against its weights.

Counting is the hot path of a replay, so it works on dense integers: every user uid gets an index once
(`UserIndex`), every (experience, variant) pair of a snapshot a slot, and a slot keeps a request counter and a
bitmap of the users it saw (one bit per user, so a million users cost 125 kB per variant). The bitmaps are
interleaved, byte by byte (`bits[(user >> 3) * slots + slot]`), so that the slots one request sets share a cache
line. Memory grows with the number of distinct users, never with the size of the traffic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edgeproxy.engine.decide import CompiledSnapshot, CompiledVariant, Manifest
from edgeproxy.replay.stats import ChiSquareResult, chi_square_goodness_of_fit

# A split whose p-value is below this is reported as a sample ratio mismatch (SRM); 0.001 is the usual bar
# for SRM checks, which run on every test and must rarely cry wolf.
DEFAULT_SRM_ALPHA = 0.001
SLOTS_LIMIT = 4096  # distinct variant sets whose slots are kept


class UserIndex:
    """uid -> a dense index, assigned on first sight."""

    __slots__ = ("ids",)

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def index(self, uid: str) -> int:
        ids = self.ids
        found = ids.get(uid)
        if found is None:
            found = ids[uid] = len(ids)
        return found

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class VariantCount:
    short_uid: str | None  # None: in the manifest with no variant (not in the experience)
    name: str
    requests: int
    users: int
    weight: int | None  # A/B basis points


class Distribution:
    """Per (experience, variant) request counts and distinct-user bitmaps for one snapshot."""

    def __init__(self, snapshot: CompiledSnapshot) -> None:
        self.snapshot = snapshot
        self._slot_of: dict[int, int] = {}
        self._none_slot: dict[str, int] = {}
        self.layout: list[tuple[int, list[int], int]] = []  # (experience index, variant slots, none slot)
        slot = 0
        for position, ce in enumerate(snapshot.experiences):
            variant_slots = []
            for variant in ce.variants:
                self._slot_of[id(variant)] = slot
                variant_slots.append(slot)
                slot += 1
            self._none_slot[ce.short_uid] = slot
            self.layout.append((position, variant_slots, slot))
            slot += 1
        self.counts = [0] * slot
        self.stride = slot
        self.capacity = 1024  # users / 8 the bits hold (`reserve`)
        self.bits = bytearray(self.capacity * self.stride)
        self.requests = 0
        self._slots_of: dict[tuple[tuple[str, CompiledVariant | None], ...], tuple[int, ...]] = {}

    def reserve(self, user: int) -> None:
        """Make room for user number `user`: afterwards `bits[(user >> 3) * stride + slot]` exists for every slot."""
        if user >> 3 >= self.capacity:
            capacity = max((user >> 3) + 1, self.capacity + (self.capacity >> 1))
            self.bits.extend(bytes((capacity - self.capacity) * self.stride))
            self.capacity = capacity

    def slot(self, experience_short_uid: str, variant: CompiledVariant | None) -> int:
        """The counter of one manifest entry."""
        return self._none_slot[experience_short_uid] if variant is None else self._slot_of[id(variant)]

    def observe(self, manifest: Manifest, user: int) -> None:
        entries = manifest.entries
        slots = self._slots_of.get(entries)
        if slots is None:  # a snapshot has few distinct variant sets: each is mapped to its slots once
            slots = tuple([self.slot(short_uid, variant) for short_uid, variant in entries])
            if len(self._slots_of) >= SLOTS_LIMIT:
                self._slots_of.clear()
            self._slots_of[entries] = slots
        self.count(slots, user)

    def count(self, slots: Iterable[int], user: int) -> None:
        """One request that got the entries of `slots`, from user number `user`."""
        self.requests += 1
        if user >> 3 >= self.capacity:
            self.reserve(user)
        counts = self.counts
        bits = self.bits
        base = (user >> 3) * self.stride
        mask = 1 << (user & 7)
        for slot in slots:
            counts[slot] += 1
            bits[base + slot] |= mask

    def users_bitmap(self, slot: int) -> int:
        """The users of one slot, as an integer whose bit n is user number n."""
        return int.from_bytes(self.bits[slot :: self.stride], "little")

    # -- results ---------------------------------------------------------------------------------------------------

    def experience_results(self, srm_alpha: float = DEFAULT_SRM_ALPHA) -> list[ExperienceResult]:
        results = []
        for position, variant_slots, none_slot in self.layout:
            ce = self.snapshot.experiences[position]
            experience = ce.experience
            is_ab = experience.type == "AB_TEST"
            variants = [
                VariantCount(
                    short_uid=v.short_uid,
                    name=v.name,
                    requests=self.counts[s],
                    users=self.users_bitmap(s).bit_count(),
                    weight=v.weight if is_ab else None,
                )
                for v, s in zip(experience.variants, variant_slots, strict=True)
            ]
            nobody = VariantCount(None, "(not in experience)", self.counts[none_slot],
                                  self.users_bitmap(none_slot).bit_count(), None)  # fmt: skip
            union = 0
            for s in (*variant_slots, none_slot):
                union |= self.users_bitmap(s)
            split = None
            if is_ab and experience.status == "ACTIVE":
                split = chi_square_goodness_of_fit([v.users for v in variants], [v.weight or 0 for v in variants])
            results.append(
                ExperienceResult(
                    short_uid=experience.short_uid,
                    uid=experience.uid,
                    name=experience.name,
                    type=experience.type,
                    status=experience.status,
                    requests=sum(v.requests for v in variants) + nobody.requests,
                    users=union.bit_count(),
                    variants=tuple(variants),
                    not_in_experience=nobody,
                    split=split,
                    srm_alpha=srm_alpha,
                )
            )
        return results


@dataclass(frozen=True, slots=True)
class ExperienceResult:
    short_uid: str
    uid: str
    name: str
    type: str
    status: str
    requests: int  # requests that decided this experience (tags may leave it out)
    users: int
    variants: tuple[VariantCount, ...]
    not_in_experience: VariantCount
    split: ChiSquareResult | None  # running A/B tests: users per variant vs the configured weights
    srm_alpha: float

    @property
    def activated(self) -> bool:
        return any(v.requests for v in self.variants)

    @property
    def split_mismatch(self) -> bool:
        return self.split is not None and self.split.reliable and self.split.p_value < self.srm_alpha

    def to_dict(self) -> dict[str, Any]:
        decided = self.requests or 1
        data: dict[str, Any] = {
            "shortUid": self.short_uid,
            "uid": self.uid,
            "name": self.name,
            "type": self.type,
            "status": self.status,
            "requests": self.requests,
            "users": self.users,
            "activated": self.activated,
            "variants": [
                {
                    "shortUid": v.short_uid,
                    "name": v.name,
                    "requests": v.requests,
                    "users": v.users,
                    "requestShare": round(v.requests / decided, 6),
                    **({"weightPercent": v.weight / 100} if v.weight is not None else {}),
                }
                for v in self.variants
            ],
            "notInExperience": {"requests": self.not_in_experience.requests, "users": self.not_in_experience.users},
        }
        if self.split is not None:
            data["split"] = {
                "test": "chi-square goodness of fit, distinct users per variant vs configured weights",
                "statistic": round(self.split.statistic, 6),
                "degreesOfFreedom": self.split.degrees_of_freedom,
                "pValue": self.split.p_value,
                "expectedUsers": [round(e, 3) for e in self.split.expected],
                "reliable": self.split.reliable,
                "alpha": self.srm_alpha,
                "mismatch": self.split_mismatch,
            }
        return data
