"""Validate and normalize a rules export in the Contentstack CLI layout (docs/contract.md §3) into a `Project`.

The export arrives as parsed JSON documents (edgeproxy/files/rules.py reads them from a folder); this module
validates everything the decision can depend on and only then returns a `Project`. Any problem raises one
`RulesError` naming the file, the JSON path and the fix, so nothing half-loaded is ever used. DRAFT versions, which
only previews decide (SPEC §10), are the exception: one that does not validate is left out and reported in
`Project.draft_problems`, since a marketer's work in progress must not stop the live rules from loading.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeproxy.engine.errors import RulesError
from edgeproxy.engine.model import (
    ALL_CONDITIONS,
    LYTICS_REFS,
    NUMBER_CONDITIONS,
    PRESET_ATTRIBUTES,
    STRING_CONDITIONS,
    Attribute,
    Audience,
    AudienceCondition,
    Combination,
    CurrentStatus,
    Event,
    Experience,
    ExperienceType,
    Metric,
    OmittedExperience,
    Operand,
    Project,
    Rule,
    RuleGroup,
    Variant,
    parse_iso_time,
)

VERSION_STATUSES = frozenset({"DRAFT", "ACTIVE", "PAUSED", "ARCHIVED"})
FULL_WEIGHT = 10_000  # basis points (docs/contract.md §4.6)
MAX_RULE_DEPTH = 32  # Personalize's editor nests a few levels; this bounds recursion on hostile input


@dataclass(frozen=True, slots=True)
class RulesDocument:
    """One JSON file of an export: its parsed `data`, or the `error` that reading it met (raised only if the
    validation needs the file, so a broken file nothing refers to is no error)."""

    name: str  # the file, as messages name it
    data: Any = None
    error: RulesError | None = None


@dataclass(frozen=True, slots=True)
class RulesExport:
    """A `personalize/` folder's JSON files, by path relative to it ("audiences/audiences.json")."""

    source: str  # the folder, for messages and status pages
    documents: Mapping[str, RulesDocument]

    def name_of(self, relative: str) -> str:
        return posixpath.join(self.source, relative)


