"""The replay report: readable text for a terminal, and the same content as one JSON object (`--json`)."""

from __future__ import annotations

import platform
from typing import Any

from edgeproxy.replay.aggregate import ExperienceResult
from edgeproxy.replay.expectations import ExpectationResult, describe_failure
from edgeproxy.replay.run import ReplayResult

RULE = "─" * 100


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:5.1f}%" if whole else "   - "


def _p(value: float) -> str:
    return f"{value:.3g}" if value >= 1e-4 else f"{value:.2e}"


def report_dict(
    result: ReplayResult | None,
    expectations: list[ExpectationResult] | None,
    *,
    srm_alpha: float,
) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if result is not None:
        experiences = result.distribution.experience_results(srm_alpha)
        data.update(
            {
                "snapshot": result.snapshot.version,
                "rules": result.snapshot.project.source,
                "traffic": [
                    {
                        "source": s.source,
                        "format": s.format,
                        "records": s.records,
                        "skipped": dict(s.skipped),
                        "invalid": s.invalid,
                        "invalidSamples": [{"position": i.position, "message": i.message} for i in s.invalid_samples],
                    }
                    for s in result.sources
                ],
                "requests": result.requests,
                "users": result.users,
                "seconds": round(result.seconds, 3),
                "requestsPerSecond": round(result.requests_per_second),
                "memo": {"hits": result.memo_hits, "misses": result.memo_misses, "bypassed": result.memo_bypassed},
                "experiences": [e.to_dict() for e in experiences],
                "neverActivated": [
                    {"shortUid": e.short_uid, "name": e.name, "status": e.status}
                    for e in experiences
                    if not e.activated
                ],
                "notLive": [
                    {"shortUid": o.short_uid, "name": o.name, "reason": o.reason}
                    for o in result.snapshot.project.omitted
                ],
                "splitMismatches": [e.short_uid for e in experiences if e.split_mismatch],
            }
        )
        if result.behaviour_page_views is not None:
            data["behaviour"] = {"pageViews": result.behaviour_page_views}
        if result.coverage is not None:
            data["coverage"] = result.coverage.to_dict()
        if result.diff is not None and result.against_distribution is not None:
            data["against"] = {
                **result.diff.to_dict(),
                "experiencesAfter": [e.to_dict() for e in result.against_distribution.experience_results(srm_alpha)],
            }
        if result.recorded is not None:
            data["recorded"] = result.recorded.to_dict()
    if expectations is not None:
        data["expectations"] = {
            "total": len(expectations),
            "passed": sum(1 for r in expectations if r.passed),
            "failed": sum(1 for r in expectations if not r.passed),
            "cases": [r.to_dict() for r in expectations],
        }
    data["python"] = platform.python_version()
    return data


def _experience_lines(e: ExperienceResult) -> list[str]:
    head = f"experience {e.short_uid} {e.name!r} [{e.type}, {e.status}]: {e.requests:,} requests, {e.users:,} users"
    lines = [head]
    decided = e.requests
    weights = e.type == "AB_TEST"
    lines.append(
        f"    {'variant':<34} {'requests':>12} {'share':>7} {'users':>10}" + (f" {'weight':>8}" if weights else "")
    )
    for v in (*e.variants, e.not_in_experience):
        label = f"{v.short_uid} {v.name}" if v.short_uid is not None else v.name
        weight = f" {v.weight / 100:7.2f}%" if v.weight is not None else (" " * 9 if weights else "")
        lines.append(f"    {label[:34]:<34} {v.requests:>12,} {_pct(v.requests, decided)} {v.users:>10,}{weight}")
    if e.split is not None:
        verdict = (
            "SAMPLE RATIO MISMATCH"
            if e.split_mismatch
            else ("consistent with the weights" if e.split.reliable else "too few users for a reliable test")
        )
        lines.append(
            f"    split (users vs weights): chi² = {e.split.statistic:.3f}, dof {e.split.degrees_of_freedom}, "
            f"p = {_p(e.split.p_value)}: {verdict}"
        )
    return lines


