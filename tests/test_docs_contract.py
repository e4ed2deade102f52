"""Issue 15 items 11 and 12: the README and docs/contract.md are the user's contract in a clone — nothing they or
the code's messages cite lives outside the repository, and the sections a new user looked for are there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "docs" / "contract.md"
CITATION = re.compile(r"docs/contract\.md\)?\s*§(\d+)")


def _sections() -> set[str]:
    return set(re.findall(r"^## (\d+)\.", CONTRACT.read_text(), flags=re.MULTILINE))


def _user_strings(path: Path) -> list[str]:
    """String literals of a module that are not docstrings: messages, help texts, errors."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_document_outside_the_repository_is_cited() -> None:
    for doc in (ROOT / "README.md", ROOT / "rules" / "README.md", CONTRACT):
        text = doc.read_text()
        assert "../shared" not in text and "SPEC.md" not in text, doc
        assert not re.search(r"\bSPEC §", text), doc
    for module in (ROOT / "edgeproxy").rglob("*.py"):
        for literal in _user_strings(module):
            assert "SPEC" not in literal.replace("_SPECIAL", ""), (module, literal)
            assert "../shared" not in literal, (module, literal)


def test_every_contract_citation_names_a_section_that_exists() -> None:
    sections = _sections()
    assert {"3", "4", "5", "6", "7", "8", "9"} <= sections
    cited = [(p, n) for p in [ROOT / "README.md", ROOT / "rules" / "README.md", *(ROOT / "edgeproxy").rglob("*.py")]
             for n in CITATION.findall(p.read_text())]  # fmt: skip
    assert cited
    missing = [(str(p.relative_to(ROOT)), n) for p, n in cited if n not in sections]
    assert not missing, missing


def test_the_readme_has_what_a_new_user_looked_for() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    assert "### `edgeproxy publish`" in text  # item 12: publish has a section
    routes_row = next(line for line in text.splitlines() if line.startswith("| `routes` |"))
    assert "`cache`" in routes_row  # item 12: [[routes]] cache = false in the settings table
    run_part = text[: text.index("**Test it**")]
    assert "--ops-token demo" in run_part and "dashboard?token=demo" in run_part  # item 12: the demo's dashboard
    for status in ("**401**", "**403**", "**405**", "**404**", "WWW-Authenticate"):  # item 9
        assert status in text, status
    assert "### `edgeproxy publish`" in text and "[docs/contract.md](docs/contract.md)" in text
