"""Why each experience got its variant: a JSON-ready trace of one decision, and a readable rendering.

The variant each experience gets is the decision itself: `CompiledExperience.choose` runs with a trace
(`DecisionTrace`) that records every condition it evaluates and the A/B bucket, and the explanation is built
from what it recorded, so it cannot disagree with `decide`. The detail under a condition (each rule with its
attribute value) is read with the same getters and tests as the compiled rules (conditions.py), without
short-circuiting, so every rule shows its value and result. It is the structure the proxy's debug endpoint
returns too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from edgeproxy.engine.bucketing import HASH_VERSION
from edgeproxy.engine.conditions import evaluate_rule
from edgeproxy.engine.context import VisitorContext
from edgeproxy.engine.decide import CompiledExperience, CompiledSnapshot, CompiledVariant, Forcing, variant_alias
from edgeproxy.engine.model import AudienceCondition, Rule, RuleGroup


def _jsonable(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _rule_trace(rule: Rule, ctx: VisitorContext) -> dict[str, Any]:
    value, result = evaluate_rule(rule, ctx)
    if rule.attribute == "DATE_AND_TIME" and isinstance(value, float):
        value = datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
    return {
        "rule": rule.where,
        "attribute": rule.attribute if rule.attribute_kind != "custom" else f"custom:{rule.attribute}",
        "condition": rule.condition,
        "operand": _jsonable(rule.operand),
        "invert": rule.invert,
        "value": _jsonable(value),
        "result": result,
    }


def _group_trace(group: RuleGroup, ctx: VisitorContext) -> dict[str, Any]:
    items = [_group_trace(i, ctx) if isinstance(i, RuleGroup) else _rule_trace(i, ctx) for i in group.rules]
    results = [item["result"] for item in items]
    return {
        "combination": group.combination,
        "result": all(results) if group.combination == "AND" else any(results),
        "rules": items,
    }


def _condition_trace(
    snapshot: CompiledSnapshot, condition: AudienceCondition, ctx: VisitorContext, result: bool
) -> dict[str, Any]:
    """The detail of a condition the decision evaluated to `result`: its target's rules, or its audiences (each
    member's result is the snapshot's audience predicate, as the decision evaluates it)."""
    if condition.target is not None:
        return {"target": _group_trace(condition.target, ctx), "result": result}
    audiences_by_uid = {a.uid: a for a in snapshot.project.audiences}
    members = []
    for uid in condition.audiences + condition.lytics_audiences:
        audience = audiences_by_uid[uid]
        member = snapshot.audience_predicates[uid](ctx)
        if audience.lytics_slug is not None:
            members.append(
                {
                    "audience": uid,
                    "name": audience.name,
                    "lyticsSlug": audience.lytics_slug,
                    "visitorLyticsAudiences": sorted(ctx.lytics_audiences()),
                    "result": member,
                }
            )
        else:
            assert audience.definition is not None
            definition = _group_trace(audience.definition, ctx)
            members.append({"audience": uid, "name": audience.name, "definition": definition, "result": member})
    return {"combination": condition.combination, "audiences": members, "result": result}


class _Recorder:
    """The `DecisionTrace` of one experience: what `choose` reported."""

    __slots__ = ("bucket", "is_paused", "segments", "targeted")

    def __init__(self) -> None:
        self.is_paused = False
        self.segments: dict[int, bool] = {}  # variant index -> whether its condition held
        self.targeted: bool | None = None
        self.bucket: tuple[int, int | None] | None = None

    def paused(self) -> None:
        self.is_paused = True

    def segment(self, index: int, holds: bool) -> None:
        self.segments[index] = holds

    def targeting(self, holds: bool) -> None:
        self.targeted = holds

    def bucketing(self, bucket: int, index: int | None) -> None:
        self.bucket = (bucket, index)


def _set_variant(trace: dict[str, Any], short_uid: str, variant: CompiledVariant | None) -> dict[str, Any]:
    chosen = None if variant is None else variant.short_uid
    trace["activeVariantShortUid"] = chosen
    trace["alias"] = variant_alias(short_uid, chosen) if chosen is not None else None
    return trace


def _experience_trace(
    snapshot: CompiledSnapshot, ce: CompiledExperience, ctx: VisitorContext, forced: Mapping[str, str | None]
) -> dict[str, Any]:
    experience = ce.experience
    trace: dict[str, Any] = {
        "shortUid": experience.short_uid,
        "uid": experience.uid,
        "name": experience.name,
        "type": experience.type,
        "status": "DRAFT" if experience.draft else experience.status,
        "versionUid": experience.version_uid,
        "tags": list(experience.tags),
    }
    if forced:
        # The preview's own rule (`CompiledExperience.forced`, as `decide_forced` applies it): nothing is evaluated.
        is_forced, forced_variant = ce.forced(forced)
        if is_forced:
            shown = "excluded" if forced_variant is None else forced_variant.short_uid
            trace["reason"] = f"forced by preview: {shown}"
            trace["forcedByPreview"] = True
            return _set_variant(trace, experience.short_uid, forced_variant)
        if experience.short_uid in forced:
            trace["previewNote"] = (
                f"the preview asks for variant {forced[experience.short_uid]!r}, which this version does not have: "
                "decided normally"
            )
    recorded = _Recorder()
    decided = ce.choose(ctx, recorded)
    chosen = None if decided is None else decided.short_uid
    if recorded.is_paused:
        trace["reason"] = "experience is PAUSED: no variant is served"
    elif experience.type == "SEGMENTED":
        variants = []
        for index, variant in enumerate(experience.variants):
            entry: dict[str, Any] = {"shortUid": variant.short_uid, "name": variant.name}
            if variant.condition is None:
                entry.update(result=False, note="variant has no audiences and no target: matches nobody")
            else:
                entry.update(_condition_trace(snapshot, variant.condition, ctx, recorded.segments[index]))
            if decided is not None and ce.variants[index] is decided:
                entry["chosen"] = True
            variants.append(entry)
        trace["variants"] = variants
        trace["reason"] = (
            f"first matching variant in order: {chosen}" if chosen is not None else "no variant's audience matched"
        )
    else:
        if experience.targeting is not None and recorded.targeted is not None:
            trace["targeting"] = _condition_trace(snapshot, experience.targeting, ctx, recorded.targeted)
        if recorded.bucket is None and not ctx.user_uid and recorded.targeted is not False:
            trace["reason"] = "anonymous visitor (no consent cookie): in no A/B test"
        elif recorded.bucket is None:
            trace["reason"] = "visitor is outside the A/B test's targeting"
        else:
            value, arm = recorded.bucket
            sums = ce.cumulative_weights
            ranges = []
            start = 0
            for variant, end in zip(experience.variants, sums, strict=True):
                ranges.append({"shortUid": variant.short_uid, "name": variant.name, "from": start, "to": end})
                start = end
            trace["bucketing"] = {
                "hash": HASH_VERSION,
                "key": f"{experience.uid}:{ctx.user_uid}",
                "bucket": value,
                "ranges": ranges,
            }
            if arm is None:
                trace["reason"] = f"bucket {value} is past the total weight {sums[-1] if sums else 0}: not in the test"
            else:
                trace["reason"] = f"bucket {value} falls in [{ranges[arm]['from']}, {ranges[arm]['to']})"
    return _set_variant(trace, experience.short_uid, decided)


def explain(
    snapshot: CompiledSnapshot,
    ctx: VisitorContext,
    tags: Iterable[str] | None = None,
    forcing: Forcing | None = None,
) -> dict[str, Any]:
    """Why each experience got its variant. With a preview's `forcing`, the decision `decide_forced` makes: on the
    snapshot it uses (the drafts' with `forcing.draft`), forced experiences marked "forced by preview"."""
    forced: dict[str, str | None] = {}
    if forcing is not None:
        snapshot = snapshot.preview_snapshot(forcing)
        forced = dict(forcing.forced)
    selected = {ce.experience.uid for ce in snapshot.select(tags)}
    experiences = [
        _experience_trace(snapshot, ce, ctx, forced) for ce in snapshot.experiences if ce.experience.uid in selected
    ]
    filtered = [
        {"shortUid": ce.experience.short_uid, "name": ce.experience.name, "tags": list(ce.experience.tags)}
        for ce in snapshot.experiences
        if ce.experience.uid not in selected
    ]
    geo = ctx.geo()
    ua = ctx.ua_class()
    trace: dict[str, Any] = {
        "userUid": ctx.user_uid,
        "snapshotVersion": snapshot.version,
        "tags": None if tags is None else list(tags),
        "visitor": {
            "now": datetime.fromtimestamp(ctx.now, UTC).isoformat().replace("+00:00", "Z"),
            "geo": {"country": geo.country, "region": geo.region, "city": geo.city},
            "deviceType": None if ua is None else ua.device_type,
            "operatingSystem": None if ua is None else ua.operating_system,
            "pageUrl": ctx.page_url,
            "referrer": ctx.referrer,
            "liveAttributes": _jsonable(dict(ctx.live)),
            "storedAttributes": _jsonable(dict(ctx.stored)),
            "lyticsAudiences": sorted(ctx.lytics_audiences()),
        },
        "experiences": experiences,
        "filteredOutByTags": filtered,
        "omitted": [{"shortUid": o.short_uid, "name": o.name, "reason": o.reason} for o in snapshot.project.omitted],
    }
    if forcing is not None:
        trace["preview"] = {"forced": dict(forcing.forced), "draft": forcing.draft}
    return trace


def _rule_lines(item: dict[str, Any], depth: int) -> list[str]:
    pad = "    " * depth
    mark = "✓" if item["result"] else "✗"
    if "combination" in item and "rules" in item:
        lines = [f"{pad}{mark} {item['combination']} group"]
        for child in item["rules"]:
            lines.extend(_rule_lines(child, depth + 1))
        return lines
    operand = "" if item["operand"] is None else f" {item['operand']!r}"
    invert = "NOT " if item["invert"] else ""
    return [f"{pad}{mark} {invert}{item['attribute']} {item['condition']}{operand}  (value: {item['value']!r})"]


def _condition_lines(entry: dict[str, Any], depth: int) -> list[str]:
    pad = "    " * depth
    if "target" in entry:
        return [f"{pad}inline target:", *_rule_lines(entry["target"], depth + 1)]
    lines = [f"{pad}audiences combined with {entry['combination']}:"]
    for member in entry["audiences"]:
        mark = "✓" if member["result"] else "✗"
        if "lyticsSlug" in member:
            lines.append(
                f"{pad}    {mark} Lytics audience {member['name'] or member['audience']} "
                f"(slug {member['lyticsSlug']!r}; visitor has {member['visitorLyticsAudiences']})"
            )
        else:
            lines.append(f"{pad}    {mark} audience {member['name'] or member['audience']}")
            lines.extend(_rule_lines(member["definition"], depth + 2))
    return lines


def render_explanation(trace: dict[str, Any]) -> str:
    """Readable text for a terminal (`edgeproxy decide --explain`)."""
    visitor = trace["visitor"]
    out = [
        f"user {trace['userUid']}  snapshot {trace['snapshotVersion']}  tags {trace['tags']}",
        f"  at {visitor['now']}  geo {visitor['geo']}  device {visitor['deviceType']}  os {visitor['operatingSystem']}",
        f"  page {visitor['pageUrl']}  referrer {visitor['referrer']}  lytics {visitor['lyticsAudiences']}",
    ]
    preview = trace.get("preview")
    if preview is not None:
        forced = ", ".join(f"{exp}={'excluded' if var is None else var}" for exp, var in preview["forced"].items())
        versions = "DRAFT versions where there are any" if preview["draft"] else "live versions"
        out.append(f"  preview: forced {forced or 'nothing'}; {versions}")
    for exp in trace["experiences"]:
        result = exp["activeVariantShortUid"]
        out.append(
            f"experience {exp['shortUid']} {exp['name']!r} [{exp['type']}, {exp['status']}] -> "
            f"{'null' if result is None else result}: {exp['reason']}"
        )
        if "previewNote" in exp:
            out.append(f"    {exp['previewNote']}")
        if "targeting" in exp:
            out.append("    targeting:")
            out.extend(_condition_lines(exp["targeting"], 2))
        for variant in exp.get("variants", []):
            mark = "→" if variant.get("chosen") else ("✓" if variant["result"] else "✗")
            out.append(f"    {mark} variant {variant['shortUid']} {variant['name']!r}")
            if "note" in variant:
                out.append(f"        {variant['note']}")
            else:
                out.extend(_condition_lines(variant, 2))
        if "bucketing" in exp:
            b = exp["bucketing"]
            ranges = ", ".join(f"{r['shortUid']}:[{r['from']},{r['to']})" for r in b["ranges"])
            out.append(f"    bucket {b['bucket']} of 10000 (hash {b['hash']}, key {b['key']!r}); ranges {ranges}")
    for exp in trace["filteredOutByTags"]:
        out.append(f"experience {exp['shortUid']} {exp['name']!r}: not decided, tags {exp['tags']} do not match")
    for exp in trace["omitted"]:
        out.append(f"experience {exp['shortUid']} {exp['name']!r}: omitted ({exp['reason']})")
    return "\n".join(out)