def render_text(result: ReplayResult | None, expectations: list[ExpectationResult] | None, *, srm_alpha: float) -> str:
    out: list[str] = []
    warnings: list[str] = []
    if result is not None:
        experiences = result.distribution.experience_results(srm_alpha)
        diff = result.diff
        if diff is not None and diff.rebucketed():
            moved = sorted({m.experience for m in diff.rebucketed()})
            warnings.append(
                f"!!! RE-BUCKETING: {diff.rebucketed_users():,} users of running A/B test(s) "
                f"{', '.join(moved)} change variant under --against: their results would be biased"
            )
        if result.recorded is not None and result.recorded.mismatched:
            warnings.append(
                f"!!! {result.recorded.mismatched:,} of {result.recorded.checked:,} recorded decisions differ "
                "from today's engine (--from-log)"
            )
        if result.recorded is not None and result.recorded.checked == 0:
            warnings.append("!!! --from-log: the traffic holds no recorded decisions to verify")
        for e in experiences:
            if e.split_mismatch and e.split is not None:
                warnings.append(
                    f"!!! experience {e.short_uid} {e.name!r}: users per variant do not match the weights "
                    f"(p = {_p(e.split.p_value)})"
                )
    if expectations is not None and any(not r.passed for r in expectations):
        failed = sum(1 for r in expectations if not r.passed)
        warnings.append(f"!!! {failed} of {len(expectations)} expectations FAILED")
    if warnings:
        out += [RULE, *warnings, RULE]

    if result is not None:
        out.append(
            f"replayed {result.requests:,} requests from {result.users:,} users under snapshot "
            f"{result.snapshot.version} in {result.seconds:.2f}s ({result.requests_per_second:,.0f} requests/s)"
        )
        for s in result.sources:
            skipped = ", ".join(f"{n:,} {reason}" for reason, n in sorted(s.skipped.items()))
            out.append(
                f"  {s.source} [{s.format or '?'}]: {s.records:,} replayed"
                + (f"; skipped {skipped}" if skipped else "")
                + (f"; {s.invalid:,} invalid" if s.invalid else "")
            )
            for bad in s.invalid_samples[:5]:
                out.append(f"    {bad.source}:{bad.position}: {bad.message}")
        if result.behaviour_page_views is not None:
            out.append(
                f"  behavioural attributes (--behaviour): computed in time order from "
                f"{result.behaviour_page_views:,} page views"
            )
        out.append("")
        experiences = result.distribution.experience_results(srm_alpha)
        for e in experiences:
            out += _experience_lines(e)
            out.append("")
        never = [e for e in experiences if not e.activated]
        out.append(
            "experiences never activated: "
            + (", ".join(f"{e.short_uid} {e.name!r} ({e.status})" for e in never) if never else "none")
        )
        for o in result.snapshot.project.omitted:
            out.append(f"  not live: {o.short_uid} {o.name!r} ({o.reason})")
        if result.coverage is not None:
            cov = result.coverage
            audiences = cov.never_matched_audiences()
            out.append(f"audiences never matched ({len(audiences)} of {len(cov.audiences)}):")
            for a in audiences:
                used = (
                    f"used by experience(s) {', '.join(a['usedBy'])}" if a["usedBy"] else "not used by any experience"
                )
                out.append(f"  {a['name']!r} ({a['uid']}{', Lytics' if a['lytics'] else ''}): {used}")
            rules = cov.dead_rules()
            out.append(f"rules never true ({len(rules)} of {len(cov.rules)}):")
            for r in rules:
                out.append(f"  {r['rule']}  in {r['in']}  ({r['where']})")
        if diff is not None:
            out.append("")
            out.append(RULE)
            changes = diff.experience_changes()
            out.append(
                f"--against {diff.after.version}: {diff.changed_requests:,} of {diff.requests:,} requests "
                f"({len(diff.changed_users):,} users) change decision"
            )
            for added in changes["added"]:
                out.append(f"  experience {added['shortUid']} {added['name']!r}: new under --against")
            for removed in changes["removed"]:
                out.append(f"  experience {removed['shortUid']} {removed['name']!r}: no longer live under --against")
            moves = sorted(diff.moves.values(), key=lambda m: (m.experience, -len(m.users)))
            for m in moves:
                flag = "  << RE-BUCKETED (running A/B test)" if m.rebucketing else ""
                was = "null" if m.before is None else m.before
                now = "null" if m.after is None else m.after
                counts = f"{len(m.users):,} users, {m.requests:,} requests"
                out.append(f"  experience {m.experience}: {was} -> {now}: {counts}{flag}")
                for sample in m.samples:
                    out.append(f"      e.g. {sample['source']}:{sample['position']} user {sample['userUid']}")
            for why in diff.explanations:
                out.append("")
                out.append(
                    f"why experience {why['experience']} moves {why['before']} -> {why['after']} for user "
                    f"{why['userUid']} ({why['source']}:{why['position']}):"
                )
                out.append(why["text"])
        if result.recorded is not None:
            rec = result.recorded
            out.append("")
            out.append(RULE)
            snapshots = ", ".join(f"{v} ({n:,})" for v, n in rec.recorded_snapshots.most_common(3))
            out.append(
                f"recorded decisions: {rec.matched:,} of {rec.checked:,} reproduced exactly by snapshot "
                f"{rec.snapshot.version}"
                + (f"; recorded under {snapshots}" if snapshots else "")
                + (f"; {rec.unrecorded:,} requests without a recorded decision" if rec.unrecorded else "")
            )
            for mismatch in rec.mismatches:
                out.append(
                    f"  MISMATCH {mismatch['source']}:{mismatch['position']} ({mismatch['recordedIn']}): "
                    f"{mismatch['differences']}"
                )
                out.append("    " + mismatch["text"].replace("\n", "\n    "))
    if expectations is not None:
        if result is not None:
            out += ["", RULE]
        passed = sum(1 for r in expectations if r.passed)
        out.append(f"expectations: {passed} of {len(expectations)} passed")
        for case in expectations:
            if case.passed:
                out.append(f"  ok    {case.expectation.name}")
                continue
            out.append(f"  FAIL  {case.expectation.name}  ({case.expectation.where})")
            for failure in case.failures:
                out.append(f"        {describe_failure(failure)}")
            out.append("        " + case.text.replace("\n", "\n        "))
    return "\n".join(out) + "\n"
