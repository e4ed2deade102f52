"""Contexts for a stream of request descriptions, the way `edgeproxy decide` builds them.

Decisions are the engine's: replay decides these contexts with `edgeproxy.engine.memo.MemoDecider` (the proxy's
memoised decider, exact by construction; `--no-memo` gives it no memo, so every request is decided by
`CompiledSnapshot.decide`).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable

from edgeproxy.engine.context import DescribedRequest, GeoLookup, context_from_description
from edgeproxy.engine.decide import ANONYMOUS_UID, CompiledSnapshot
from edgeproxy.replay.readers import TrafficRecord
from edgeproxy.visitor.identity import consent_given


class ContextFactory:
    """Request descriptions -> contexts, the way `edgeproxy decide` builds them.

    A description without a user uid gets a deterministic stand-in for the proxy's new UUID4 (derived from the
    file and position), so a replay is reproducible and still buckets such visitors uniformly. `clock` is used
    only when a description has no `now`. `consent`: the proxy's consent mode, (cookie, value) (SPEC §11): a
    request without consent is decided as the proxy decides it, for nobody (`ANONYMOUS_UID`: no stored attributes,
    no behaviour, in no A/B test); a decision-log record was logged for a visitor with consent.
    """

    def __init__(
        self, snapshot: CompiledSnapshot, geo_lookup: GeoLookup | None, clock: Callable[[], float],
        consent: tuple[str, str] | None = None,
    ) -> None:  # fmt: skip
        self._classifier = snapshot.classifier
        self._geo_lookup = geo_lookup
        self._clock = clock
        self._consent = consent
        self._record: TrafficRecord | None = None

    def _new_uid(self) -> str:
        return self.new_uid_for(self._record)

    @staticmethod
    def new_uid_for(record: TrafficRecord | None) -> str:
        """The stand-in uid of a record without one: a UUID4 derived from its file and position."""
        seed = f"{record.source}:{record.position}" if record is not None else str(time.time())
        return str(uuid.UUID(bytes=hashlib.md5(seed.encode(), usedforsecurity=False).digest(), version=4))

    def __call__(self, record: TrafficRecord) -> DescribedRequest:
        self._record = record
        described = context_from_description(
            record.description,
            clock=self._clock,
            new_uid=self._new_uid,
            classifier=self._classifier,
            geo_lookup=self._geo_lookup if record.geo_lookup_allowed else None,
        )
        consent = self._consent
        if consent is None or record.logged or consent_given(described.context.cookies, *consent):
            return described
        ctx = described.context
        ctx.user_uid, ctx.stored = ANONYMOUS_UID, {}
        return described._replace(user_uid_is_new=True)
