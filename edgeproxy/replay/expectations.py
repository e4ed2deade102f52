"""Expectation files: request -> expected variants, the CI test of a rule set (`--expect FILE`).

YAML or JSON. A list of cases, or an object with `expectations` (and optional `defaults`, merged into every
request, e.g. a fixed `now`):

```yaml
defaults:
  now: "2026-11-22T10:00:00Z"
expectations:
  - name: London newcomer sees the UK hero
    request: {url: "https://shop.example/", userUid: v01, geo: {country: GB, region: ENG, city: London}}
    expect:
      "0": "2"                # experience shortUid (or uid, or name) -> variant shortUid (or name)
      Loyalty upsell: null    # null: not in that experience
      "2": ["0", "1"]         # a list: any of these (may include null)
```

A case passes when every named experience got what it expects. Experiences and variants that do not exist in the
snapshot are errors of the file (exit 2), not failed expectations, so a renamed experience cannot pass silently.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeproxy.engine.context import GeoLookup, context_from_description
from edgeproxy.engine.decide import CompiledExperience, CompiledSnapshot
from edgeproxy.engine.errors import RequestDescriptionError
from edgeproxy.engine.explain import explain, render_explanation

_ANY_OF = "anyOf"
# Spellings of "not in the experience" besides null (only when no variant has that name).
_NOT_IN_EXPERIENCE = frozenset({"null", "none", "not in experience", "-"})
_EXPECT_KEYS = ("expect", "expected", "variants", "activeVariants")


class ExpectationsError(ValueError):
    """The expectation file is malformed or names something the snapshot does not have: file, path, fix."""

    def __init__(self, file: str, path: str, problem: str) -> None:
        super().__init__(f"{file}: {path}: {problem}")
        self.file = file
        self.path = path


@dataclass(frozen=True, slots=True)
class Expectation:
    name: str
    request: dict[str, Any]
    # experience shortUid -> acceptable variant shortUids (None = not in the experience)
    expect: tuple[tuple[str, tuple[str | None, ...]], ...]
    where: str


@dataclass(frozen=True, slots=True)
class ExpectationResult:
    expectation: Expectation
    passed: bool
    failures: tuple[dict[str, Any], ...]
    manifest: dict[str, Any]
    explanation: dict[str, Any] | None
    text: str  # readable explanation of the failed experiences ("" when passed)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.expectation.name,
            "where": self.expectation.where,
            "passed": self.passed,
            "expected": {su: list(values) for su, values in self.expectation.expect},
            "actual": self.manifest["activeVariants"],
            "manifest": self.manifest,
        }
        if not self.passed:
            data["failures"] = list(self.failures)
            data["explanation"] = self.explanation
        return data


def _load_document(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExpectationsError(str(path), "$", f"cannot be read: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExpectationsError(str(path), f"line {exc.lineno}", f"not valid JSON: {exc.msg}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "$"
        raise ExpectationsError(str(path), where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None


def _experience_index(snapshot: CompiledSnapshot) -> Callable[[str], CompiledExperience | None]:
    by_short = {ce.short_uid: ce for ce in snapshot.experiences}
    by_uid = {ce.experience.uid: ce for ce in snapshot.experiences}
    by_name = {ce.experience.name.casefold(): ce for ce in snapshot.experiences}

    def find(key: str) -> CompiledExperience | None:
        return by_short.get(key) or by_uid.get(key) or by_name.get(key.casefold())

    return find


def _variant_id(ce: CompiledExperience, value: Any, file: str, path: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ExpectationsError(file, path, f"expected a variant shortUid or name, or null; found {value!r}")
    text = str(value)
    alias_prefix = f"cs_personalize_{ce.short_uid}_"
    if text.startswith(alias_prefix):  # a variant alias (docs/contract.md §2) names the variant too
        text = text[len(alias_prefix) :]
    for variant in ce.experience.variants:
        if variant.short_uid == text:
            return text
    for variant in ce.experience.variants:
        if variant.name.casefold() == text.casefold():
            return variant.short_uid
    if text.strip().casefold() in _NOT_IN_EXPERIENCE:
        return None
    known = ", ".join(f"{v.short_uid} ({v.name})" for v in ce.experience.variants)
    raise ExpectationsError(
        file, path, f"experience {ce.short_uid} ({ce.experience.name!r}) has no variant {text!r}; known: {known}"
    )


def load_expectations(path: str | Path, snapshot: CompiledSnapshot) -> list[Expectation]:
    file = str(path)
    document = _load_document(Path(path))
    defaults: dict[str, Any] = {}
    if isinstance(document, dict):
        raw_defaults = document.get("defaults", {})
        if not isinstance(raw_defaults, dict):
            raise ExpectationsError(file, "defaults", "expected an object of request fields (e.g. now)")
        defaults = raw_defaults
        prefix = next((k for k in ("expectations", "tests", "cases") if k in document), "expectations")
        cases = document.get(prefix)
    else:
        cases, prefix = document, "$"
    if not isinstance(cases, list):
        raise ExpectationsError(
            file, "$", "expected a list of cases, or an object with `expectations: [...]` (see README)"
        )
    find = _experience_index(snapshot)
    expectations = []
    for index, case in enumerate(cases):
        where = f"{prefix}[{index}]"
        if not isinstance(case, dict):
            raise ExpectationsError(file, where, "each case must be an object with `request` and `expect`")
        request = case.get("request", {})
        if not isinstance(request, dict):
            raise ExpectationsError(
                file, f"{where}.request", "expected a request description object (docs/contract.md §9)"
            )
        key = next((k for k in _EXPECT_KEYS if k in case), "expect")
        expect = case.get(key)
        if not isinstance(expect, dict) or not expect:
            raise ExpectationsError(
                file, f"{where}.{key}", 'expected an object of experience -> variant (or null), e.g. {"0": "2"}'
            )
        parsed: list[tuple[str, tuple[str | None, ...]]] = []
        for exp_key, value in expect.items():
            ce = find(str(exp_key))
            if ce is None:
                known = ", ".join(f"{c.short_uid} ({c.experience.name})" for c in snapshot.experiences)
                problem = f"no live experience {exp_key!r} in this snapshot; known: {known}"
                raise ExpectationsError(file, f"{where}.{key}.{exp_key}", problem)
            values = value if isinstance(value, list) else [value]
            if isinstance(value, dict) and _ANY_OF in value and isinstance(value[_ANY_OF], list):
                values = value[_ANY_OF]
            ids = tuple(_variant_id(ce, v, file, f"{where}.{key}.{exp_key}") for v in values)
            parsed.append((ce.short_uid, ids))
        merged = {**defaults, **request}
        if "tags" in case and "tags" not in request:
            merged["tags"] = case["tags"]
        name = case.get("name")
        expectations.append(
            Expectation(
                name=str(name) if name is not None else f"case {index + 1}",
                request=merged,
                expect=tuple(parsed),
                where=f"{file}#{where}",
            )
        )
    return expectations


def check_expectation(
    expectation: Expectation,
    snapshot: CompiledSnapshot,
    *,
    clock: Callable[[], float],
    geo_lookup: GeoLookup | None,
) -> ExpectationResult:
    seed = hashlib.md5(expectation.where.encode(), usedforsecurity=False).digest()
    try:
        described = context_from_description(
            expectation.request,
            clock=clock,
            new_uid=lambda: str(uuid.UUID(bytes=seed, version=4)),
            classifier=snapshot.classifier,
            geo_lookup=geo_lookup,
        )
    except RequestDescriptionError as exc:
        file, _, path = expectation.where.partition("#")
        raise ExpectationsError(file, f"{path}.request", str(exc)) from None
    forcing = described.forcing
    if forcing is None:
        manifest = snapshot.decide(described.context, described.tags)
    else:  # the request's `preview` (SPEC §10)
        manifest = snapshot.decide_forced(described.context, described.tags, forcing)
    active = {su: (None if v is None else v.short_uid) for su, v in manifest.entries}
    failures = []
    for short_uid, acceptable in expectation.expect:
        actual = active.get(short_uid)
        if actual not in acceptable:
            failures.append(
                {
                    "experience": short_uid,
                    "expected": acceptable[0] if len(acceptable) == 1 else list(acceptable),
                    "actual": actual,
                    "decided": short_uid in active,
                }
            )
    if not failures:
        return ExpectationResult(expectation, True, (), manifest.to_dict(), None, "")
    trace = explain(snapshot, described.context, described.tags, forcing)
    failing = {f["experience"] for f in failures}
    focused = {
        **trace,
        "experiences": [e for e in trace["experiences"] if e["shortUid"] in failing],
        "filteredOutByTags": [e for e in trace["filteredOutByTags"] if e["shortUid"] in failing],
        "omitted": [],
    }
    return ExpectationResult(expectation, False, tuple(failures), manifest.to_dict(), focused,
                             render_explanation(focused))  # fmt: skip


def describe_failure(failure: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, list):
            return "one of " + ", ".join("null" if v is None else repr(v) for v in value)
        return "null (not in experience)" if value is None else repr(value)

    where = "" if failure["decided"] else " (experience not decided for this request: tags or not live)"
    expected, actual = show(failure["expected"]), show(failure["actual"])
    return f"experience {failure['experience']}: expected {expected}, got {actual}{where}"
