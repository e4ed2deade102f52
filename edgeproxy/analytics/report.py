"""The A/B report: per experience (priority order) and variant, impressions, conversions per metric, conversion
rate with a 95% Wilson interval, uplift over the control, probability to be best, insights, leader, winner and
sample-ratio mismatch. Built from a snapshot and backend-neutral `Tallies`; the result is plain JSON data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgeproxy.analytics.stats import (
    DRAWS,
    SRM_ALPHA,
    draw_seed,
    probability_to_be_best,
    sample_ratio_mismatch,
    wilson_interval,
)
from edgeproxy.analytics.tallies import CONVERSION_WINDOW_SECONDS, DAY, Scope, Tallies
from edgeproxy.engine.model import Experience, Project

INSIGHTS_MIN_IMPRESSIONS = 1_000  # docs/contract.md §8: insights start after 1,000 impressions ...
INSIGHTS_MIN_CONVERSIONS = 30  # ... or 30 conversions
WINNER_MIN_PROBABILITY = 0.95  # docs/contract.md §8: a winner needs P2BB >= 95% ...
WINNER_MIN_DAYS = 14  # ... and at least 14 days


@dataclass(frozen=True, slots=True)
class MetricRef:
    key: str  # the event key conversions carry
    event_uid: str
    name: str
    kind: str  # "Primary" | "Secondary"
    primary: bool


def experience_metrics(project: Project, experience: Experience) -> list[MetricRef]:
    """The experience's metrics as event keys (metric event uid -> key through the project's events), primary
    first-class: the first `Primary` metric, else the first metric. A metric whose event is unknown is skipped;
    two metrics on one event count once."""
    keys = {event.uid: event.key for event in project.events}
    found: list[tuple[str, str, str, str]] = []
    for metric in experience.metrics:
        key = keys.get(metric.event_uid)
        if key is not None and all(key != f[0] for f in found):
            found.append((key, metric.event_uid, metric.name, metric.kind))
    primary_index = next((i for i, f in enumerate(found) if f[3] == "Primary"), 0)
    return [MetricRef(k, uid, name, kind, i == primary_index) for i, (k, uid, name, kind) in enumerate(found)]


def select_experiences(project: Project, short_uid: str | None = None) -> list[Experience]:
    """Experiences in priority order; ValueError naming the known ones when `short_uid` is not among them."""
    experiences = list(project.experiences)
    if short_uid is None:
        return experiences
    chosen = [e for e in experiences if e.short_uid == short_uid]
    if not chosen:
        known = ", ".join(f"{e.short_uid} ({e.name})" for e in experiences)
        raise ValueError(f"no live experience with short uid {short_uid!r}; known: {known}")
    return chosen


def report_scope(
    project: Project, experience: str | None = None, since: float | None = None, until: float | None = None
) -> Scope:
    metrics = {
        e.short_uid: frozenset(m.key for m in experience_metrics(project, e))
        for e in select_experiences(project, experience)
    }
    return Scope(metrics, since, until)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    """ISO-8601 date or date-time (a time without a zone is UTC) -> POSIX seconds; ValueError otherwise."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 date or time, e.g. 2026-11-01 or 2026-11-01T12:00:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def settings() -> dict[str, Any]:
    return {
        "conversionWindowDays": CONVERSION_WINDOW_SECONDS // DAY,
        "interval": "wilson-95",
        "draws": DRAWS,
        "insightsMinImpressions": INSIGHTS_MIN_IMPRESSIONS,
        "insightsMinConversions": INSIGHTS_MIN_CONVERSIONS,
        "winnerMinProbability": WINNER_MIN_PROBABILITY,
        "winnerMinDays": WINNER_MIN_DAYS,
        "srmAlpha": SRM_ALPHA,
    }


def build_report(
    project: Project,
    snapshot_version: str,
    tallies: Tallies,
    scope: Scope,
    *,
    now: float | None = None,
    source: str = "",
) -> dict[str, Any]:
    """The whole report as JSON-ready data; `now` (default: the clock) dates "running days"."""
    clock = time.time() if now is None else now
    end = min(clock, scope.until) if scope.until is not None else clock
    conversions = tallies.conversions()
    experiences = [e for e in project.experiences if e.short_uid in scope.metrics]
    return {
        "projectUid": project.uid,
        "snapshotVersion": snapshot_version,
        "source": source,
        "generatedAt": iso(time.time()),
        "now": iso(clock),
        "window": {"since": iso(scope.since), "until": iso(scope.until)},
        "settings": settings(),
        "experiences": [
            _experience_report(project, priority, e, tallies, conversions, end)
            for priority, e in enumerate(experiences, start=1)
        ],
    }


