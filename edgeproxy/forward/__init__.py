"""Forwarding to Contentstack (SPEC §12): every write edgeproxy accepts, queued in a durable outbox before the
local 2xx and sent to the project's real Edge API as the SDK would send it.

    items.py    pure: what one queued write is, how writes are batched, what an answer means (sent, retry, dead)
    outbox.py   the durable queue's contract, and its SQLite form (one machine, workers sharing the file); opener.py
    redis_outbox.py   its Redis form (a fleet): a stream read through a consumer group
    forwarder.py      the sender: a lease so one process sends at a time, order per user, retries with backoff
    command.py        `edgeproxy forward status|retry|drop`
"""
