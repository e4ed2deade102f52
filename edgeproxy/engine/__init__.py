"""The pure decision engine: snapshot model, loading + validation, compilation, bucketing, decide, explain.

Nothing in this package imports aiohttp or performs network I/O; loaders read files only when asked.
"""

from edgeproxy.engine.context import Geo, VisitorContext, context_from_description
from edgeproxy.engine.decide import CompiledSnapshot, Manifest, compile_project
from edgeproxy.engine.errors import RequestDescriptionError, RulesError
from edgeproxy.engine.loader import load_project
from edgeproxy.files.snapshot_file import load_snapshot, write_snapshot_file

__all__ = [
    "CompiledSnapshot",
    "Geo",
    "Manifest",
    "RequestDescriptionError",
    "RulesError",
    "VisitorContext",
    "compile_project",
    "context_from_description",
    "load_project",
    "load_snapshot",
    "write_snapshot_file",
]