def _experience_report(
    project: Project,
    priority: int,
    experience: Experience,
    tallies: Tallies,
    conversions: Mapping[tuple[str, str, str], int],
    end: float,
) -> dict[str, Any]:
    e = experience.short_uid
    is_ab = experience.type == "AB_TEST"
    metrics = experience_metrics(project, experience)
    variants = experience.variants
    known = {v.short_uid for v in variants}
    impressions = [tallies.impressions.get((e, v.short_uid), 0) for v in variants]
    total_impressions = sum(impressions)
    first = tallies.first_impression.get(e)
    running_days = None if first is None else max(0.0, (end - first) / DAY)
    total_weight = sum(v.weight for v in variants)

    variant_rows: list[dict[str, Any]] = []
    for index, variant in enumerate(variants):
        row: dict[str, Any] = {
            "shortUid": variant.short_uid,
            "name": variant.name,
            "control": is_ab and index == 0,
            "split": variant.weight / 10_000 if is_ab else None,
            "impressions": impressions[index],
            "metrics": {},
        }
        variant_rows.append(row)

    metric_rows: list[dict[str, Any]] = []
    for metric in metrics:
        counts = [conversions.get((e, v.short_uid, metric.key), 0) for v in variants]
        total_conversions = sum(counts)
        insights = total_impressions >= INSIGHTS_MIN_IMPRESSIONS or total_conversions >= INSIGHTS_MIN_CONVERSIONS
        seed = draw_seed(experience.uid, metric.event_uid)
        p2bb: list[float | None]
        if is_ab and total_impressions > 0 and len(variants) > 1:
            p2bb = list(probability_to_be_best(counts, impressions, seed))
        else:
            p2bb = [None] * len(variants)
        rates = [c / n if n else None for c, n in zip(counts, impressions, strict=True)]
        control_rate = rates[0] if rates else None
        for index, row in enumerate(variant_rows):
            rate = rates[index]
            interval = wilson_interval(counts[index], impressions[index])
            uplift = None
            if is_ab and index > 0 and rate is not None and control_rate:
                uplift = (rate - control_rate) / control_rate
            row["metrics"][metric.key] = {
                "conversions": counts[index],
                "rate": rate,
                "interval": list(interval) if interval is not None else None,
                "uplift": uplift,
                "probabilityToBeBest": p2bb[index],
            }
        leader = None
        best = max((p for p in p2bb if p is not None), default=None)
        if best is not None:
            leader = variants[p2bb.index(best)].short_uid
        declared = (
            leader is not None
            and best is not None
            and insights
            and best >= WINNER_MIN_PROBABILITY
            and running_days is not None
            and running_days >= WINNER_MIN_DAYS
        )
        metric_rows.append({
            "key": metric.key, "eventUid": metric.event_uid, "name": metric.name, "kind": metric.kind,
            "primary": metric.primary, "conversions": total_conversions, "insightsAvailable": insights,
            "leader": leader, "leaderProbability": best, "winner": leader if declared else None, "seed": seed,
        })  # fmt: skip

    primary = next((m for m in metric_rows if m["primary"]), None)
    insights_available = (
        primary["insightsAvailable"] if primary is not None else total_impressions >= INSIGHTS_MIN_IMPRESSIONS
    )
    srm: dict[str, Any] | None = None
    flags: list[str] = []
    if is_ab:
        result = sample_ratio_mismatch(impressions, [v.weight for v in variants])
        srm = {
            "checked": result.checked, "mismatch": result.mismatch, "chiSquare": _finite(result.chi_square),
            "degreesOfFreedom": result.dof, "pValue": result.p_value, "message": result.reason,
            "expected": {v.short_uid: (v.weight / total_weight if total_weight else 0.0) for v in variants},
            "observed": {v.short_uid: n for v, n in zip(variants, impressions, strict=True)},
        }  # fmt: skip
        if result.mismatch:
            flags.append("sample_ratio_mismatch")
        if not insights_available:
            flags.append("insights_not_available")
        if primary is not None and primary["winner"] is not None:
            flags.append("winner")
    if not metrics and is_ab:
        flags.append("no_metrics")
    unknown = {v: n for (x, v), n in sorted(tallies.impressions.items()) if x == e and v not in known and n > 0}
    if unknown:
        flags.append("impressions_of_unknown_variants")
    return {
        "shortUid": e,
        "uid": experience.uid,
        "name": experience.name,
        "type": experience.type,
        "status": experience.status,
        "priority": priority,
        "firstImpressionAt": iso(first),
        "runningDays": None if running_days is None else round(running_days, 3),
        "impressions": total_impressions,
        "primaryMetric": primary["key"] if primary is not None else None,
        "insightsAvailable": insights_available,
        "leader": primary["leader"] if primary is not None else None,
        "winner": primary["winner"] if primary is not None else None,
        "metrics": metric_rows,
        "variants": variant_rows,
        "srm": srm,
        "unknownVariants": unknown,
        "flags": flags,
    }


