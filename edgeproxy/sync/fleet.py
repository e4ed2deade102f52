"""Several machines, one snapshot: publish compiled snapshots through Redis, every instance follows.

    SET edgeproxy:snapshot:current <msgpack snapshot>   the fleet's snapshot, for instances that start later
    PUBLISH edgeproxy:snapshots <version>               "a new one is there": subscribers fetch and swap
A publisher is `edgeproxy publish --rules PATH --fleet-redis URL` (a CI job, the sync job) or any instance with
`--fleet-redis` that syncs from Admin. Subscribers validate what they read; a bad blob is rejected and the
previous snapshot keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import redis.asyncio as redis
from redis.exceptions import RedisError

from edgeproxy.engine.decide import CompiledSnapshot
from edgeproxy.engine.errors import RulesError
from edgeproxy.engine.useragent import UserAgentClassifier
from edgeproxy.files.snapshot_file import dump_snapshot, read_snapshot_bytes

if TYPE_CHECKING:
    from edgeproxy.runtime.snapshots import SnapshotHolder

log = logging.getLogger("edgeproxy.fleet")
SNAPSHOT_KEY = "edgeproxy:snapshot:current"
CHANNEL = "edgeproxy:snapshots"


async def publish(url: str, snapshot: CompiledSnapshot) -> int:
    """Store the snapshot and announce it; returns how many subscribers heard it."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        await client.set(SNAPSHOT_KEY, dump_snapshot(snapshot))
        return int(await client.publish(CHANNEL, snapshot.version))
    finally:
        await client.aclose()


class FleetFollower:
    """Subscribes to the channel and swaps in each new snapshot; reconnects with backoff."""

    def __init__(self, url: str, holder: SnapshotHolder, classifier: UserAgentClassifier) -> None:
        self.url = url
        self.holder = holder
        self.classifier = classifier
        self.swaps = 0
        self.last_error: str | None = None
        self.connected = False

    async def load_current(self) -> bool:
        """At start: adopt the fleet's snapshot if one is published. Returns whether one was adopted."""
        client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        try:
            data = await client.get(SNAPSHOT_KEY)
        except RedisError as exc:
            self.last_error = f"cannot read the fleet snapshot: {exc}"
            log.warning(self.last_error)
            return False
        finally:
            await client.aclose()
        return data is not None and self._adopt(data)

    def _adopt(self, data: bytes | str) -> bool:
        if isinstance(data, str):
            data = data.encode("latin-1")
        try:
            snapshot = read_snapshot_bytes(data, f"redis {SNAPSHOT_KEY}", self.classifier)
        except RulesError as exc:
            self.last_error = str(exc)
            log.error("fleet snapshot rejected, previous keeps serving: %s", exc)
            return False
        current = self.holder.current
        if current is None or current.snapshot.version != snapshot.version:
            self.holder.swap(snapshot, f"fleet {self.url}")
            self.swaps += 1
            log.info("fleet snapshot %s now serving", snapshot.version)
        return True

    async def run(self) -> None:
        delay = 0.5
        while True:
            client = redis.Redis.from_url(self.url, socket_timeout=None, socket_connect_timeout=5)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self.connected = True
                    delay = 0.5
                    await self.load_current()  # anything published while we were away
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = await client.get(SNAPSHOT_KEY)
                        if data is not None:
                            self._adopt(data)
            except (RedisError, OSError) as exc:
                self.connected = False
                self.last_error = f"fleet channel: {exc}"
                log.warning("fleet channel lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                await client.aclose()
