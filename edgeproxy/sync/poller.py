"""Keep the serving snapshot fresh: poll Admin (or watch a rules folder), swap atomically, keep the last good.

A refresh never changes what is served unless the new snapshot loaded and validated completely; a failure is
logged, counted and shown in `/_edgeproxy/status`, and the previous snapshot keeps serving. Polling is jittered
per instance and backs off exponentially while Admin fails (Unleash Edge / flagd style).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgeproxy.engine.decide import CompiledSnapshot
from edgeproxy.engine.errors import RulesError
from edgeproxy.engine.useragent import UserAgentClassifier
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.runtime.snapshots import SnapshotHolder
from edgeproxy.sync.client import ManagementClient, SyncError
from edgeproxy.sync.writer import SNAPSHOT_FILE, write_export

log = logging.getLogger("edgeproxy.sync")


class SnapshotSource(Protocol):
    description: str

    async def refresh(self) -> CompiledSnapshot | None:
        """A new snapshot, or None when nothing changed. Raises SyncError/RulesError/OSError."""
        ...


class AdminSource:
    """Management API -> export tree + compiled snapshot in `out` (the persisted last good)."""

    def __init__(
        self, client: ManagementClient, out: Path, classifier: UserAgentClassifier, publish_to: str | None = None
    ) -> None:
        self.client = client
        self.publish_to = publish_to
        self.out = out
        self.classifier = classifier
        self.description = f"admin {client.base_url} (project {client.project_uid})"
        self._have_snapshot = False

    async def refresh(self) -> CompiledSnapshot | None:
        tree = await self.client.fetch_tree()
        if not tree.changed and self._have_snapshot:
            return None
        snapshot = await asyncio.to_thread(write_export, self.out, tree.files, self.classifier)
        self.client.commit(tree)
        self._have_snapshot = True
        if self.publish_to:
            from edgeproxy.sync.fleet import publish

            try:
                await publish(self.publish_to, snapshot)
            except Exception as exc:  # serving here goes on; the fleet catches up on the next sync
                log.error("could not publish snapshot %s to the fleet: %s", snapshot.version, exc)
        return snapshot

    def last_good(self) -> CompiledSnapshot | None:
        file = self.out / SNAPSHOT_FILE
        if not file.exists():
            return None
        return load_snapshot(file, self.classifier)


class RulesSource:
    """A rules folder or snapshot file on disk; `changed()` compares a fingerprint of every file in it."""

    def __init__(self, path: Path, classifier: UserAgentClassifier) -> None:
        self.path = path
        self.classifier = classifier
        self.description = f"rules {path}"
        self._fingerprint: tuple[tuple[str, int, int], ...] | None = None

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        entries = []
        paths = [self.path] if self.path.is_file() else sorted(self.path.rglob("*"))
        for item in paths:
            try:
                stat = item.stat()
            except OSError:
                continue
            if item.is_file():
                entries.append((str(item), stat.st_mtime_ns, stat.st_size))
        return tuple(entries)

    def changed(self) -> bool:
        return self.fingerprint() != self._fingerprint

    async def refresh(self) -> CompiledSnapshot | None:
        # Taken before loading and kept whether or not the load succeeds: `--watch` tries a broken folder once,
        # then again only when a file changes (not every second, logging the same rejection each time).
        self._fingerprint = self.fingerprint()
        return await asyncio.to_thread(load_snapshot, self.path, self.classifier)


@dataclass(slots=True)
class SyncStatus:
    source: str
    attempts: int = 0
    swaps: int = 0
    unchanged: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def when(t: float | None) -> str | None:
            return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

        return {
            "source": self.source, "attempts": self.attempts, "swaps": self.swaps, "unchanged": self.unchanged,
            "failures": self.failures, "consecutiveFailures": self.consecutive_failures,
            "lastAttempt": when(self.last_attempt), "lastSuccess": when(self.last_success),
            "lastError": self.last_error, "lastErrorAt": when(self.last_error_at), "recent": self.history[-10:],
        }  # fmt: skip


class SnapshotPoller:
    def __init__(
        self,
        holder: SnapshotHolder,
        source: SnapshotSource,
        *,
        interval: float,
        jitter: float = 0.1,
        max_backoff: float = 300.0,
        watch: bool = False,
    ) -> None:
        self.holder = holder
        self.source = source
        self.interval = interval
        self.jitter = jitter
        self.max_backoff = max_backoff
        self.watch = watch
        self.status = SyncStatus(source=source.description)
        self._logged_error: str | None = None  # the rejection last logged: the same one again is not repeated
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._rng = random.Random(os.getpid() ^ int(time.time() * 1000))  # per-instance jitter

    async def refresh(self, reason: str) -> dict[str, Any]:
        """Try once now; serialises with the poll loop. Returns the outcome for webhooks and logs."""
        async with self._lock:
            status = self.status
            status.attempts += 1
            clock = self.holder.clock  # the process clock (`now` setting), as the snapshot's loadedAt
            status.last_attempt = clock()
            outcome: dict[str, Any]
            try:
                snapshot = await self.source.refresh()
            except (SyncError, RulesError, OSError, ValueError) as exc:
                status.failures += 1
                status.consecutive_failures += 1
                status.last_error = f"{type(exc).__name__}: {exc}"
                status.last_error_at = clock()
                self.holder.last_error = status.last_error
                if status.last_error != self._logged_error:
                    self._logged_error = status.last_error
                    log.error("snapshot refresh (%s) rejected, previous snapshot keeps serving: %s", reason, exc)
                else:  # the same problem as last time: counted and in status, logged once
                    log.debug("snapshot refresh (%s) rejected again: %s", reason, exc)
                outcome = {"reason": reason, "result": "rejected", "error": status.last_error}
            else:
                status.consecutive_failures = 0
                status.last_success = clock()
                self._logged_error = None
                current = self.holder.current
                if snapshot is not None and current is not None and current.snapshot.version == snapshot.version:
                    snapshot = None  # the rules that already serve (a fix back to them, a rewrite): nothing to swap
                    self.holder.last_error = None  # as a swap would: what serves is what the source holds
                if snapshot is None:
                    status.unchanged += 1
                    outcome = {"reason": reason, "result": "unchanged"}
                else:
                    previous = self.holder.current
                    self.holder.swap(snapshot, self.source.description)
                    status.swaps += 1
                    outcome = {"reason": reason, "result": "swapped", "version": snapshot.version,
                               "previous": previous.snapshot.version if previous else None}  # fmt: skip
                    log.info("snapshot %s now serving (%s)", snapshot.version, reason)
            outcome["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock()))
            status.history.append(outcome)
            del status.history[:-50]
            return outcome

    def trigger(self) -> None:
        self._wake.set()

    def next_delay(self) -> float:
        base = self.interval
        if self.status.consecutive_failures:
            base = min(self.max_backoff, self.interval * 2 ** min(self.status.consecutive_failures, 16))
        return base * self._rng.uniform(1 - self.jitter, 1 + self.jitter)

    async def run(self) -> None:
        while True:
            delay = 1.0 if self.watch else self.next_delay()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
                reason = "trigger"
            except TimeoutError:
                reason = "watch" if self.watch else "poll"
            self._wake.clear()
            if reason == "watch" and isinstance(self.source, RulesSource) and not self.source.changed():
                continue
            await self.refresh(reason)
