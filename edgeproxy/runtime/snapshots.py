"""The current snapshot of a running proxy: one reference, swapped atomically between requests."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeproxy.clock import Clock, system_clock
from edgeproxy.engine.decide import CompiledSnapshot
from edgeproxy.engine.memo import MemoDecider
from edgeproxy.visitor.identity import VisitorCookies


@dataclass(frozen=True, slots=True)
class LoadedSnapshot:
    snapshot: CompiledSnapshot
    source: str
    loaded_at: float
    # Decides like `snapshot.decide`, memoised per visitor features; lives and dies with this snapshot.
    decider: MemoDecider = field(init=False, compare=False, repr=False)
    # The Set-Cookie values of the manifests it decided, memoised per manifest; dies with it too.
    cookies: VisitorCookies = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decider", MemoDecider(self.snapshot))
        object.__setattr__(self, "cookies", VisitorCookies(self.decider))


class SnapshotHolder:
    """Requests read `current` once and use that object throughout, so no request sees two snapshots."""

    __slots__ = ("clock", "current", "last_error")

    def __init__(self, clock: Clock = system_clock) -> None:
        self.clock = clock
        self.current: LoadedSnapshot | None = None
        self.last_error: str | None = None

    def swap(self, snapshot: CompiledSnapshot, source: str) -> None:
        self.current = LoadedSnapshot(snapshot=snapshot, source=source, loaded_at=self.clock())
        self.last_error = None
