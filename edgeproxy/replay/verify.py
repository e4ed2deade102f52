"""`--from-log`: do today's engine and rules make the decisions the traffic recorded?

Recorded decisions come from edgeproxy's decision log (`serve --decision-log`, each line's `decision`: userUid,
experiences, activeVariants, aliases, variantParam) or, for a HAR recorded through edgeproxy, from the
`cs-personalize-manifest` cookie (and the `cs-personalize-user-uid` cookie) the proxy set on each response. Every
field the record has is compared; the first mismatches are kept with the explanation of today's decision.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from edgeproxy.engine.context import VisitorContext
from edgeproxy.engine.decide import CompiledSnapshot, Forcing, Manifest
from edgeproxy.engine.explain import explain, render_explanation
from edgeproxy.replay.readers import Recorded, TrafficRecord

DEFAULT_KEPT_MISMATCHES = 10


def _pairs(manifest: Manifest) -> tuple[tuple[str, str | None], ...]:
    return tuple((short_uid, None if v is None else v.short_uid) for short_uid, v in manifest.entries)


def _normalized(experiences: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, str | None], ...]:
    return tuple((str(su), None if v is None else str(v)) for su, v in experiences)


def compare(recorded: Recorded, manifest: Manifest) -> list[dict[str, Any]]:
    """The fields on which the replayed manifest differs from the recorded decision."""
    differences: list[dict[str, Any]] = []
    if recorded.user_uid is not None and recorded.user_uid != manifest.user_uid:
        differences.append({"field": "userUid", "recorded": recorded.user_uid, "replayed": manifest.user_uid})
    if recorded.experiences is not None:
        was = _normalized(recorded.experiences)
        now = _pairs(manifest)
        if was != now:
            old, new = dict(was), dict(now)
            changed = {
                su: {"recorded": old.get(su, "(absent)"), "replayed": new.get(su, "(absent)")}
                for su in dict.fromkeys([*old, *new])
                if old.get(su, "(absent)") != new.get(su, "(absent)")
            }
            entry: dict[str, Any] = {"field": "experiences", "variants": changed}
            if not changed:
                entry["order"] = {"recorded": [su for su, _ in was], "replayed": [su for su, _ in now]}
            differences.append(entry)
    if recorded.variant_param is not None and recorded.variant_param != manifest.variant_param:
        differences.append(
            {"field": "variantParam", "recorded": recorded.variant_param, "replayed": manifest.variant_param}
        )
    if recorded.aliases is not None and list(recorded.aliases) != manifest.aliases:
        differences.append({"field": "aliases", "recorded": list(recorded.aliases), "replayed": manifest.aliases})
    return differences


class RecordedCheck:
    def __init__(self, snapshot: CompiledSnapshot, kept: int = DEFAULT_KEPT_MISMATCHES) -> None:
        self.snapshot = snapshot
        self.kept = kept
        self.checked = 0
        self.matched = 0
        self.unrecorded = 0
        self.mismatched = 0
        self.mismatches: list[dict[str, Any]] = []
        self.recorded_snapshots: Counter[str] = Counter()
        self.by_source: Counter[str] = Counter()

    def observe(
        self,
        record: TrafficRecord,
        manifest: Manifest,
        ctx: VisitorContext,
        tags: Sequence[str] | None,
        forcing: Forcing | None = None,
    ) -> None:
        """`forcing`: the record is a preview, `manifest` its forced decision (explained as such)."""
        recorded = record.recorded
        if recorded is None:
            self.unrecorded += 1
            return
        self.checked += 1
        if recorded.snapshot is not None:
            self.recorded_snapshots[recorded.snapshot] += 1
        differences = compare(recorded, manifest)
        if not differences:
            self.matched += 1
            return
        self.mismatched += 1
        self.by_source[record.source] += 1
        if len(self.mismatches) < self.kept:
            trace = explain(self.snapshot, ctx, tags, forcing)
            self.mismatches.append(
                {
                    "source": record.source,
                    "position": record.position,
                    "recordedIn": recorded.where,
                    "recordedSnapshot": recorded.snapshot,
                    "differences": differences,
                    "request": record.description,
                    "replayed": manifest.to_dict(),
                    "explanation": trace,
                    "text": render_explanation(trace),
                }
            )

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 and self.checked > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot.version,
            "checked": self.checked,
            "matched": self.matched,
            "mismatched": self.mismatched,
            "withoutRecordedDecision": self.unrecorded,
            "recordedSnapshots": dict(self.recorded_snapshots),
            "ok": self.ok,
            "mismatches": [{k: v for k, v in m.items() if k != "text"} for m in self.mismatches],
        }
