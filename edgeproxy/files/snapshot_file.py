"""The compiled snapshot on disk: a msgpack file holding the validated model, and its version hash.

Reading the file skips JSON parsing and validation (the writer validated); predicates are rebuilt from
the model, which is cheap. The version is a content hash of the model, so two instances that loaded the
same rules report the same version, whatever the path or the file timestamps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import msgpack

from edgeproxy.engine import model
from edgeproxy.engine.decide import CompiledSnapshot, compile_project
from edgeproxy.engine.errors import RulesError
from edgeproxy.engine.useragent import UserAgentClassifier
from edgeproxy.files.rules import load_project

FORMAT = "edgeproxy-snapshot"
FORMAT_VERSION = 1
_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        model.Rule,
        model.RuleGroup,
        model.Attribute,
        model.Audience,
        model.Event,
        model.AudienceCondition,
        model.Variant,
        model.Metric,
        model.Experience,
        model.OmittedExperience,
        model.Project,
    )
}


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        encoded = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        encoded["@"] = type(value).__name__
        return encoded
    if isinstance(value, tuple | list):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        kind = value.get("@")
        fields = {k: _decode(v) for k, v in value.items() if k != "@"}
        if kind is None:
            return fields
        cls = _TYPES.get(kind)
        if cls is None:
            raise ValueError(f"unknown model type {kind!r}")
        return cls(**fields)
    if isinstance(value, list):
        return tuple(_decode(item) for item in value)
    return value


def project_version(project: model.Project) -> str:
    """Content hash of what decides: the model without its source path."""
    body = _encode(dataclasses.replace(project, source=""))
    return "sha256:" + hashlib.sha256(msgpack.packb(body, use_bin_type=True)).hexdigest()[:32]


def dump_snapshot(snapshot: CompiledSnapshot) -> bytes:
    data: bytes = msgpack.packb(
        {
            "format": FORMAT,
            "formatVersion": FORMAT_VERSION,
            "version": snapshot.version,
            "project": _encode(snapshot.project),
        },
        use_bin_type=True,
    )
    return data


def write_snapshot_file(snapshot: CompiledSnapshot, path: str | Path) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, 0o644)  # readable like any export file, not private like a temp file
        with os.fdopen(fd, "wb") as handle:
            handle.write(dump_snapshot(snapshot))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_snapshot_bytes(data: bytes, where: str, classifier: UserAgentClassifier | None = None) -> CompiledSnapshot:
    try:
        document = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise RulesError(
            where, "", f"not a readable msgpack snapshot ({exc}); recompile it with `edgeproxy compile`"
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise RulesError(
            where, "", "not an edgeproxy snapshot; create one with `edgeproxy compile --rules DIR -o FILE`"
        )
    if document.get("formatVersion") != FORMAT_VERSION:
        raise RulesError(
            where,
            "formatVersion",
            f"snapshot format {document.get('formatVersion')!r} is not {FORMAT_VERSION}; recompile it",
        )
    try:
        project = _decode(document["project"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RulesError(where, "project", f"damaged snapshot ({exc}); recompile it") from None
    if not isinstance(project, model.Project):
        raise RulesError(where, "project", "damaged snapshot; recompile it")
    version = str(document.get("version") or project_version(project))
    return compile_project(project, version, classifier)


def load_snapshot(path: str | Path, classifier: UserAgentClassifier | None = None) -> CompiledSnapshot:
    """`--rules` everywhere: a rules directory (export layout) or a compiled `.msgpack` file."""
    source = Path(path)
    if source.is_file():
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise RulesError(str(source), "", f"cannot be read: {exc}") from None
        return read_snapshot_bytes(data, str(source), classifier)
    project = load_project(source)
    return compile_project(project, project_version(project), classifier)
