"""The sender of the forwarding outbox (SPEC §12): accepted writes to Contentstack's Edge API, none lost.

Every process that accepts writes queues them (`enqueue`, awaited before the local 2xx). One process at a time
sends: the holder of the outbox's lease (renewed every few seconds; a process that dies loses it within
LEASE_SECONDS and another takes over, claiming what the dead one had read but not sent). The holder works in
passes over the head of the queue: a window of WINDOW entries, one chain of requests per user sent one after
another (a user's writes arrive in the order they were accepted), chains side by side up to CONCURRENCY.

- 2xx: the entries leave the outbox (at-least-once: a crash between the 2xx and the ack re-sends, never loses).
- No answer (refused, reset, timeout), 5xx, 408, 429: the user's chain stops there and the entries stay at the
  head of the queue. After a pass with such failures the sender waits: exponential backoff with jitter when the
  pass sent nothing (the Edge API is down), a short pause when it sent some; never less than a Retry-After.
- Any other status: the write is permanent trouble. A merged request (several event writes of one user) is split
  and each write sent alone, so one bad event does not take its neighbours down; a write refused alone goes to the
  dead letters with the reason, and the user's later writes go on.

Bounded: past `max_items` (queued plus dead letters) a new write is still accepted locally, but not queued; it is
counted (here and in the outbox, so `edgeproxy forward status` sees it), logged, and status says "full".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict
from yarl import URL

from edgeproxy.forward.items import ForwardItem, Outcome, Request, backoff, chains, outcome_of
from edgeproxy.forward.outbox import Backlog, Entry, Outbox, OutboxFull
from edgeproxy.http.origin import OriginPool, UpstreamError, pool_for_origin
from edgeproxy.store.base import StoreError, uid_digest

log = logging.getLogger("edgeproxy.forward")

LEASE_SECONDS = 15.0  # a dead sender's lease runs out this long after its last renewal
WINDOW = 500  # queued entries read per pass: what the sender holds in memory, whatever the backlog
CONCURRENCY = 16  # requests in flight to the Edge API at once (distinct users)
IDLE_POLL = 0.5  # seconds between looks at the queue when idle (writes of other processes; own ones wake at once)
BACKLOG_REFRESH = 2.0  # seconds between reads of the outbox's size by a process that does not send
PARTIAL_PAUSE = 1.0  # seconds to wait after a pass that sent some writes and had to leave others for later
REFUSED_LOG_EVERY = 10.0  # seconds between log lines about refused writes
BEHIND_AFTER = 60.0  # status says "behind" when the oldest queued write is older than this
ACK_BATCH = 64  # sent writes removed from the outbox in one write (at most this many re-sent after a kill -9)
MAX_ANSWER_KEPT = 1024  # bytes of an Edge API answer kept for a dead letter's reason
STOP_GRACE = 3.0  # seconds a stopping sender waits for the answers to requests in flight


@dataclass(slots=True)
class ForwardCounts:
    """What this process's forwarding did (writes, not requests), for /status and Prometheus."""

    queued: int = 0  # writes this process put in the outbox
    sent: int = 0  # writes the Edge API accepted (2xx), sent by this process
    retried: int = 0  # writes whose sending failed and was left for another try
    dead_lettered: int = 0  # writes the Edge API refused for good
    refused: int = 0  # writes not queued: the outbox was full
    failed: int = 0  # writes not queued: the outbox could not be written (the write answered 503)


