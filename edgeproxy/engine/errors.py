"""Errors a user can meet when loading rules or describing a request."""

from __future__ import annotations


class RulesError(Exception):
    """A rules directory or snapshot file is invalid.

    Carries the file, the JSON path inside it and what to do, so a marketer or engineer can fix the
    export without reading our code. The previous snapshot keeps serving whenever this is raised.
    """

    def __init__(self, file: str, path: str, problem: str) -> None:
        self.file = file
        self.path = path
        self.problem = problem
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {problem}")


class RequestDescriptionError(ValueError):
    """A request description (docs/contract.md §9) has a field of the wrong shape."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"request description field {field!r}: {problem}")