def _finite(value: float | None) -> float | None:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return value


# -- daily series (the dashboard's charts) ------------------------------------------------------------------


def daily_series(
    project: Project, tallies: Tallies, scope: Scope, *, max_days: int = 120, p2bb_draws: int = DRAWS
) -> dict[str, Any]:
    """Per experience: UTC days, per variant the unique impressions first seen each day, cumulative impressions
    and, per metric, cumulative conversions and conversion rate; per day the cumulative P2BB of the primary
    metric (A/B tests). The last `max_days` days with data are kept."""
    daily = tallies.daily_impressions or {}
    out: dict[str, Any] = {}
    for experience in project.experiences:
        e = experience.short_uid
        if e not in scope.metrics:
            continue
        metrics = experience_metrics(project, experience)
        days = sorted(
            {d for (x, _, d) in daily if x == e} | {d for (x, _, _, d) in tallies.daily_conversions if x == e}
        )
        if not days:
            out[e] = {"days": [], "variants": {}, "probabilityToBeBest": {}}
            continue
        all_days = list(range(days[0], days[-1] + 1))
        variants = [v.short_uid for v in experience.variants]
        cum_imp: dict[str, list[int]] = {}
        new_imp: dict[str, list[int]] = {}
        cum_conv: dict[str, dict[str, list[int]]] = {}
        for v in variants:
            running = 0
            news, cums = [], []
            for d in all_days:
                n = daily.get((e, v, d), 0)
                running += n
                news.append(n)
                cums.append(running)
            new_imp[v], cum_imp[v] = news, cums
            cum_conv[v] = {}
            for m in metrics:
                running = 0
                series = []
                for d in all_days:
                    running += tallies.daily_conversions.get((e, v, m.key, d), 0)
                    series.append(running)
                cum_conv[v][m.key] = series
        keep = slice(max(0, len(all_days) - max_days), len(all_days))
        variant_data: dict[str, Any] = {}
        for v in variants:
            rates: dict[str, list[float | None]] = {}
            for m in metrics:
                rates[m.key] = [(c / n if n else None) for c, n in zip(cum_conv[v][m.key], cum_imp[v], strict=True)][
                    keep
                ]
            variant_data[v] = {
                "impressions": new_imp[v][keep],
                "cumulativeImpressions": cum_imp[v][keep],
                "cumulativeConversions": {k: s[keep] for k, s in cum_conv[v].items()},
                "conversionRate": rates,
            }
        p2bb: dict[str, list[float | None]] = {}
        primary = next((m for m in metrics if m.primary), None)
        if experience.type == "AB_TEST" and primary is not None and len(variants) > 1:
            seed = draw_seed(experience.uid, primary.event_uid)
            series_by_variant: dict[str, list[float | None]] = {v: [] for v in variants}
            for i in range(keep.start, len(all_days)):
                imps = [cum_imp[v][i] for v in variants]
                if sum(imps) == 0:
                    for v in variants:
                        series_by_variant[v].append(None)
                    continue
                convs = [cum_conv[v][primary.key][i] for v in variants]
                for v, p in zip(variants, probability_to_be_best(convs, imps, seed, p2bb_draws), strict=True):
                    series_by_variant[v].append(p)
            p2bb = series_by_variant
        out[e] = {
            "days": [datetime.fromtimestamp(d * DAY, UTC).strftime("%Y-%m-%d") for d in all_days[keep]],
            "variants": variant_data,
            "primaryMetric": primary.key if primary is not None else None,
            "probabilityToBeBest": p2bb,
        }
    return out


# -- the readable table -------------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def _signed_pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:+.1f}%"


def render_table(report: Mapping[str, Any]) -> str:
    """The report as text: one block per experience in priority order, one line per variant and metric."""
    lines: list[str] = []
    window = report["window"]
    span = ""
    if window["since"] or window["until"]:
        span = f" · events in [{window['since'] or 'start'}, {window['until'] or 'now'})"
    lines.append(
        f"edgeproxy report · project {report['projectUid']} · snapshot {report['snapshotVersion']}"
        f" · as of {report['now']}{span}"
    )
    for exp in report["experiences"]:
        lines.append("")
        running = f"running {exp['runningDays']:.1f} days" if exp["runningDays"] is not None else "no impressions yet"
        kind = "A/B test" if exp["type"] == "AB_TEST" else "segmented"
        lines.append(f"[{exp['shortUid']}] {exp['name']} · {kind} · {exp['status']} · {running}")
        lines.extend("  " + line for line in _variant_table(exp))
        lines.extend("  " + note for note in _notes(exp))
    if not report["experiences"]:
        lines.append("")
        lines.append("no live experiences in the snapshot")
    return "\n".join(lines) + "\n"