def sender_name() -> str:
    """Who holds the lease, as status shows it: host, pid and a random part (a restarted pid differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Forwarder:
    def __init__(
        self,
        outbox: Outbox,
        base_url: str,
        max_items: int,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        owner: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        """`clock`: wall time, shared by the processes that share the lease (not the decision clock, which the
        `now` setting may move)."""
        self.outbox = outbox
        self.base_url = base_url.rstrip("/")
        self.max_items = max_items
        self.timeout = timeout
        self.clock = clock
        self.jitter = jitter
        self.owner = owner or sender_name()
        self.lease_seconds = lease_seconds
        self.counts = ForwardCounts()
        self.backlog: Backlog | None = None  # as last read
        self.holding = False
        self.waiting_until = 0.0  # wall time of the next pass while backing off
        self.last_failure = ""
        self._estimate = 0  # queued + dead, as last read plus what this process queued since
        self._wake = asyncio.Event()
        self._lost = False
        self._halt = asyncio.Event()  # set by `stop`: no new request is sent, waits end
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._pool: OriginPool | None = None  # keep-alive connections to the Edge API (the proxy's own client)
        target = URL(self.base_url)
        self._host = target.raw_host or ""
        self._host_header = target.host_port_subcomponent or self._host  # Host: (a port only when not the default)
        self._prefix = target.raw_path.rstrip("/")  # a base URL may carry a path prefix
        self._last_refused_log = 0.0

    # -- accepting writes --------------------------------------------------------------------------------

    async def enqueue(self, items: Sequence[ForwardItem]) -> bool:
        """Queue `items` before the write's 2xx. False (counted, logged) when the outbox is full: the write was
        accepted locally and is not forwarded. StoreError when the outbox cannot be written."""
        if not items:
            return True
        if self._estimate + len(items) > self.max_items:
            return await self._refuse(items)
        try:
            await self.outbox.append(items)
        except OutboxFull as full:  # the bound checked with the append (Redis: fleet-wide, atomic)
            self._estimate = max(self._estimate, full.length)
            return await self._refuse(items)
        except StoreError:
            self.counts.failed += len(items)
            raise
        self.counts.queued += len(items)
        self._estimate += len(items)
        self._wake.set()
        return True

    async def _refuse(self, items: Sequence[ForwardItem]) -> bool:
        """The outbox is full: counted (here and with the outbox), logged now and then; False."""
        self.counts.refused += len(items)
        with contextlib.suppress(StoreError):
            await self.outbox.count_refused(len(items))
        now = self.clock()
        if now - self._last_refused_log >= REFUSED_LOG_EVERY:
            self._last_refused_log = now
            log.error(
                "forwarding outbox full (%d of forward_outbox_max %d): %d writes accepted locally and "
                "NOT forwarded (%d so far); see `edgeproxy forward status`",
                self._estimate,
                self.max_items,
                len(items),
                self.counts.refused,
            )
        return False

    # -- sending -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.outbox.start()
        await self.refresh()
        target = URL(self.base_url)
        timeout = self.timeout
        self._pool = pool_for_origin(target.scheme, self._host, target.port, limit=CONCURRENCY,
                                     connect_timeout=timeout, read_timeout=timeout, keepalive=30.0)  # fmt: skip
        self._task = asyncio.ensure_future(self._run())
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        """The outbox's size and lease holder, read every BACKLOG_REFRESH seconds for status and metrics (and the
        bound), in every process, whether it sends, waits out a backoff or is stuck on a slow Edge API."""
        while True:
            await asyncio.sleep(BACKLOG_REFRESH)
            try:
                await self.refresh()
            except StoreError as exc:
                log.debug("forwarding outbox not read for status: %s", exc)

    async def stop(self) -> None:
        """Requests in flight get STOP_GRACE seconds to be answered (and acknowledged), so a clean shutdown sends no
        duplicate; nothing new is sent meanwhile. What is left stays queued for the next process."""
        self._halt.set()
        self._wake.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self.holding:
            with contextlib.suppress(StoreError):
                await self.outbox.release(self.owner)
            self.holding = False
        if self._pool is not None:
            await self._pool.close()
        await self.outbox.close()

    async def refresh(self) -> Backlog:
        self.backlog = await self.outbox.backlog(self.clock())
        self._estimate = self.backlog.queued + self.backlog.dead
        return self.backlog

    async def _run(self) -> None:
        failed_passes = 0
        while not self._halt.is_set():
            delay = IDLE_POLL
            try:
                self.holding = await self.outbox.hold(self.owner, self.lease_seconds, self.clock())
                if self.holding:
                    sent, failed, retry_after = await self._pass()
                    if failed:
                        failed_passes = failed_passes + 1 if not sent else 0
                        wait = backoff(failed_passes, self.jitter) if not sent else PARTIAL_PAUSE
                        delay = max(wait, retry_after)
                    elif sent:
                        failed_passes, delay = 0, 0.0
            except StoreError as exc:
                log.warning("forwarding outbox unavailable, retrying in %.0f s: %s", self.lease_seconds / 3, exc)
                delay = self.lease_seconds / 3
            if delay:
                await self._wait(delay)

    async def _wait(self, delay: float) -> None:
        """Sleep `delay` seconds, keeping the lease meanwhile (a long Retry-After must not hand the queue to a
        process that does not know about it); an own write wakes an idle sender at once."""
        self.waiting_until = self.clock() + delay if delay > IDLE_POLL else 0.0
        self._wake.clear()
        remaining = delay
        while remaining > 0 and not self._halt.is_set():
            step = min(remaining, self.lease_seconds / 3)
            if delay <= IDLE_POLL:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), step)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._halt.wait(), step)
            remaining -= step
            if self.holding and remaining > 0:
                try:
                    self.holding = await self.outbox.hold(self.owner, self.lease_seconds, self.clock())
                except StoreError as exc:
                    log.warning("forwarding lease not renewed: %s", exc)
        self.waiting_until = 0.0

    async def _pass(self) -> tuple[int, int, float]:
        """One pass over the head of the queue: (writes sent, requests failed and left, longest Retry-After)."""
        entries = await self.outbox.window(self.owner, WINDOW)
        if not entries:
            return 0, 0, 0.0
        unreadable = [(e, "not a queued write this version of edgeproxy reads") for e in entries if e.item is None]
        if unreadable:
            await self.outbox.bury(unreadable, self.clock())
            self.counts.dead_lettered += len(unreadable)
        readable = [(e.id, e.item) for e in entries if e.item is not None]
        originals = {entry_id: item for entry_id, item in readable}
        tally = _Tally()
        gate = asyncio.Semaphore(CONCURRENCY)
        self._lost = False
        keeper = asyncio.ensure_future(self._keep_lease())
        try:
            # Every chain ends before the pass does, also when one fails (the next pass must not overlap this one).
            ended = await asyncio.gather(
                *(self._chain(chain, originals, gate, tally) for chain in chains(readable)), return_exceptions=True
            )
            failure = next((e for e in ended if isinstance(e, BaseException)), None)
            if failure is not None:
                raise failure
        finally:
            await self._ack(tally)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        return tally.sent, tally.failed, tally.retry_after

    async def _ack(self, tally: _Tally) -> None:
        """The sent entries leave the outbox, ACK_BATCH at a time (one outbox write for many requests)."""
        ids, tally.acked = tally.acked, []
        await self.outbox.ack(ids)

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                if not await self.outbox.hold(self.owner, self.lease_seconds, self.clock()):
                    self._lost = True
                    log.warning("forwarding lease lost to another process; this one stops sending")
                    return
            except StoreError as exc:
                log.warning("forwarding lease not renewed: %s", exc)

    async def _chain(
        self, chain: list[Request], originals: dict[str, ForwardItem], gate: asyncio.Semaphore, tally: _Tally
    ) -> None:
        for request in chain:
            if self._lost or self._halt.is_set():
                return
            outcome = await self._send(request.item, gate)
            if outcome.verdict == "dead" and len(request.ids) > 1:  # find the write it refused: one at a time
                for entry_id in request.ids:
                    if not await self._settle(
                        (entry_id,), originals[entry_id], await self._send(originals[entry_id], gate), tally
                    ):
                        return
                continue
            if not await self._settle(request.ids, request.item, outcome, tally):
                return

    async def _settle(self, ids: tuple[str, ...], item: ForwardItem, outcome: Outcome, tally: _Tally) -> bool:
        """Carry out an outcome for the entries `ids`; False when the user's chain stops here (a retry)."""
        if outcome.verdict == "sent":
            tally.acked += ids
            if len(tally.acked) >= ACK_BATCH:
                await self._ack(tally)
            self.counts.sent += len(ids)
            tally.sent += len(ids)
            self._estimate -= len(ids)
            return True
        if outcome.verdict == "dead":
            await self.outbox.bury([(Entry(i, item), outcome.reason) for i in ids], self.clock())
            self.counts.dead_lettered += len(ids)
            log.error(
                "forwarding: %s %s for user %s refused for good (%s); kept in the dead letters",
                item.method,
                item.path,
                uid_digest(item.orders_by),
                outcome.reason,
            )
            return True
        self.counts.retried += len(ids)
        tally.failed += 1
        tally.retry_after = max(tally.retry_after, outcome.retry_after)
        if outcome.reason != self.last_failure:
            log.warning(
                "forwarding to %s failed (%s); the writes stay queued and are retried", self.base_url, outcome.reason
            )
        self.last_failure = outcome.reason
        return False

    async def _send(self, item: ForwardItem, gate: asyncio.Semaphore) -> Outcome:
        """One request on the pool (the httptools client the proxy uses for its origin: less than half of aiohttp's
        client's CPU per request, which matters while each new visitor's impressions are being forwarded). A
        reused keep-alive connection the Edge API had closed is retried at once on a new one."""
        async with gate:
            for attempt in (0, 1):
                try:
                    return await self._exchange(item)  # the pool's timeouts: connect, and no byte for that long
                except TimeoutError:
                    return outcome_of(None, None, self.clock(), failure=f"no answer within {self.timeout:g} s")
                except UpstreamError as exc:
                    if attempt == 0 and "closed" in str(exc):
                        continue
                    return outcome_of(None, None, self.clock(), failure=f"{exc}"[:300])
                except OSError as exc:
                    return outcome_of(None, None, self.clock(), failure=f"{type(exc).__name__}: {exc}"[:300])
        raise AssertionError("unreachable")  # the loop returns

    async def _exchange(self, item: ForwardItem) -> Outcome:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the forwarder sends once started")
        headers = CIMultiDict(item.headers())
        headers["Host"] = self._host_header
        headers["Content-Length"] = str(len(item.body))
        response = await pool.request(item.method, self._prefix + item.path, headers, data=item.body)
        try:
            text = b""
            async for chunk in response.iter_chunks():  # read to the end, so the connection is reused
                if len(text) < MAX_ANSWER_KEPT:
                    text += chunk[: MAX_ANSWER_KEPT - len(text)]
            return outcome_of(response.status, response.headers.get("Retry-After"), self.clock(),
                              body=text.decode("utf-8", "replace"))  # fmt: skip
        finally:
            response.release()

    # -- what status shows -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        backlog = self.backlog
        now = self.clock()
        oldest = None if backlog is None or backlog.oldest_queued_at is None else now - backlog.oldest_queued_at
        queued = backlog.queued if backlog else 0
        dead = backlog.dead if backlog else 0
        if queued + dead >= self.max_items:
            condition = "full"  # new writes are not being forwarded
        elif self.waiting_until > now or (oldest is not None and oldest > BEHIND_AFTER):
            condition = "behind"
        else:
            condition = "ok"
        return {
            "to": self.base_url,
            "state": condition,
            "queued": queued,
            "deadLetters": dead,
            "oldestQueuedSeconds": None if oldest is None else round(oldest, 3),
            "max": self.max_items,
            "refusedEver": backlog.refused if backlog else 0,
            "sender": backlog.holder if backlog else "",
            "sendingHere": self.holding,
            "retryInSeconds": round(max(0.0, self.waiting_until - now), 3) if self.waiting_until else 0.0,
            "lastFailure": self.last_failure,
            "thisProcess": {
                "queued": self.counts.queued,
                "sent": self.counts.sent,
                "retried": self.counts.retried,
                "deadLettered": self.counts.dead_lettered,
                "refused": self.counts.refused,
                "failed": self.counts.failed,
            },
        }


@dataclass(slots=True)
class _Tally:
    acked: list[str] = field(default_factory=list)  # sent, not yet removed from the outbox
    sent: int = 0
    failed: int = 0
    retry_after: float = 0.0
