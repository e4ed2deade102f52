"""`edgeproxy forward status|retry|drop`: the forwarding outbox of a proxy (or fleet), from the command line.

    status   what waits (queued writes, the oldest's age), the dead letters with their reasons, writes refused
             because the outbox was full, and which process is sending
    retry    every dead letter back into the queue (at its end), e.g. after fixing what the Edge API refused
    drop     delete the dead letters; with --queued also every write still waiting (they will never be sent)

The outbox is where the proxy's `state` is (--state, EDGEPROXY_STATE or --config FILE, as for serve).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")
SHOWN_DEAD_LETTERS = 20


def run_forward(args: argparse.Namespace, out: IO[str]) -> int:
    from edgeproxy.forward.items import item_document
    from edgeproxy.forward.opener import open_outbox
    from edgeproxy.forward.outbox import Outbox, SqliteOutbox
    from edgeproxy.runtime.config import ConfigError, read_settings
    from edgeproxy.store.base import StoreError, state_url_problem

    def fail(problem: str) -> int:
        print(f"edgeproxy: forward {args.action}: {problem}", file=sys.stderr)
        return 2

    try:
        config = read_settings(args.config, os.environ, {"state": args.state})
    except (ConfigError, ValueError) as exc:
        return fail(str(exc))
    problem = state_url_problem(config.state)
    if problem:
        return fail(f"state {problem}")
    outbox = open_outbox(config.state)
    if isinstance(outbox, SqliteOutbox) and not Path(outbox.path).is_file():  # a typo must not show "0 queued"
        return fail(f"no state store at {outbox.path}: name the proxy's SQLite file (--state, --config)")

    def act(work: Callable[[Outbox], Awaitable[T]]) -> T:
        async def run() -> T:
            await outbox.start()
            try:
                return await work(outbox)
            finally:
                await outbox.close()

        return asyncio.run(run())

    try:
        if args.action == "retry":
            revived = act(lambda o: o.revive())
            out.write(f"{revived} dead letters queued again\n")
            return 0
        if args.action == "drop":
            if args.queued and not args.yes:
                return fail("--queued deletes writes that were never sent to Contentstack; add --yes to do it")
            dropped = act(lambda o: o.drop(args.queued))
            out.write(f"{dropped} {'writes' if args.queued else 'dead letters'} deleted\n")
            return 0

        async def read(o: Outbox) -> tuple[Any, Any]:
            return await o.backlog(time.time()), await o.dead_letters(SHOWN_DEAD_LETTERS)

        backlog, dead = act(read)
    except StoreError as exc:
        return fail(f"the outbox did not answer: {exc}")
    now = time.time()
    oldest = None if backlog.oldest_queued_at is None else round(now - backlog.oldest_queued_at, 3)
    document: dict[str, Any] = {
        "queued": backlog.queued,
        "oldestQueuedSeconds": oldest,
        "deadLetters": backlog.dead,
        "refusedEver": backlog.refused,
        "max": config.forward_outbox_max,
        "state": "full" if backlog.queued + backlog.dead >= config.forward_outbox_max else "ok",
        "sender": backlog.holder,
        "to": config.forward_edge_api or None,
        "oldestDeadLetters": [
            {
                "id": d.id,
                "reason": d.reason,
                "failedAt": d.failed_at,
                **(item_document(d.item) if d.item is not None else {"unreadable": True}),
            }
            for d in dead
        ],
    }
    if args.json:
        out.write(json.dumps(document, indent=2) + "\n")
        return 0
    age = f" (oldest {oldest:.1f} s)" if oldest is not None else ""
    out.write(f"forwarding to {config.forward_edge_api or '(forward_edge_api not set)'}\n")
    out.write(
        f"queued: {backlog.queued}{age}; dead letters: {backlog.dead}; refused (outbox full) ever: "
        f"{backlog.refused}; max {config.forward_outbox_max} ({document['state']})\n"
    )
    out.write(f"sending: {backlog.holder or 'no process holds the lease'}\n")
    for letter in document["oldestDeadLetters"]:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter["failedAt"]))
        what = f"{letter['method']} {letter['path']}" if "method" in letter else "(unreadable entry)"
        out.write(f"  dead {letter['id']}: {what} at {when}: {letter['reason']}\n")
    if backlog.dead > len(dead):
        out.write(f"  ... and {backlog.dead - len(dead)} more (edgeproxy forward retry | drop)\n")
    return 0


def add_forward_command(commands: Any) -> None:
    forward = commands.add_parser(
        "forward",
        help="the outbox of writes forwarded to Contentstack: status, retry dead letters, drop",
        description="The forwarding outbox (forward_edge_api) lives where the proxy's state does. status: queued "
        "writes, the oldest's age, dead letters with their reasons, writes refused because the outbox was full, "
        "the sending process. retry: every dead letter back into the queue. drop: delete the dead letters "
        "(--queued --yes: also every write still waiting).",
    )
    forward.add_argument("action", choices=("status", "retry", "drop"))
    forward.add_argument(
        "--state", metavar="URL", help="sqlite:///path.db or redis://host:port/db (default: the proxy's setting)"
    )
    forward.add_argument("--config", metavar="FILE", help="the proxy's TOML config, for state")
    forward.add_argument("--json", action="store_true", help="status as JSON")
    forward.add_argument("--queued", action="store_true", help="drop: also the writes still waiting to be sent")
    forward.add_argument("--yes", action="store_true", help="drop --queued: yes, delete writes never sent")
    forward.set_defaults(run=run_forward)