def _variant_table(exp: Mapping[str, Any]) -> list[str]:
    metrics: Sequence[Mapping[str, Any]] = exp["metrics"]
    is_ab = exp["type"] == "AB_TEST"
    header: tuple[str, ...] = ("variant", "split", "impressions") if is_ab else ("variant", "impressions")
    if metrics:
        header += ("metric", "conv", "rate [95% interval]", "uplift", "P2BB")
    header += ("flags",)
    rows: list[tuple[str, ...]] = [header]
    for variant in exp["variants"]:
        flags = []
        if variant["control"]:
            flags.append("control")
        if exp["leader"] == variant["shortUid"]:
            flags.append("WINNER" if exp["winner"] == variant["shortUid"] else "leader")
        lead: tuple[str, ...] = (f"{variant['shortUid']} {variant['name']}",)
        if is_ab:
            lead += (_pct(variant["split"], 0),)
        lead += (f"{variant['impressions']:,}",)
        if not metrics:
            rows.append((*lead, " ".join(flags)))
            continue
        for i, metric in enumerate(metrics):
            cell = variant["metrics"][metric["key"]]
            rate = _pct(cell["rate"])
            if cell["interval"] is not None:
                rate += f" [{cell['interval'][0] * 100:.2f}, {cell['interval'][1] * 100:.2f}]"
            rows.append((
                *(lead if i == 0 else ("",) * len(lead)),
                metric["name"] + (" *" if metric["primary"] else ""), f"{cell['conversions']:,}", rate,
                "—" if variant["control"] else _signed_pct(cell["uplift"]),
                _pct(cell["probabilityToBeBest"], 1), " ".join(flags) if i == 0 else "",
            ))  # fmt: skip
    numeric = {"impressions", "conv", "uplift", "P2BB"}
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    return [
        "  ".join(
            r[c].rjust(widths[c]) if header[c] in numeric else r[c].ljust(widths[c]) for c in range(len(header))
        ).rstrip()
        for r in rows
    ]


def _notes(exp: Mapping[str, Any]) -> list[str]:
    notes: list[str] = []
    if exp["metrics"]:
        notes.append("* primary metric (leader, winner and insights are judged on it)")
    if exp["type"] == "AB_TEST":
        primary = next((m for m in exp["metrics"] if m["primary"]), None)
        if not exp["insightsAvailable"]:
            conv = primary["conversions"] if primary else 0
            notes.append(
                f"insights not available yet: {exp['impressions']:,} of {INSIGHTS_MIN_IMPRESSIONS:,} impressions, "
                f"{conv:,} of {INSIGHTS_MIN_CONVERSIONS} conversions"
            )
        elif primary is not None and primary["leader"] is not None:
            name = next(v["name"] for v in exp["variants"] if v["shortUid"] == primary["leader"])
            p = primary["leaderProbability"]
            if primary["winner"] is not None:
                notes.append(f"winner: {primary['leader']} {name} (P2BB {_pct(p, 1)}, {exp['runningDays']:.1f} days)")
            else:
                why = []
                if p is None or p < WINNER_MIN_PROBABILITY:
                    why.append(f"P2BB {_pct(p, 1)} < {WINNER_MIN_PROBABILITY:.0%}")
                if exp["runningDays"] is None or exp["runningDays"] < WINNER_MIN_DAYS:
                    why.append(f"running {exp['runningDays'] or 0:.1f} < {WINNER_MIN_DAYS} days")
                notes.append(f"leader: {primary['leader']} {name}; no winner yet ({', '.join(why)})")
        srm = exp["srm"]
        if srm and srm["mismatch"]:
            observed = "/".join(f"{n:,}" for n in srm["observed"].values())
            expected = "/".join(f"{s:.0%}" for s in srm["expected"].values())
            chi = "∞" if srm["chiSquare"] is None else f"{srm['chiSquare']:.1f}"
            notes.append(
                f"WARNING sample ratio mismatch: impressions {observed} vs configured split {expected} "
                f"(chi² = {chi}, p = {srm['pValue']:.2g} < {SRM_ALPHA:g}): check for lost or duplicated "
                f"impressions, bots, or a split changed mid-test before trusting these figures"
            )
        elif srm and not srm["checked"] and exp["impressions"]:
            notes.append(f"sample ratio not checked: {srm['message']}")
    if exp["unknownVariants"]:
        unknown = ", ".join(f"{v} ({n:,})" for v, n in exp["unknownVariants"].items())
        notes.append(f"impressions of variants not in this snapshot (not counted above): {unknown}")
    return notes
