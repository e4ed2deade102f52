"""Write a fetched tree as a validated export plus its compiled snapshot, atomically.

Layout of an output folder:
    out/versions/<version>/personalize/...   one export tree per snapshot version (a few are kept)
    out/personalize -> versions/<version>/personalize   symlink, swapped with one rename
    out/snapshot.msgpack                     the compiled snapshot (last good), replaced with one rename
    out/rejected/personalize/...             the last tree that failed validation, kept to inspect: the error
                                             of a rejected sync names a file in it
So `--rules out` and `--rules out/snapshot.msgpack` both always read one complete snapshot.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeproxy.engine.decide import CompiledSnapshot, compile_project
from edgeproxy.engine.errors import RulesError
from edgeproxy.engine.useragent import UserAgentClassifier
from edgeproxy.files.rules import load_project
from edgeproxy.files.snapshot_file import project_version, write_snapshot_file

KEEP_VERSIONS = 5
SNAPSHOT_FILE = "snapshot.msgpack"
REJECTED_DIR = "rejected"


def write_export(
    out: str | Path, files: dict[str, Any], classifier: UserAgentClassifier | None = None
) -> CompiledSnapshot:
    """Validate (RulesError leaves `out` untouched) then publish. Returns the compiled snapshot."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    link = out / "personalize"
    if link.exists() and not link.is_symlink():
        raise OSError(f"{link} is a real folder, not one written by `edgeproxy sync`; choose another --out")
    (out / "versions").mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out / "versions"))
    try:
        root = staging / "personalize"
        for relative, data in files.items():
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        try:
            project = load_project(root)  # validation: RulesError names the file and JSON path
        except RulesError as exc:
            raise _kept_rejected(out, staging, exc) from None
        version = project_version(project)
        final = out / "versions" / version.replace(":", "-")
        if final.exists():
            shutil.rmtree(staging)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    snapshot = compile_project(load_project(final / "personalize"), version, classifier)
    write_snapshot_file(snapshot, out / SNAPSHOT_FILE)
    temp_link = out / f".personalize-{os.getpid()}.tmp"
    temp_link.unlink(missing_ok=True)
    os.symlink(Path("versions") / final.name / "personalize", temp_link)
    os.replace(temp_link, link)
    _prune(out / "versions", keep=final.name)
    return snapshot


def _kept_rejected(out: Path, staging: Path, exc: RulesError) -> RulesError:
    """Move a tree that failed validation to `out/rejected` (replacing the previous one) and name the file there:
    the staging folder the loader saw is gone once the sync is over."""
    rejected = out / REJECTED_DIR
    try:
        shutil.rmtree(rejected, ignore_errors=True)
        os.replace(staging, rejected)
    except OSError:
        return RulesError(f"{exc.file} (from Admin; this export was not kept)", exc.path, exc.problem)
    return RulesError(exc.file.replace(str(staging), str(rejected), 1), exc.path, exc.problem)


def _prune(versions: Path, keep: str) -> None:
    entries = sorted(
        (p for p in versions.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[KEEP_VERSIONS:]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