class _Doc:
    """One JSON file being validated: knows its name so every error can say where it is."""

    def __init__(self, name: str, relative: str, data: Any) -> None:
        self.name = name
        self.relative = relative  # path-independent name, part of the snapshot's content hash
        self.data = data

    def fail(self, path: str, problem: str) -> RulesError:
        return RulesError(self.name, path, problem)

    def obj(self, value: Any, path: str, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected {what} (a JSON object), found {_kind(value)}")
        return value

    def arr(self, value: Any, path: str, what: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected {what} (a JSON array), found {_kind(value)}")
        return value

    def text(self, obj: dict[str, Any], key: str, path: str, *, required: bool = True) -> str:
        value = obj.get(key)
        if value is None and not required:
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.fail(f"{path}.{key}", f"expected a string, found {_kind(value)}")
        text = str(value)
        if required and not text:
            raise self.fail(f"{path}.{key}", "must not be empty")
        return text


def _kind(value: Any) -> str:
    if value is None:
        return "null/missing"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


# (JSON path, the version object, the status it is decided with)
_ChosenVersion = tuple[str, dict[str, Any], CurrentStatus]


@dataclass(frozen=True, slots=True)
class _Versions:
    doc: _Doc
    current: _ChosenVersion | None
    draft: _ChosenVersion | None


@dataclass(frozen=True, slots=True)
class _ExperienceHead:
    """What experiences.json says of an experience; every version of it shares this."""

    uid: str
    short_uid: str
    name: str
    kind: ExperienceType
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Experiences:
    experiences: tuple[Experience, ...]
    omitted: tuple[OmittedExperience, ...]
    drafts: tuple[Experience, ...]
    draft_problems: tuple[str, ...]


def _in_decision_order(chosen: dict[str, Experience], priority: list[str]) -> tuple[Experience, ...]:
    """docs/contract.md §4.3: by priorityOrder; experiences missing from it follow in `chosen`'s (file) order."""
    ranked = [chosen[uid] for uid in priority if uid in chosen]
    listed = set(priority)
    ranked.extend(experience for uid, experience in chosen.items() if uid not in listed)
    return tuple(ranked)


def _read(export: RulesExport, relative: str, *, required: bool = True) -> _Doc | None:
    found = export.documents.get(relative)
    if found is None:
        if required:
            problem = "is missing; a Personalize export has this file (it may be `[]`)"
            raise RulesError(export.name_of(relative), "", problem)
        return None
    if found.error is not None:
        raise found.error
    return _Doc(found.name, relative, found.data)


def project_from_export(export: RulesExport) -> Project:
    """Validate and normalize an export's documents. Raises `RulesError` on the first problem."""
    return _ProjectLoader(export).load()


class _ProjectLoader:
    def __init__(self, export: RulesExport) -> None:
        self.export = export
        self.attributes: dict[str, Attribute] = {}
        self.audiences: dict[str, Audience] = {}
        self.raw_audiences: list[tuple[_Doc, str, dict[str, Any]]] = []

    def load(self) -> Project:
        project_uid = self._project_uid()
        self._load_attributes()
        events = self._load_events()
        self._load_audiences()
        loaded = self._load_experiences(events)
        return Project(
            uid=project_uid,
            attributes=tuple(self.attributes.values()),
            audiences=tuple(self.audiences.values()),
            events=tuple(events.values()),
            experiences=loaded.experiences,
            omitted=loaded.omitted,
            source=self.export.source,
            drafts=loaded.drafts,
            draft_problems=loaded.draft_problems,
        )

    # -- files ---------------------------------------------------------------------------------------

    def _project_uid(self) -> str:
        doc = _read(self.export, "projects/projects.json")
        assert doc is not None
        data = doc.data
        if isinstance(data, dict):  # tolerate a single project object
            data = [data]
        items = doc.arr(data, "$", "an array of projects")
        if not items:
            raise doc.fail("$", "no project in the file; the first item's uid is the project uid")
        first = doc.obj(items[0], "$[0]", "a project")
        return doc.text(first, "uid", "$[0]")

    def _load_attributes(self) -> None:
        doc = _read(self.export, "attributes/attributes.json", required=False)
        if doc is None:
            return
        for index, item in enumerate(doc.arr(doc.data, "$", "an array of attributes")):
            path = f"$[{index}]"
            obj = doc.obj(item, path, "an attribute")
            uid = doc.text(obj, "uid", path)
            key = doc.text(obj, "key", path)
            if uid in self.attributes:
                raise doc.fail(f"{path}.uid", f"duplicate attribute uid {uid!r}")
            self.attributes[uid] = Attribute(uid=uid, key=key, name=doc.text(obj, "name", path, required=False))

    def _load_events(self) -> dict[str, Event]:
        events: dict[str, Event] = {}
        doc = _read(self.export, "events/events.json", required=False)
        if doc is None:
            return events
        for index, item in enumerate(doc.arr(doc.data, "$", "an array of events")):
            path = f"$[{index}]"
            obj = doc.obj(item, path, "an event")
            uid = doc.text(obj, "uid", path)
            if uid in events:
                raise doc.fail(f"{path}.uid", f"duplicate event uid {uid!r}")
            events[uid] = Event(uid=uid, key=doc.text(obj, "key", path))
        return events

    def _load_audiences(self) -> None:
        doc = _read(self.export, "audiences/audiences.json", required=False)
        if doc is None:
            return
        items = doc.arr(doc.data, "$", "an array of audiences")
        pending: list[tuple[str, dict[str, Any], str]] = []
        # First pass: Lytics audiences and uids, so definitions may refer to any audience in the file.
        for index, item in enumerate(items):
            path = f"$[{index}]"
            obj = doc.obj(item, path, "an audience")
            uid = doc.text(obj, "uid", path)
            if uid in self.audiences or any(uid == p[0] for p in pending):
                raise doc.fail(f"{path}.uid", f"duplicate audience uid {uid!r}")
            name = doc.text(obj, "name", path, required=False)
            is_lytics = str(obj.get("source", "")).upper() == "LYTICS" or (
                "slug" in obj and obj.get("definition") is None
            )
            if is_lytics:
                slug = doc.text(obj, "slug", path)
                self.audiences[uid] = Audience(uid=uid, name=name, definition=None, lytics_slug=slug)
            else:
                pending.append((uid, obj, path))
        for uid, obj, path in pending:
            if obj.get("definition") is None:
                raise doc.fail(
                    f"{path}.definition",
                    "missing; a non-Lytics audience needs a RuleCombination definition "
                    '(Lytics audiences carry "source": "LYTICS" and a slug)',
                )
            definition = self._group(doc, obj["definition"], f"{path}.definition")
            self.audiences[uid] = Audience(
                uid=uid, name=doc.text(obj, "name", path, required=False), definition=definition, lytics_slug=None
            )

    def _load_experiences(self, events: dict[str, Event]) -> _Experiences:
        doc = _read(self.export, "experiences/experiences.json")
        assert doc is not None
        items = doc.arr(doc.data, "$", "an array of experiences")
        current: dict[str, Experience] = {}
        drafts: dict[str, Experience] = {}
        draft_problems: list[str] = []
        omitted: list[OmittedExperience] = []
        short_uids: dict[str, str] = {}
        uids: set[str] = set()
        for index, item in enumerate(items):
            path = f"$[{index}]"
            obj = doc.obj(item, path, "an experience")
            uid = doc.text(obj, "uid", path)
            short_uid = doc.text(obj, "shortUid", path)
            if "_" in short_uid or "," in short_uid:
                raise doc.fail(f"{path}.shortUid", f"{short_uid!r} must not contain '_' or ',' (aliases use them)")
            if short_uid in short_uids:
                raise doc.fail(f"{path}.shortUid", f"{short_uid!r} is also the shortUid of {short_uids[short_uid]}")
            if uid in uids:
                raise doc.fail(f"{path}.uid", f"duplicate experience uid {uid!r}")
            short_uids[short_uid] = uid
            uids.add(uid)
            name = doc.text(obj, "name", path, required=False)
            kind = doc.text(obj, "__type", path)
            if kind not in ("SEGMENTED", "AB_TEST"):
                raise doc.fail(f"{path}.__type", f"unknown experience type {kind!r}; expected SEGMENTED or AB_TEST")
            tags = self._tags(doc, obj.get("tags"), f"{path}.tags")
            head = _ExperienceHead(uid, short_uid, name, kind, tags)  # type: ignore[arg-type]
            versions = self._versions(uid)
            if isinstance(versions, str):
                omitted.append(OmittedExperience(uid=uid, short_uid=short_uid, name=name, reason=versions))
                continue
            if versions.current is None:
                omitted.append(
                    OmittedExperience(uid=uid, short_uid=short_uid, name=name, reason="no ACTIVE or PAUSED version")
                )
            else:
                path_of, version, status = versions.current
                current[uid] = self._version(versions.doc, path_of, version, status, head, events)
            if versions.draft is not None:
                path_of, version, _ = versions.draft
                try:
                    drafts[uid] = self._version(versions.doc, path_of, version, "ACTIVE", head, events, draft=True)
                except RulesError as exc:
                    # The file's relative name, not its path: the problems are part of the snapshot's content hash.
                    where = versions.doc.relative if exc.file == versions.doc.name else exc.file
                    draft_problems.append(
                        f"experience {short_uid}: {where}: {exc.path}: {exc.problem} "
                        "(this DRAFT version is left out of previews until it is fixed)"
                    )
        priority = self._priority()
        # A DRAFT version stands in for its experience's current version, or adds a draft-only experience.
        with_drafts = {
            uid: drafts.get(uid) or current[uid] for uid in short_uids.values() if uid in drafts or uid in current
        }
        return _Experiences(
            experiences=_in_decision_order(current, priority),
            omitted=tuple(omitted),
            drafts=_in_decision_order(with_drafts, priority) if drafts else (),
            draft_problems=tuple(draft_problems),
        )

    def _tags(self, doc: _Doc, value: Any, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        tags = doc.arr(value, path, "an array of tag strings")
        for index, tag in enumerate(tags):
            if not isinstance(tag, str):
                raise doc.fail(f"{path}[{index}]", f"expected a tag string, found {_kind(tag)}")
        return tuple(tags)

    def _priority(self) -> list[str]:
        doc = _read(self.export, "experiences-priority.json", required=False) or _read(
            self.export, "experiences/experiences-priority.json", required=False
        )
        if doc is None:
            return []
        obj = doc.obj(doc.data, "$", 'an object {"priorityOrder": [experienceUid, ...]}')
        order = doc.arr(obj.get("priorityOrder"), "$.priorityOrder", "an array of experience uids")
        seen: list[str] = []
        for index, uid in enumerate(order):
            if not isinstance(uid, str):
                raise doc.fail(f"$.priorityOrder[{index}]", f"expected an experience uid string, found {_kind(uid)}")
            if uid not in seen:
                seen.append(uid)
        return seen

    def _versions(self, uid: str) -> _Versions | str:
        """The versions file of an experience, its current version (docs/contract.md §4.1: the ACTIVE one, else the
        PAUSED one; the first of each in file order) and its first DRAFT; or why it has none."""
        relative = f"experiences/versions/{uid}.json"
        doc = _read(self.export, relative, required=False)
        if doc is None:
            return "no versions file"
        data = doc.data
        if isinstance(data, dict) and isinstance(data.get("versions"), list):
            data = data["versions"]
            base = "$.versions"
        else:
            base = "$"
        versions = doc.arr(data, base, "an array of experience versions")
        current: _ChosenVersion | None = None
        draft: _ChosenVersion | None = None
        for index, item in enumerate(versions):
            path = f"{base}[{index}]"
            obj = doc.obj(item, path, "an experience version")
            version_status = doc.text(obj, "status", path)
            if version_status not in VERSION_STATUSES:
                raise doc.fail(
                    f"{path}.status", f"unknown status {version_status!r}; expected one of {sorted(VERSION_STATUSES)}"
                )
            if version_status == "ACTIVE" and (current is None or current[2] != "ACTIVE"):
                current = (path, obj, "ACTIVE")
            elif version_status == "PAUSED" and current is None:
                current = (path, obj, "PAUSED")
            elif version_status == "DRAFT" and draft is None:
                draft = (path, obj, "ACTIVE")
        return _Versions(doc, current, draft)

    def _version(
        self,
        doc: _Doc,
        path: str,
        version: dict[str, Any],
        status: CurrentStatus,
        head: _ExperienceHead,
        events: dict[str, Event],
        *,
        draft: bool = False,
    ) -> Experience:
        """One version of an experience, validated: the current one, or a DRAFT (decided as ACTIVE in previews)."""
        variants_key = "variants" if "variants" in version else "variations"  # older exports
        raw_variants = doc.arr(version.get(variants_key), f"{path}.{variants_key}", "an array of variants")
        split_key = "variantSplit" if "variantSplit" in version else "variationSplit"
        split = version.get(split_key)
        if head.kind == "AB_TEST":
            variants = self._ab_variants(doc, raw_variants, f"{path}.{variants_key}", split, f"{path}.{split_key}")
        else:
            variants = self._segmented_variants(doc, raw_variants, f"{path}.{variants_key}")
        targeting = None
        if version.get("targeting") is not None:
            targeting = self._targeting(doc, version["targeting"], f"{path}.targeting")
        metrics = self._metrics(doc, version.get("metrics"), f"{path}.metrics", events)
        return Experience(
            uid=head.uid,
            short_uid=head.short_uid,
            name=head.name,
            type=head.kind,
            status=status,
            version_uid=str(version.get("uid", "")),
            tags=head.tags,
            variants=variants,
            targeting=targeting,
            metrics=metrics,
            draft=draft,
        )

    # -- variants -----------------------------------------------------------------------------------

    def _variant_head(
        self, doc: _Doc, raw: Any, path: str, expected_type: str, seen: set[str]
    ) -> tuple[dict[str, Any], str, str]:
        obj = doc.obj(raw, path, "a variant")
        declared = obj.get("__type", expected_type)
        if declared != expected_type:
            raise doc.fail(
                f"{path}.__type",
                f"{declared!r} does not fit this experience; expected {expected_type!r}",
            )
        short_uid = doc.text(obj, "shortUid", path)
        if "_" in short_uid or "," in short_uid:
            raise doc.fail(f"{path}.shortUid", f"{short_uid!r} must not contain '_' or ','")
        if short_uid in seen:
            raise doc.fail(f"{path}.shortUid", f"duplicate variant shortUid {short_uid!r} in this version")
        seen.add(short_uid)
        return obj, short_uid, doc.text(obj, "name", path, required=False)

    def _segmented_variants(self, doc: _Doc, raw: list[Any], path: str) -> tuple[Variant, ...]:
        seen: set[str] = set()
        variants = []
        for index, item in enumerate(raw):
            vpath = f"{path}[{index}]"
            obj, short_uid, name = self._variant_head(doc, item, vpath, "SegmentedVariant", seen)
            condition = self._audience_condition(doc, obj, vpath)
            variants.append(Variant(short_uid=short_uid, name=name, condition=condition, weight=0))
        return tuple(variants)

    def _ab_variants(self, doc: _Doc, raw: list[Any], path: str, split: Any, split_path: str) -> tuple[Variant, ...]:
        seen: set[str] = set()
        heads = [self._variant_head(doc, item, f"{path}[{i}]", "ABTestVariant", seen) for i, item in enumerate(raw)]
        if split is None:
            has_weights = any(obj.get("trafficDistribution") is not None for obj, _, _ in heads)
            split = "CUSTOM_PERCENTAGE" if has_weights else "EQUALLY_SPLIT"
        if split == "EQUALLY_SPLIT":
            # docs/contract.md §4.6: 10000 split evenly, the remainder one each to the first variants.
            count = len(heads)
            base, remainder = divmod(FULL_WEIGHT, count) if count else (0, 0)
            weights = [base + (1 if i < remainder else 0) for i in range(count)]
        elif split == "CUSTOM_PERCENTAGE":
            weights = []
            for index, (obj, _, _) in enumerate(heads):
                share = obj.get("trafficDistribution")
                if isinstance(share, bool) or not isinstance(share, int | float) or share < 0:
                    raise doc.fail(
                        f"{path}[{index}].trafficDistribution",
                        f"expected a percentage >= 0 for CUSTOM_PERCENTAGE, found {share!r}",
                    )
                weights.append(round(share * 100))
            if sum(weights) > FULL_WEIGHT:
                raise doc.fail(path, f"trafficDistribution adds up to {sum(weights) / 100}%, over 100%")
        else:
            raise doc.fail(split_path, f"unknown split {split!r}; expected EQUALLY_SPLIT or CUSTOM_PERCENTAGE")
        return tuple(
            Variant(short_uid=short_uid, name=name, condition=None, weight=weight)
            for (_, short_uid, name), weight in zip(heads, weights, strict=True)
        )

    def _targeting(self, doc: _Doc, raw: Any, path: str) -> AudienceCondition | None:
        obj = doc.obj(raw, path, 'targeting {"audience": {...}} or {"target": RuleCombination}')
        if obj.get("target") is not None:
            target = self._group(doc, obj["target"], f"{path}.target")
            return AudienceCondition(audiences=(), lytics_audiences=(), combination="AND", target=target)
        if obj.get("audience") is None:
            return None
        audience = doc.obj(obj["audience"], f"{path}.audience", "an audience selection")
        condition = self._audience_condition(doc, audience, f"{path}.audience")
        if condition is None:
            return None  # an empty audience selection targets everyone
        return condition

    def _audience_condition(self, doc: _Doc, obj: dict[str, Any], path: str) -> AudienceCondition | None:
        if obj.get("target") is not None:
            target = self._group(doc, obj["target"], f"{path}.target")
            return AudienceCondition(audiences=(), lytics_audiences=(), combination="AND", target=target)
        audiences = self._audience_refs(doc, obj.get("audiences"), f"{path}.audiences", lytics_only=False)
        lytics = self._audience_refs(doc, obj.get("lyticsAudiences"), f"{path}.lyticsAudiences", lytics_only=True)
        if not audiences and not lytics:
            return None  # docs/contract.md §4.5: a variant with neither matches nobody
        combination = self._combination(
            doc, obj.get("audienceCombinationType", "OR"), f"{path}.audienceCombinationType"
        )
        return AudienceCondition(audiences=audiences, lytics_audiences=lytics, combination=combination, target=None)

    def _audience_refs(self, doc: _Doc, raw: Any, path: str, *, lytics_only: bool) -> tuple[str, ...]:
        if raw is None:
            return ()
        refs = []
        for index, ref in enumerate(doc.arr(raw, path, "an array of audience uids")):
            if isinstance(ref, dict):  # some exports embed {"uid": ...}
                ref = ref.get("uid")
            if not isinstance(ref, str):
                raise doc.fail(f"{path}[{index}]", f"expected an audience uid string, found {_kind(ref)}")
            audience = self.audiences.get(ref)
            if audience is None:
                raise doc.fail(
                    f"{path}[{index}]",
                    f"audience {ref!r} is not in audiences/audiences.json; re-export or remove the reference",
                )
            if lytics_only and audience.lytics_slug is None:
                raise doc.fail(f"{path}[{index}]", f"audience {ref!r} is not a Lytics audience")
            refs.append(ref)
        return tuple(refs)

    def _combination(self, doc: _Doc, raw: Any, path: str) -> Combination:
        if raw not in ("AND", "OR"):
            raise doc.fail(path, f"unknown combination {raw!r}; expected AND or OR")
        return raw  # type: ignore[no-any-return]

    def _metrics(self, doc: _Doc, raw: Any, path: str, events: dict[str, Event]) -> tuple[Metric, ...]:
        if raw is None:
            return ()
        metrics = []
        for index, item in enumerate(doc.arr(raw, path, "an array of metrics")):
            mpath = f"{path}[{index}]"
            obj = doc.obj(item, mpath, "a metric")
            event = doc.text(obj, "event", mpath)
            if event not in events:
                raise doc.fail(f"{mpath}.event", f"event {event!r} is not in events/events.json")
            metrics.append(
                Metric(
                    kind=str(obj.get("__type", "Primary")),
                    name=doc.text(obj, "name", mpath, required=False),
                    event_uid=event,
                )
            )
        return tuple(metrics)

    # -- rules --------------------------------------------------------------------------------------

    def _group(self, doc: _Doc, raw: Any, path: str, depth: int = 0) -> RuleGroup:
        if depth >= MAX_RULE_DEPTH:
            raise doc.fail(path, f"rule groups nested deeper than {MAX_RULE_DEPTH} levels; flatten the audience")
        obj = doc.obj(raw, path, "a RuleCombination")
        kind = obj.get("__type")
        if kind == "Rule":  # a bare rule where a combination is expected: treat as AND of one
            return RuleGroup(combination="AND", rules=(self._rule(doc, obj, path),))
        if kind != "RuleCombination":
            raise doc.fail(f"{path}.__type", f"unknown rule type {kind!r}; expected RuleCombination or Rule")
        combination = self._combination(doc, obj.get("combinationType"), f"{path}.combinationType")
        rules: list[Rule | RuleGroup] = []
        for index, item in enumerate(doc.arr(obj.get("rules", []), f"{path}.rules", "an array of rules")):
            rpath = f"{path}.rules[{index}]"
            child = doc.obj(item, rpath, "a Rule or RuleCombination")
            child_kind = child.get("__type")
            if child_kind == "RuleCombination":
                rules.append(self._group(doc, child, rpath, depth + 1))
            elif child_kind == "Rule":
                rules.append(self._rule(doc, child, rpath))
            else:
                raise doc.fail(f"{rpath}.__type", f"unknown rule type {child_kind!r}; expected Rule or RuleCombination")
        return RuleGroup(combination=combination, rules=tuple(rules))

    def _rule(self, doc: _Doc, obj: dict[str, Any], path: str) -> Rule:
        ref = doc.obj(obj.get("attribute"), f"{path}.attribute", "an attribute reference")
        ref_type = ref.get("__type")
        ref_value = ref.get("ref")
        where = f"{doc.relative}#{path}"
        attribute_uid = ""
        if ref_type == "PresetAttributeReference":
            if ref_value not in PRESET_ATTRIBUTES:
                raise doc.fail(
                    f"{path}.attribute.ref",
                    f"unknown preset attribute {ref_value!r}; expected one of {list(PRESET_ATTRIBUTES)}",
                )
            kind = "preset"
            attribute = str(ref_value)
        elif ref_type == "CustomAttributeReference":
            custom = self.attributes.get(ref_value) if isinstance(ref_value, str) else None
            if custom is None:
                raise doc.fail(
                    f"{path}.attribute.ref",
                    f"custom attribute {ref_value!r} is not in attributes/attributes.json; add it or fix the uid",
                )
            kind = "custom"
            attribute = custom.key
            attribute_uid = custom.uid
        elif ref_type == "LyticsAttributeReference":
            if ref_value not in LYTICS_REFS:
                raise doc.fail(
                    f"{path}.attribute.ref",
                    f"unknown Lytics reference {ref_value!r}; expected one of {list(LYTICS_REFS)}",
                )
            kind = "lytics"
            attribute = str(ref_value)
        else:
            raise doc.fail(
                f"{path}.attribute.__type",
                f"unknown attribute reference {ref_type!r}; expected PresetAttributeReference, "
                "CustomAttributeReference or LyticsAttributeReference",
            )
        condition = obj.get("attributeMatchCondition")
        if condition not in ALL_CONDITIONS:
            raise doc.fail(
                f"{path}.attributeMatchCondition",
                f"unknown match condition {condition!r}; expected one of {sorted(ALL_CONDITIONS)}",
            )
        if (condition == "IS_MEMBER_OF") != (kind == "lytics" and attribute == "LYTICS_AUDIENCE"):
            raise doc.fail(f"{path}.attributeMatchCondition", "IS_MEMBER_OF goes with LYTICS_AUDIENCE, and only it")
        if (condition == "IS_IN_FLOW_STATE") != (kind == "lytics" and attribute == "LYTICS_FLOW_STATE"):
            raise doc.fail(
                f"{path}.attributeMatchCondition", "IS_IN_FLOW_STATE goes with LYTICS_FLOW_STATE, and only it"
            )
        invert = obj.get("invertCondition", False)
        if not isinstance(invert, bool):
            raise doc.fail(f"{path}.invertCondition", f"expected true or false, found {_kind(invert)}")
        operand = self._operand(doc, str(condition), obj.get("attributeMatchOptions"), f"{path}.attributeMatchOptions")
        return Rule(
            attribute_kind=kind,  # type: ignore[arg-type]
            attribute=attribute,
            attribute_uid=attribute_uid,
            condition=str(condition),
            operand=operand,
            invert=invert,
            where=where,
        )

    def _operand(self, doc: _Doc, condition: str, raw: Any, path: str) -> Operand:
        if condition in ("HAS_ANY_VALUE", "IS_TRUE", "IS_FALSE"):
            return None
        options = doc.obj(raw, path, f"match options for {condition}")
        value = options.get("value")
        if condition in STRING_CONDITIONS:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise doc.fail(f"{path}.value", f"{condition} needs a string value, found {_kind(value)}")
            return str(value)
        if condition in NUMBER_CONDITIONS:
            try:
                if isinstance(value, bool):
                    raise ValueError
                return float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise doc.fail(f"{path}.value", f"{condition} needs a number, found {value!r}") from None
        if condition == "JSON_MATCH":
            return self._json_match(doc, options, path)
        if condition in ("BEFORE_TIME", "AFTER_TIME"):
            return self._iso(doc, value, f"{path}.value")
        if condition == "BETWEEN_TIME":
            source = options["value"] if isinstance(value, dict) else options
            start = self._iso(doc, source.get("start"), f"{path}.start")
            end = self._iso(doc, source.get("end"), f"{path}.end")
            return (start, end)
        if condition == "IS_MEMBER_OF":
            audience = self.audiences.get(value) if isinstance(value, str) else None
            if audience is None or audience.lytics_slug is None:
                raise doc.fail(f"{path}.value", f"{value!r} is not a Lytics audience uid in audiences/audiences.json")
            return (audience.uid, audience.lytics_slug)
        # IS_IN_FLOW_STATE
        flow_id = options.get("flowId")
        flow_state = options.get("flowState")
        if not isinstance(flow_id, str) or not flow_id or not isinstance(flow_state, str) or not flow_state:
            raise doc.fail(path, 'IS_IN_FLOW_STATE needs {"flowId": "...", "flowState": "..."}')
        return f"{flow_id}:{flow_state}"

    def _json_match(self, doc: _Doc, options: dict[str, Any], path: str) -> tuple[tuple[str, str], ...]:
        value = options.get("value")
        if "key" in options:  # {key, value} form (ours)
            key = options["key"]
            if not isinstance(key, str) or not key:
                raise doc.fail(f"{path}.key", "JSON_MATCH key must be a non-empty string")
            return ((key, _scalar_text(doc, value, f"{path}.value")),)
        if isinstance(value, str):  # a JSON document given as a string
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise doc.fail(f"{path}.value", "JSON_MATCH value is a string that is not a JSON object") from None
        if not isinstance(value, dict) or not value:
            raise doc.fail(
                f"{path}.value", 'JSON_MATCH needs {"value": {"param": "expected", ...}} or {"key", "value"}'
            )
        return tuple((str(k), _scalar_text(doc, v, f"{path}.value.{k}")) for k, v in value.items())

    def _iso(self, doc: _Doc, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise doc.fail(path, f"expected an ISO-8601 date-time string, found {_kind(value)}")
        try:
            return parse_iso_time(value).isoformat()
        except ValueError:
            raise doc.fail(path, f"{value!r} is not an ISO-8601 date-time (e.g. 2026-11-27T00:00:00Z)") from None


def _scalar_text(doc: _Doc, value: Any, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise doc.fail(path, f"expected a string or number, found {_kind(value)}")
