"""Two snapshots on the same traffic: which users moved from which variant to which, per experience.

Every request is decided under both snapshots (`--rules` is "before", `--against` is "after"). A move is a change
of an experience's variant for one request, counted in requests and distinct users, with the first few requests
as samples and, for the first few moves, the explanation of both decisions. Experiences are matched by shortUid
(what aliases and the variant param carry); an experience missing from one side counts as "not in experience".

Re-bucketing is flagged on its own: a user whose variant of an A/B test changes while that test is running
(ACTIVE) under both snapshots, to another variant or out of the test. Changing a running test's weights or
variants moves users between arms, which biases its results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeproxy.engine.context import VisitorContext
from edgeproxy.engine.decide import CompiledSnapshot, Manifest
from edgeproxy.engine.explain import explain, render_explanation

DEFAULT_SAMPLES_PER_MOVE = 3
DEFAULT_EXPLAINED_MOVES = 5


@dataclass
class MoveStats:
    experience: str
    before: str | None
    after: str | None
    rebucketing: bool
    requests: int = 0
    users: set[int] = field(default_factory=set)
    samples: list[dict[str, Any]] = field(default_factory=list)


def _running_ab(snapshot: CompiledSnapshot) -> dict[str, str]:
    return {
        ce.short_uid: ce.experience.uid
        for ce in snapshot.experiences
        if ce.experience.type == "AB_TEST" and ce.experience.status == "ACTIVE"
    }


def _pairs(manifest: Manifest) -> list[tuple[str, str | None]]:
    return [(short_uid, None if v is None else v.short_uid) for short_uid, v in manifest.entries]


def _only_experience(trace: dict[str, Any], short_uid: str) -> dict[str, Any]:
    return {
        **trace,
        "experiences": [e for e in trace["experiences"] if e["shortUid"] == short_uid],
        "filteredOutByTags": [e for e in trace["filteredOutByTags"] if e["shortUid"] == short_uid],
        "omitted": [e for e in trace["omitted"] if e["shortUid"] == short_uid],
    }


class SnapshotDiff:
    def __init__(
        self,
        before: CompiledSnapshot,
        after: CompiledSnapshot,
        *,
        samples_per_move: int = DEFAULT_SAMPLES_PER_MOVE,
        explained_moves: int = DEFAULT_EXPLAINED_MOVES,
    ) -> None:
        self.before = before
        self.after = after
        self.samples_per_move = samples_per_move
        self.explained_moves = explained_moves
        running_before = _running_ab(before)
        running_after = _running_ab(after)
        # Same shortUid, same experience, running on both sides.
        self.running_ab = {su for su, uid in running_before.items() if running_after.get(su) == uid}
        self.moves: dict[tuple[str, str | None, str | None], MoveStats] = {}
        self.requests = 0
        self.changed_requests = 0
        self.changed_users: set[int] = set()
        self.explanations: list[dict[str, Any]] = []

    def observe(
        self,
        manifest_before: Manifest,
        manifest_after: Manifest,
        user: int,
        record_where: tuple[str, int],
        description: dict[str, Any],
        ctx: VisitorContext,
        tags: Sequence[str] | None,
    ) -> None:
        self.requests += 1
        before = _pairs(manifest_before)
        after = _pairs(manifest_after)
        if before == after:
            return
        self.changed_requests += 1
        self.changed_users.add(user)
        old = dict(before)
        new = dict(after)
        for short_uid in dict.fromkeys([*old, *new]):
            was = old.get(short_uid)
            now = new.get(short_uid)
            if was == now:
                continue
            key = (short_uid, was, now)
            move = self.moves.get(key)
            if move is None:
                move = self.moves[key] = MoveStats(
                    short_uid, was, now, rebucketing=short_uid in self.running_ab and was is not None
                )
            move.requests += 1
            move.users.add(user)
            if len(move.samples) < self.samples_per_move:
                move.samples.append(
                    {"source": record_where[0], "position": record_where[1], "userUid": manifest_before.user_uid,
                     "request": description}
                )  # fmt: skip
            if len(self.explanations) < self.explained_moves and not any(
                e["experience"] == short_uid and e["before"] == was and e["after"] == now for e in self.explanations
            ):
                self._explain(short_uid, was, now, record_where, manifest_before.user_uid, ctx, tags)

    def _explain(
        self,
        short_uid: str,
        was: str | None,
        now: str | None,
        record_where: tuple[str, int],
        user_uid: str,
        ctx: VisitorContext,
        tags: Sequence[str] | None,
    ) -> None:
        before = _only_experience(explain(self.before, ctx, tags), short_uid)
        after = _only_experience(explain(self.after, ctx, tags), short_uid)
        self.explanations.append(
            {
                "experience": short_uid,
                "before": was,
                "after": now,
                "source": record_where[0],
                "position": record_where[1],
                "userUid": user_uid,
                "explanationBefore": before,
                "explanationAfter": after,
                "text": "before (--rules):\n"
                + render_explanation(before)
                + "\nafter (--against):\n"
                + render_explanation(after),
            }
        )

    # -- results ---------------------------------------------------------------------------------------------------

    def rebucketed(self) -> list[MoveStats]:
        return [m for m in self.moves.values() if m.rebucketing]

    def rebucketed_users(self) -> int:
        users: set[int] = set()
        for move in self.rebucketed():
            users |= move.users
        return len(users)

    def experience_changes(self) -> dict[str, Any]:
        def live(snapshot: CompiledSnapshot) -> dict[str, str]:
            return {ce.short_uid: ce.experience.name for ce in snapshot.experiences}

        old, new = live(self.before), live(self.after)
        return {
            "added": [{"shortUid": su, "name": name} for su, name in new.items() if su not in old],
            "removed": [{"shortUid": su, "name": name} for su, name in old.items() if su not in new],
        }

    def to_dict(self) -> dict[str, Any]:
        ordered = sorted(self.moves.values(), key=lambda m: (m.experience, -len(m.users), str(m.before), str(m.after)))
        return {
            "beforeSnapshot": self.before.version,
            "afterSnapshot": self.after.version,
            "requests": self.requests,
            "changedRequests": self.changed_requests,
            "changedUsers": len(self.changed_users),
            "experiences": self.experience_changes(),
            "rebucketing": {
                "users": self.rebucketed_users(),
                "runningAbTests": sorted(self.running_ab),
                "moves": [
                    {
                        "experience": m.experience,
                        "from": m.before,
                        "to": m.after,
                        "requests": m.requests,
                        "users": len(m.users),
                    }
                    for m in ordered
                    if m.rebucketing
                ],
            },
            "moves": [
                {
                    "experience": m.experience,
                    "from": m.before,
                    "to": m.after,
                    "requests": m.requests,
                    "users": len(m.users),
                    "rebucketing": m.rebucketing,
                    "samples": m.samples,
                }
                for m in ordered
            ],
            "explanations": [{k: v for k, v in e.items() if k != "text"} for e in self.explanations],
        }
