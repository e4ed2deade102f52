"""A rules folder in the Contentstack CLI export layout (docs/contract.md §3), read into JSON documents.

Reading is all this does: the engine (edgeproxy/engine/validate.py) validates the documents. A file that cannot be
read or parsed is kept as its error, raised by the validation only if the file is needed, as when it was read on
demand.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeproxy.engine.errors import RulesError
from edgeproxy.engine.model import Project
from edgeproxy.engine.validate import RulesDocument, RulesExport, project_from_export

# Every file of the layout but the versions, which are found by listing experiences/versions/.
EXPORT_FILES = (
    "projects/projects.json",
    "attributes/attributes.json",
    "events/events.json",
    "audiences/audiences.json",
    "experiences/experiences.json",
    "experiences-priority.json",
    "experiences/experiences-priority.json",
)
VERSIONS_FOLDER = "experiences/versions"


def find_personalize_dir(path: str | Path) -> Path:
    """Accept the `personalize/` folder itself or a parent that contains it (docs/contract.md §3)."""
    root = Path(path)
    if not root.exists():
        raise RulesError(str(root), "", "does not exist; pass the export's personalize/ folder or its parent")
    if not root.is_dir():
        raise RulesError(str(root), "", "is not a directory; pass the export's personalize/ folder or its parent")
    if (root / "personalize").is_dir():
        return root / "personalize"
    if (root / "experiences").is_dir() or (root / "projects").is_dir():
        return root
    raise RulesError(
        str(root),
        "",
        "is not a Personalize export: expected projects/ and experiences/ inside it, or a personalize/ "
        "folder containing them (as `csdx cm:stacks:export` writes)",
    )


def read_document(file: Path) -> RulesDocument:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return RulesDocument(str(file), error=RulesError(str(file), "", f"cannot be read: {exc}"))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        return RulesDocument(str(file), error=RulesError(str(file), where, f"not valid JSON: {exc.msg}"))
    return RulesDocument(str(file), data)


def read_rules(path: str | Path) -> RulesExport:
    """Every JSON file of the export at `path` (the `personalize/` folder or its parent)."""
    root = find_personalize_dir(path)
    relatives = [relative for relative in EXPORT_FILES if (root / relative).exists()]
    versions = root / VERSIONS_FOLDER
    if versions.is_dir():
        relatives += sorted(file.relative_to(root).as_posix() for file in versions.rglob("*.json"))
    return RulesExport(str(root), {relative: read_document(root / relative) for relative in relatives})


def load_project(path: str | Path) -> Project:
    """Read, validate and normalize a rules folder. Raises `RulesError` on the first problem."""
    return project_from_export(read_rules(path))
