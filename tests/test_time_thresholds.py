"""`CompiledSnapshot.time_thresholds`: the instants at which the clock can change a decision of the project, which
the data plane's remembered hits are checked against (executor.HitAnswer.again)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

from edgeproxy.engine.context import VisitorContext
from edgeproxy.engine.decide import compile_project
from edgeproxy.engine.model import parse_iso_time
from edgeproxy.files.snapshot_file import load_snapshot

ROOT = Path(__file__).resolve().parents[1]
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


def instants(*texts: str) -> tuple[float, ...]:
    return tuple(parse_iso_time(text).timestamp() for text in texts)


def test_the_example_rules_change_their_decisions_only_at_their_thresholds() -> None:
    snapshot = load_snapshot(ROOT / "rules")
    thresholds = snapshot.time_thresholds
    # Black Friday week (27 Nov to 1 Dec), the campaign link (before 1 Dec), the winter season (1 Dec to 1 Mar).
    assert thresholds == instants("2026-11-27T00:00:00Z", "2026-12-01T00:00:00Z", "2027-03-01T00:00:00Z")

    def decided(now: float) -> tuple[object, ...]:
        """The decisions of two visitors: a plain one, and one from the Black Friday campaign link."""
        return tuple(
            snapshot.decide(VisitorContext(user_uid="time-visitor", now=now, user_agent=FIREFOX, page_url=url)).entries
            for url in ("https://shop.example/", "https://shop.example/?utm_campaign=bf")
        )

    # Between two thresholds the decisions stay; across the first two they change. (The winter season's end changes
    # only a DRAFT experience's decision, which previews see: the thresholds are those of every rule the project
    # names, a superset of what the live experiences read.)
    assert thresholds is not None
    edges = (thresholds[0] - 86400, *thresholds, thresholds[-1] + 86400)
    for before, after in itertools.pairwise(edges):
        inside = [before + (after - before) * share for share in (0.001, 0.5, 0.999)]
        assert len({decided(now) for now in inside}) == 1, (before, after)
    for threshold in thresholds[:2]:
        assert decided(threshold - 1) != decided(threshold + 1), threshold


def test_a_project_without_time_rules_has_no_thresholds() -> None:
    project = load_snapshot(ROOT / "rules").project
    untimed = replace(
        project,
        audiences=tuple(a for a in project.audiences if "DATE_AND_TIME" not in repr(a.definition)),
        experiences=(),
        drafts=(),
    )
    assert compile_project(untimed, "untimed").time_thresholds == ()
