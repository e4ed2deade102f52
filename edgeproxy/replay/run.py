"""The replay loop: every record of the traffic decided under one snapshot (and optionally a second), counted.

One pass, streaming, and the proxy's own path: each record's context is built as `edgeproxy decide` builds it,
decided by the snapshot's `MemoDecider` (the proxy's decider; `--no-memo` gives it no memo), counted
(`Distribution`), and fed to the optional observers: rule coverage, the recorded-decision check (`--from-log`) and
the snapshot diff (`--against`, the same context decided under the second snapshot). A preview (a description's
`preview`, SPEC §10) is decided with its forcing and only checked against its recorded decision. Memory stays flat in
the size of the traffic, except with behavioural attributes (`--behaviour`, `replay/behaviour.py`): the records are
then read whole and decided in time order, each context given the visitor's behaviour before it is decided (under
both snapshots alike).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edgeproxy.engine.context import GeoLookup
from edgeproxy.engine.decide import CompiledSnapshot
from edgeproxy.engine.errors import RequestDescriptionError
from edgeproxy.engine.memo import MEMO_LIMIT, MemoDecider
from edgeproxy.replay.aggregate import Distribution, UserIndex
from edgeproxy.replay.behaviour import BehaviourReplay, in_time_order
from edgeproxy.replay.coverage import DEFAULT_RULE_SAMPLE, Coverage
from edgeproxy.replay.decider import ContextFactory
from edgeproxy.replay.diff import DEFAULT_EXPLAINED_MOVES, DEFAULT_SAMPLES_PER_MOVE, SnapshotDiff
from edgeproxy.replay.progress import Progress
from edgeproxy.replay.readers import Format, HarFilter, OpenSource, SourceStats, TrafficRecord, read_traffic
from edgeproxy.replay.verify import RecordedCheck
from edgeproxy.visitor.behaviour import BehaviourConfig

PROGRESS_EVERY = 4096


@dataclass
class ReplayOptions:
    traffic: list[str]
    format: Format | None = None
    har_filter: HarFilter = field(default_factory=HarFilter)
    geo_lookup: GeoLookup | None = None
    clock: Callable[[], float] = time.time
    memo: bool = True
    coverage: bool = True
    rule_sample: int = DEFAULT_RULE_SAMPLE
    verify_recorded: bool = False
    limit: int | None = None
    samples_per_move: int = DEFAULT_SAMPLES_PER_MOVE
    explained_moves: int = DEFAULT_EXPLAINED_MOVES
    # Behavioural attributes computed from the traffic (SPEC §13): records decided in time order.
    behaviour: BehaviourConfig | None = None
    # Consent mode (SPEC §11), as the proxy's config has it: (consent_cookie, consent_value).
    consent: tuple[str, str] | None = None


@dataclass
class ReplayResult:
    snapshot: CompiledSnapshot
    sources: list[SourceStats]
    requests: int
    users: int
    distribution: Distribution
    coverage: Coverage | None
    recorded: RecordedCheck | None
    against: CompiledSnapshot | None
    against_distribution: Distribution | None
    diff: SnapshotDiff | None
    seconds: float
    cpu_seconds: float
    memo_hits: int
    memo_misses: int
    behaviour_page_views: int | None = None  # page views counted for behavioural attributes (--behaviour)
    memo_bypassed: int = 0  # decisions made plain while the memo stepped aside (engine/memo.py StepAside)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def invalid(self) -> int:
        return sum(s.invalid for s in self.sources)


def replay(
    snapshot: CompiledSnapshot,
    options: ReplayOptions,
    *,
    against: CompiledSnapshot | None = None,
    progress: Progress | None = None,
) -> ReplayResult:
    sources: list[SourceStats] = []
    by_source: dict[str, SourceStats] = {}

    def opened(source: OpenSource) -> None:
        sources.append(source.stats)
        by_source[source.path] = source.stats
        if progress is not None:
            progress.open_source(source)

    make_context = ContextFactory(snapshot, options.geo_lookup, options.clock, consent=options.consent)
    behaviour = BehaviourReplay(options.behaviour) if options.behaviour is not None else None
    coverage = Coverage(snapshot, options.rule_sample) if options.coverage else None
    decider = MemoDecider(snapshot, limit=MEMO_LIMIT if options.memo else 0)
    decide = decider.decide
    users = UserIndex()
    user_index = users.index
    distribution = Distribution(snapshot)
    observe = distribution.observe
    recorded = RecordedCheck(snapshot) if options.verify_recorded else None
    other = MemoDecider(against, limit=MEMO_LIMIT if options.memo else 0) if against is not None else None
    other_distribution = Distribution(against) if against is not None else None
    diff = (
        SnapshotDiff(snapshot, against, samples_per_move=options.samples_per_move,
                     explained_moves=options.explained_moves)
        if against is not None else None
    )  # fmt: skip
    limit = options.limit
    count = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    # The loop allocates many short-lived objects and no cycles: the cyclic collector would only rescan the
    # growing user index over and over.
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        records: Iterable[TrafficRecord] = read_traffic(
            options.traffic, force=options.format, har_filter=options.har_filter, on_open=opened
        )
        if behaviour is not None:
            records = in_time_order(records, options.clock())
        for record in records:
            try:
                described = make_context(record)
            except RequestDescriptionError as exc:
                by_source[record.source].reject(record.position, f"invalid request description: {exc}")
                by_source[record.source].records -= 1
                continue
            if behaviour is not None:
                behaviour.apply(record.description, described)
            ctx = described.context
            tags = described.tags
            forcing = described.forcing
            if forcing is None:
                manifest = decide(ctx, tags)
                user = user_index(manifest.user_uid)
                observe(manifest, user)
                if coverage is not None:
                    coverage.observe(ctx)
                if recorded is not None:
                    recorded.observe(record, manifest, ctx, tags)
                if other is not None and diff is not None and other_distribution is not None:
                    manifest_after = other.decide(ctx, tags)
                    other_distribution.observe(manifest_after, user)
                    diff.observe(manifest, manifest_after, user, (record.source, record.position),
                                 record.description, ctx, tags)  # fmt: skip
            else:
                # A preview (SPEC §10) is QA traffic: decided as the proxy decides it, outside the memo, and checked
                # against its recorded decision, but not counted with the visitors (the proxy records nothing for
                # previews, and a forced or draft variant says nothing of how the rules split traffic).
                manifest = snapshot.decide_forced(ctx, tags, forcing)
                if recorded is not None:
                    recorded.observe(record, manifest, ctx, tags, forcing)
            count += 1
            if count % PROGRESS_EVERY == 0 and progress is not None:
                progress.update(count)
            if limit is not None and count >= limit:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
        gc.unfreeze()
    if progress is not None:
        progress.finish(count)
    return ReplayResult(
        snapshot=snapshot,
        sources=sources,
        requests=count,
        users=len(users),
        distribution=distribution,
        coverage=coverage,
        recorded=recorded,
        against=against,
        against_distribution=other_distribution,
        diff=diff,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        memo_hits=decider.hits,
        memo_misses=decider.misses,
        memo_bypassed=decider.bypassed,
        behaviour_page_views=behaviour.page_views if behaviour is not None else None,
    )
