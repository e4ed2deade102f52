"""Build small rules directories (SPEC §3 CLI-export layout) for tests, and decide against them.

Everything here writes real files and goes through the real loader and `decide`, so a test built with these
helpers exercises exactly what `edgeproxy decide` and the proxy run. Uids are derived from names
(`uid_for("tier")`), so a test can refer to an attribute or audience by a readable name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeproxy.engine import CompiledSnapshot, context_from_description
from edgeproxy.engine.context import GeoLookup
from edgeproxy.engine.explain import explain
from edgeproxy.engine.model import parse_iso_time
from edgeproxy.files.snapshot_file import load_snapshot

PROJECT_UID = "65a1b2c3d4e5f6a7b8c9d0e1"
# The clock of every decision made here when the description has no `now` (SPEC §9).
FIXED_NOW = "2026-11-22T10:00:00Z"
FIXED_NOW_TS = parse_iso_time(FIXED_NOW).timestamp()
# What `new_uid` returns here: a deterministic stand-in for the UUID4 a real caller generates.
NEW_UID = "00000000-0000-4000-8000-000000000000"

Json = dict[str, Any]

# Custom attribute keys every `segmented_experience` project defines (uids from `uid_for(key)`).
STANDARD_ATTRIBUTE_KEYS = ("tier", "visits", "subscribed", "score", "nickname", "profile", "Tier")
# Lytics audiences every `segmented_experience` project defines: slug -> uid (32 hex chars, SPEC §2).
STANDARD_LYTICS_SLUGS = ("vip", "churn_risk")


def uid_for(name: str, length: int = 24) -> str:
    """A stable hex uid for a readable name: 24 chars, or 32 for Lytics-synced audiences (SPEC §2)."""
    return hashlib.sha256(name.encode()).hexdigest()[:length]


def lytics_uid(slug: str) -> str:
    return uid_for(f"lytics:{slug}", 32)


# -- rules -----------------------------------------------------------------------------------------

_REF_TYPES = {
    "preset": "PresetAttributeReference",
    "custom": "CustomAttributeReference",
    "lytics": "LyticsAttributeReference",
}


def reference(ref_type: str, ref: str) -> Json:
    """`reference("preset", "COUNTRY")`; `ref_type` is preset/custom/lytics or the full `__type`."""
    return {"__type": _REF_TYPES.get(ref_type, ref_type), "ref": ref}


def preset(name: str) -> Json:
    return reference("preset", name)


def custom(uid: str) -> Json:
    return reference("custom", uid)


def lytics(ref: str) -> Json:
    return reference("lytics", ref)


def rule_for(attribute: Json, condition: str, options: Any = None, invert: bool = False) -> Json:
    """A Rule on a reference dict. `options` as a dict is used as-is; any other value is `{"value": options}`."""
    item: Json = {"__type": "Rule", "attribute": attribute, "attributeMatchCondition": condition}
    if options is not None:
        item["attributeMatchOptions"] = options if isinstance(options, dict) else {"value": options}
    item["invertCondition"] = invert
    return item


def rule(ref_type: str, ref: str, condition: str, options: Any = None, invert: bool = False) -> Json:
    """`rule("preset", "COUNTRY", "STRING_EQUALS", "GB")`; see `rule_for` for `options`."""
    return rule_for(reference(ref_type, ref), condition, options, invert)


def custom_rule(key: str, condition: str, options: Any = None, invert: bool = False) -> Json:
    """A rule on the custom attribute with this key (its uid is `uid_for(key)`)."""
    return rule("custom", uid_for(key), condition, options, invert)


def group(combination: str, *rules: Json) -> Json:
    return {"__type": "RuleCombination", "combinationType": combination, "rules": list(rules)}


# -- resources -------------------------------------------------------------------------------------


def attribute(key: str) -> Json:
    return {"uid": uid_for(key), "name": key.title(), "key": key, "description": f"test attribute {key}"}


def audience(name: str, definition: Json) -> Json:
    return {"uid": uid_for(name), "name": name, "definition": definition}


def lytics_audience(slug: str) -> Json:
    return {"uid": lytics_uid(slug), "name": f"{slug} (Lytics)", "slug": slug, "source": "LYTICS"}


def event(key: str) -> Json:
    return {"uid": uid_for(f"event:{key}"), "key": key, "description": f"test event {key}"}


def experience(name: str, short_uid: str, kind: str = "SEGMENTED", tags: Sequence[str] | None = None) -> Json:
    item: Json = {"uid": uid_for(f"experience:{name}"), "name": name, "shortUid": short_uid, "__type": kind}
    if tags is not None:
        item["tags"] = list(tags)
    return item


def segmented_variant(
    short_uid: str,
    audiences: Iterable[str] = (),
    *,
    lytics_audiences: Iterable[str] | None = None,
    combination: str = "OR",
    target: Json | None = None,
) -> Json:
    """A SegmentedVariant; `audiences` are audience uids."""
    item: Json = {
        "__type": "SegmentedVariant",
        "shortUid": short_uid,
        "name": f"variant {short_uid}",
        "audiences": list(audiences),
        "audienceCombinationType": combination,
    }
    if lytics_audiences is not None:
        item["lyticsAudiences"] = list(lytics_audiences)
    if target is not None:
        item["target"] = target
    return item


def ab_variant(short_uid: str, traffic: float | None = None) -> Json:
    item: Json = {"__type": "ABTestVariant", "shortUid": short_uid, "name": f"variant {short_uid}"}
    if traffic is not None:
        item["trafficDistribution"] = traffic
    return item


def version(status: str, variants: Sequence[Json], **extra: Any) -> Json:
    item: Json = {"uid": uid_for(f"version:{status}:{json.dumps(variants, sort_keys=True)}"), "status": status}
    item["variants"] = list(variants)
    item.update(extra)
    return item


# -- the tree --------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def write_rules(
    tmp_path: Path,
    *,
    attributes: Sequence[Json] = (),
    audiences: Sequence[Json] = (),
    events: Sequence[Json] = (),
    experiences: Sequence[tuple[Json, Sequence[Json]]] = (),
    priority: Sequence[str] | None = None,
    project_uid: str = PROJECT_UID,
) -> Path:
    """Write `tmp_path/personalize` in the CLI-export layout (SPEC §3) and return that folder.

    `experiences` pairs an experiences.json entry with the versions written to `versions/<uid>.json`;
    `priority` writes experiences-priority.json when given.
    """
    root = tmp_path / "personalize"
    _write_json(root / "projects" / "projects.json", [{"uid": project_uid, "name": "Test project"}])
    _write_json(root / "attributes" / "attributes.json", list(attributes))
    _write_json(root / "audiences" / "audiences.json", list(audiences))
    _write_json(root / "events" / "events.json", list(events))
    _write_json(root / "experiences" / "experiences.json", [item for item, _ in experiences])
    for item, versions in experiences:
        _write_json(root / "experiences" / "versions" / f"{item['uid']}.json", list(versions))
    if priority is not None:
        _write_json(root / "experiences-priority.json", {"priorityOrder": list(priority)})
    return root


SEGMENT_AUDIENCE = "segment under test"


def segmented_experience(
    tmp_path: Path,
    definition: Json,
    *,
    attribute_keys: Iterable[str] = STANDARD_ATTRIBUTE_KEYS,
    lytics_slugs: Iterable[str] = STANDARD_LYTICS_SLUGS,
) -> Path:
    """A one-experience project: experience "0", variant "0" targets one audience with `definition`.

    So "is the visitor in the audience" == `decide_one(...)["activeVariants"]["0"] == "0"`.
    """
    return write_rules(
        tmp_path,
        attributes=[attribute(key) for key in attribute_keys],
        audiences=[audience(SEGMENT_AUDIENCE, definition), *(lytics_audience(slug) for slug in lytics_slugs)],
        experiences=[
            (
                experience("segmented", "0"),
                [version("ACTIVE", [segmented_variant("0", [uid_for(SEGMENT_AUDIENCE)])])],
            )
        ],
    )


# -- deciding --------------------------------------------------------------------------------------


def _snapshot(rules: str | Path | CompiledSnapshot) -> CompiledSnapshot:
    return rules if isinstance(rules, CompiledSnapshot) else load_snapshot(rules)


def decide_one(
    rules: str | Path | CompiledSnapshot,
    description: Mapping[str, Any],
    tags: Sequence[str] | None = None,
    *,
    geo_lookup: GeoLookup | None = None,
) -> Json:
    """Decide one SPEC §9 request description; returns `Manifest.to_dict()`.

    `tags` overrides the description's own `tags`. The clock is `FIXED_NOW`, new users get `NEW_UID`.
    """
    snapshot = _snapshot(rules)
    described = context_from_description(
        dict(description),
        clock=lambda: FIXED_NOW_TS,
        new_uid=lambda: NEW_UID,
        classifier=snapshot.classifier,
        geo_lookup=geo_lookup,
    )
    chosen_tags = tags if tags is not None else described.tags
    return snapshot.decide(described.context, chosen_tags).to_dict()


def explain_one(
    rules: str | Path | CompiledSnapshot,
    description: Mapping[str, Any],
    tags: Sequence[str] | None = None,
    *,
    geo_lookup: GeoLookup | None = None,
) -> Json:
    """The explanation trace (edgeproxy.engine.explain) of the same decision `decide_one` makes."""
    snapshot = _snapshot(rules)
    described = context_from_description(
        dict(description),
        clock=lambda: FIXED_NOW_TS,
        new_uid=lambda: NEW_UID,
        classifier=snapshot.classifier,
        geo_lookup=geo_lookup,
    )
    chosen_tags = tags if tags is not None else described.tags
    return explain(snapshot, described.context, chosen_tags)


def in_segment(
    rules: str | Path | CompiledSnapshot, description: Mapping[str, Any], *, geo_lookup: GeoLookup | None = None
) -> bool:
    """Whether the visitor is in the audience of a `segmented_experience` project."""
    manifest = decide_one(rules, description, geo_lookup=geo_lookup)
    variant = manifest["activeVariants"]["0"]
    assert variant in ("0", None), manifest
    return variant == "0"
