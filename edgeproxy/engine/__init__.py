"""The pure decision engine: snapshot model, validation, compilation, bucketing, decide, explain.

Nothing in this package imports aiohttp or performs I/O: it validates documents that edgeproxy.files reads.
"""

from edgeproxy.engine.context import Geo, VisitorContext, context_from_description
from edgeproxy.engine.decide import CompiledSnapshot, Manifest, compile_project
from edgeproxy.engine.errors import RequestDescriptionError, RulesError

__all__ = [
    "CompiledSnapshot",
    "Geo",
    "Manifest",
    "RequestDescriptionError",
    "RulesError",
    "VisitorContext",
    "compile_project",
    "context_from_description",
]
