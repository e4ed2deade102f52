"""`edgeproxy forward status|retry|drop` on the outbox a proxy left behind, SQLite and a real redis-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import redis_server

from edgeproxy.forward.items import attributes_item, events_items, merge_item
from edgeproxy.forward.opener import open_outbox
from edgeproxy.forward.outbox import Outbox
from edgeproxy.store.base import EventRecord

P = "6565d3b1a3f0c7b2e1d4a9f0"


@pytest.fixture(params=["sqlite", "redis"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.sqlite3"
    else:
        with redis_server(tmp_path) as url:
            yield url


def forward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeproxy.cli", "forward", *args], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


async def _filled(url: str) -> None:
    """Three queued writes (one user's event, a patch, a merge), one of them then refused for good."""
    outbox: Outbox = open_outbox(url)
    await outbox.start()
    try:
        event = EventRecord(ts=1.0, project_uid=P, user_uid="ann", type="EVENT", event_key="buy")
        await outbox.append([*events_items([event], 100.0), attributes_item(P, "ann", {"tier": "gold"}, 101.0),
                             merge_item(P, "ann", "bob", 102.0)])  # fmt: skip
        first = (await outbox.window("cli-test", 1))[0]
        await outbox.bury([(first, "HTTP 400: the event key is unknown")], 200.0)
    finally:
        await outbox.close()


def test_status_retry_and_drop(state_url: str) -> None:
    asyncio.run(_filled(state_url))
    status = forward("status", "--json", "--state", state_url)
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["queued"] == 2 and document["deadLetters"] == 1 and document["state"] == "ok"
    (letter,) = document["oldestDeadLetters"]
    assert letter["reason"] == "HTTP 400: the event key is unknown" and letter["path"] == "/events"
    assert letter["body"] == [{"eventKey": "buy", "type": "EVENT"}] and letter["userUid"] == "ann"
    text = forward("status", "--state", state_url)
    assert "queued: 2" in text.stdout and "dead letters: 1" in text.stdout
    assert "HTTP 400: the event key is unknown" in text.stdout
    retried = forward("retry", "--state", state_url)
    assert retried.returncode == 0 and retried.stdout == "1 dead letters queued again\n"
    after = json.loads(forward("status", "--json", "--state", state_url).stdout)
    assert after["queued"] == 3 and after["deadLetters"] == 0
    refused = forward("drop", "--queued", "--state", state_url)
    assert refused.returncode == 2 and "--yes" in refused.stderr  # writes never sent are not deleted by accident
    dropped = forward("drop", "--queued", "--yes", "--state", state_url)
    assert dropped.returncode == 0 and dropped.stdout == "3 writes deleted\n"
    assert json.loads(forward("status", "--json", "--state", state_url).stdout)["queued"] == 0


def test_a_state_file_that_is_not_there_is_an_error_not_an_empty_outbox(tmp_path: Path) -> None:
    missing = forward("status", "--state", f"sqlite:///{tmp_path}/typo.sqlite3")
    assert missing.returncode == 2 and "no state store at" in missing.stderr
    assert not (tmp_path / "typo.sqlite3").exists()
    bad = forward("status", "--state", "mysql://x")
    assert bad.returncode == 2 and "unknown scheme" in bad.stderr


def test_an_unreachable_redis_is_one_line_not_a_traceback() -> None:
    from support.processes import free_port

    answer = forward("status", "--state", f"redis://127.0.0.1:{free_port()}/0")
    assert answer.returncode == 2 and "the outbox did not answer" in answer.stderr
    assert "Traceback" not in answer.stderr
