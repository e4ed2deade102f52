"""Forwarding to Contentstack (SPEC §12) end to end: the REAL `@contentstack/personalize-edge-sdk` (Node, and the
browser bundle in headless Chromium) writes to a real `edgeproxy serve` (Node example origin behind it,
`--impressions proxy`, SQLite state, `--forward-edge-api` at a real `edgeproxy fake-edge-api` process,
`--forward-timeout 1`), and everything the proxy answered 2xx must reach the fake as the SDK sent it.

The oracle is what the SDK itself sent: tests/sdk/writes.mjs records every write request of the SDK (method, path,
headers, body) and the proxy's status. Writes are compared one by one — a `POST /events` body is a list of writes,
since the forwarder may merge a user's consecutive event requests into one — as (method and path, X-Project-Uid,
X-CS-Personalize-User-Uid, X-User-Agent, Content-Type, the event or body). Order is judged per user, a merge in its
target's sequence (README: "order per user"); that a merge also follows the source's earlier writes (the
attributes it copies) has its own test, made deterministic with faults.

Faults are set on the fake (or the fake is stopped and started again on its port) before the SDK runs; writes must
arrive anyway, in order per user. A write may arrive twice only where the fake accepted a request whose answer the
proxy gave up on (`slow` past the timeout): a repeat is then an exact copy of a write that already arrived, and the
order is judged without repeats. No sleep asserts anything: waits poll with a generous bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgeproxy import __version__

from .conftest import (
    FAKE_EDGE_API_READY,
    IP_LONDON,
    MANIFEST_COOKIE,
    PROJECT_UID,
    ROOT,
    UA_WINDOWS_CHROME,
    UID_COOKIE,
    Launcher,
    NodeRunner,
    Service,
    Stack,
    browse,
    parse_set_cookie,
)

pytestmark = pytest.mark.e2e_sdk

SDK_AGENT = "personalize-edge-sdk-js/1.0.27"
OWN_AGENT = f"edgeproxy/{__version__}"
CONTENT_TYPE = "text/plain;charset=UTF-8"  # what fetch labels the SDK's string bodies, and the forwarder sends
EDGE_PREFIX = "/_personalize"
DELIVERY_TIMEOUT = 40.0  # a bound on a hang, not a speed requirement (the longest fault here needs ~10 s)
STOPPED_FOR = 5.0  # seconds the fake is down in the "stopped" case
LONDON_REQUEST = {"url": "https://shop.example/", "headers": {"X-Forwarded-For": IP_LONDON,
                                                              "User-Agent": UA_WINDOWS_CHROME}}  # fmt: skip

# One forwarded write: (method path, X-Project-Uid, X-CS-Personalize-User-Uid or None, X-User-Agent, Content-Type,
# the event or body as canonical JSON).
Write = tuple[str, str, "str | None", str, str, str]
MERGE = "POST /user-attributes/actions/merge"


# -- the processes -----------------------------------------------------------------------------------------------


def _http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


@dataclass
class Forwarding:
    """The proxy (with its origin and state file) and the fake Edge API it forwards to."""

    stack: Stack
    fake: Service

    def fault(self, **fault: Any) -> None:
        _http("POST", f"{self.fake.url}/_fake/faults", fault)

    def reset_fake(self) -> None:
        """The fake running, without faults and with an empty list of faulted requests."""
        if not self.fake.alive():
            self.fake.start(FAKE_EDGE_API_READY)
        _http("DELETE", f"{self.fake.url}/_fake/faults")
        _http("DELETE", f"{self.fake.url}/_fake/faulted")

    def received(self) -> list[dict[str, Any]]:
        """Accepted requests, in arrival order (a slow one is listed once answered, but numbered on arrival)."""
        return sorted(_http("GET", f"{self.fake.url}/_fake/received"), key=lambda r: r["seq"])

    def faulted(self) -> list[dict[str, Any]]:
        return list(_http("GET", f"{self.fake.url}/_fake/faulted"))

    def status(self) -> dict[str, Any]:
        forwarding: dict[str, Any] = _http("GET", f"{self.stack.url}/_edgeproxy/status")["forwarding"]
        return forwarding

    def logs(self) -> str:
        return f"{self.stack.logs()}\n--- {self.fake.name} log ---\n{self.fake.log_tail(15)}"

    def until(self, done: Callable[[], bool], what: str, timeout: float = DELIVERY_TIMEOUT) -> None:
        """Poll `done()` until true; the bound catches a hang, it asserts nothing about speed."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                pytest.fail(f"not within {timeout:g} s: {what}\nforwarding status: {self._status_or_error()}\n"
                            f"{self.logs()}", pytrace=False)  # fmt: skip
            time.sleep(0.1)

    def _status_or_error(self) -> Any:
        try:
            return self.status()
        except (OSError, ValueError) as exc:
            return f"(status unavailable: {exc})"

    def wait_drained(self) -> dict[str, Any]:
        """The proxy's /status once its outbox has nothing queued (it re-reads the backlog every 2 s)."""
        self.until(lambda: self.status()["queued"] == 0, "the proxy's forwarding status shows queued 0")
        return self.status()


@pytest.fixture(scope="module")
def forwarding(launcher: Launcher, node_bin: str) -> Forwarding:
    fake = launcher.fake_edge_api(PROJECT_UID)
    origin = launcher.node_origin(node_bin)
    state_db = launcher.tmp / "forward-state.db"
    proxy = launcher.proxy(origin, state_db, "--impressions", "proxy", "--forward-edge-api", fake.url,
                           "--forward-timeout", "1")  # fmt: skip
    return Forwarding(stack=Stack(origin=origin, proxy=proxy, state_db=state_db), fake=fake)


@pytest.fixture
def fwd(forwarding: Forwarding) -> Iterator[Forwarding]:
    forwarding.reset_fake()
    yield forwarding
    forwarding.reset_fake()  # a failed test must not leave a fault (or a stopped fake) to the next


# -- writes --------------------------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _split(method: str, path: str, headers: dict[str, str], body: Any) -> list[Write]:
    """A request as writes: one per event of a `POST /events`, else one. `headers`: lower-case names."""
    items = body if path == "/events" else [body]
    assert isinstance(items, list), (path, body)
    what = f"{method} {path}"
    return [(what, headers.get("x-project-uid", ""), headers.get("x-cs-personalize-user-uid"),
             headers.get("x-user-agent", ""), headers.get("content-type", ""), _canonical(item))
            for item in items]  # fmt: skip


def sdk_writes(out: dict[str, Any]) -> list[Write]:
    """What the SDK sent in one run of writes.mjs, as writes; every request must have been answered 2xx."""
    writes: list[Write] = []
    for request in out["writes"]:
        assert request["status"] is not None and 200 <= request["status"] < 300, (
            f"the proxy refused an SDK write: {request}"
        )
        path = request["path"].split("?")[0]
        assert path.startswith(EDGE_PREFIX + "/"), request
        body = json.loads(request["body"])
        writes += _split(request["method"], path[len(EDGE_PREFIX) :], request["requestHeaders"], body)
    return writes


def received_writes(received: Sequence[dict[str, Any]]) -> list[Write]:
    writes: list[Write] = []
    for request in received:
        if request["path"] == "/manifest":
            continue
        headers = {name.lower(): value for name, value in request["headers"].items()}
        writes += _split(request["method"], request["path"], headers, request["body"])
    return writes


def users_of(write: Write, merge_source: bool = False) -> set[str]:
    """The users whose sequence a write belongs to: its uid header; for a merge its target (the user the forwarder
    orders it by, README), and with `merge_source` its source too (whose earlier writes it copies)."""
    if write[0] == MERGE:
        body = json.loads(write[5])
        return {body["targetUserUid"], *([body["sourceUserUid"]] if merge_source else [])}
    return {write[2]} if write[2] else set()


def of_user(
    writes: Sequence[Write], uid: str, agent: str | None = SDK_AGENT, merge_source: bool = False
) -> list[Write]:
    return [w for w in writes if uid in users_of(w, merge_source) and (agent is None or w[3] == agent)]


def without_repeats(writes: Sequence[Write]) -> tuple[list[Write], int]:
    """`writes` with every exact repeat of an earlier write left out, and how many were left out."""
    seen: set[Write] = set()
    kept: list[Write] = []
    for write in writes:
        if write not in seen:
            seen.add(write)
            kept.append(write)
    return kept, len(writes) - len(kept)


PerUser = dict[str, tuple[list[Write], list[Write], int]]


def per_user(fwd: Forwarding, expected: Sequence[Write], merge_source: bool = False) -> PerUser:
    """Per user of `expected`: (expected writes, the fake's writes without repeats, repeats), SDK writes only."""
    arrived = received_writes(fwd.received())
    users = sorted({u for w in expected for u in users_of(w, merge_source)})
    return {
        u: (of_user(expected, u, merge_source=merge_source),
            *without_repeats(of_user(arrived, u, merge_source=merge_source)))
        for u in users
    }  # fmt: skip


def wait_arrived(fwd: Forwarding, expected: Sequence[Write], merge_source: bool = False) -> PerUser:
    """Wait until every expected write has arrived (in any order), then return per_user()."""
    fwd.until(lambda: set(expected) <= set(received_writes(fwd.received())),
              f"the SDK's {len(expected)} writes at the fake")  # fmt: skip
    return per_user(fwd, expected, merge_source)


def assert_in_order(seen: PerUser, repeats_allowed: bool) -> None:
    for uid, (want, got, repeats) in seen.items():
        assert got == want, (
            f"user {uid}: the fake's writes (repeats left out) differ from the SDK's, in content or order\n"
            f"SDK:  {json.dumps(want, indent=1)}\nfake: {json.dumps(got, indent=1)}"
        )
        if not repeats_allowed:
            assert repeats == 0, f"user {uid}: {repeats} writes arrived twice, with no fault that could cause it"


def new_uid(label: str) -> str:
    return f"fwd-{label}-{uuid.uuid4().hex[:12]}"


def run_visitor(run_node: NodeRunner, fwd: Forwarding, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return run_node("writes.mjs", fwd.stack, {"STEPS": steps})


def forward_cli(fwd: Forwarding, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "edgeproxy.cli", "forward", *args, "--state", f"sqlite:///{fwd.stack.state_db}"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def forward_status(fwd: Forwarding) -> dict[str, Any]:
    """`edgeproxy forward status --json` once nothing is queued (a write the fake recorded is acked just after)."""
    documents: list[dict[str, Any]] = []

    def settled() -> bool:
        documents.append(json.loads(forward_cli(fwd, "status", "--json").stdout))
        return documents[-1]["queued"] == 0

    fwd.until(settled, "`edgeproxy forward status` showing queued 0")
    return documents[-1]


def page_impressions(fwd: Forwarding, uid: str) -> set[tuple[str, str]]:
    """Load the home page through the proxy as `uid` (a London browser); the variants its manifest cookie shows."""
    request = urllib.request.Request(fwd.stack.url + "/", headers={
        "Cookie": f"{UID_COOKIE}={uid}", "X-Forwarded-For": IP_LONDON, "User-Agent": UA_WINDOWS_CHROME,
        "Accept": "text/html",
    })  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers.get_content_type() == "text/html"
        cookies = dict(parse_set_cookie(h)[:2] for h in answer.headers.get_all("Set-Cookie") or [])
    manifest = json.loads(cookies[MANIFEST_COOKIE])
    shown = {(e, v) for e, v in manifest["activeVariants"].items() if v is not None}
    assert shown, manifest  # the example rules' A/B tests give every identified visitor some variant
    return shown


def impressions_of(writes: Sequence[Write]) -> set[tuple[str, str]]:
    events = [json.loads(w[5]) for w in writes if w[0] == "POST /events"]
    assert all(e["type"] == "IMPRESSION" for e in events), events
    return {(e["experienceShortUid"], e["variantShortUid"]) for e in events}


# -- 1. no fault: everything, as the SDK sent it ------------------------------------------------------------------


def test_every_write_of_an_sdk_visitor_arrives_in_order_with_the_sdks_headers(
    fwd: Forwarding, run_node: NodeRunner
) -> None:
    old, new = new_uid("visitor"), new_uid("login")
    shown = page_impressions(fwd, old)  # the proxy records (and forwards) the page's impressions itself
    out = run_visitor(run_node, fwd, [
        {"init": {"userId": old, "request": LONDON_REQUEST}},
        {"impression": True},
        {"impressions": True},
        {"event": "fwd-signup"},
        {"set": {"tier": "gold", "lifetime_value": 1500, "newsletter": True}},
        {"event": "fwd-add-to-cart"},
        {"setUserId": new, "preserve": True},
        {"event": "fwd-purchase"},
    ])  # fmt: skip
    assert out["userIds"][-1] == new
    expected = sdk_writes(out)
    kinds = [w[0] for w in expected]
    assert kinds.count("PATCH /user-attributes") == 1 and kinds.count(MERGE) == 1
    assert kinds.count("POST /events") >= 4, kinds  # >= 1 impression of each kind, three events
    # The SDK's own headers, as sent to the proxy (the comparison below requires the fake to see the same).
    assert {w[1] for w in expected} == {PROJECT_UID} and {w[3] for w in expected} == {SDK_AGENT}
    assert {w[4] for w in expected} == {CONTENT_TYPE}
    merged_at = kinds.index(MERGE)
    assert {w[2] for w in expected[:merged_at]} == {old} and {w[2] for w in expected[merged_at + 1 :]} == {new}

    seen = wait_arrived(fwd, expected)
    # Each user's writes in the SDK's order, the merge in its target's sequence (the order README promises; that it
    # also follows the source's earlier writes is test_a_merge_is_forwarded_after_the_source_users_earlier_writes).
    assert_in_order(seen, repeats_allowed=False)
    arrived = [w for w in received_writes(fwd.received()) if users_of(w, merge_source=True) & {old, new}]
    assert sorted(w for w in arrived if w[3] == SDK_AGENT) == sorted(expected)  # each exactly once, nothing else
    merge = next(w for w in arrived if w[0] == MERGE)
    assert merge[2] is None and json.loads(merge[5]) == {"sourceUserUid": old, "targetUserUid": new}

    # The page load's impressions, recorded by the proxy, with edgeproxy's own agent.
    fwd.until(lambda: impressions_of(of_user(received_writes(fwd.received()), old, OWN_AGENT)) == shown,
              f"the proxy's impressions {sorted(shown)} of the page load")  # fmt: skip
    own = of_user(received_writes(fwd.received()), old, OWN_AGENT)
    assert {(w[1], w[2], w[4]) for w in own} == {(PROJECT_UID, old, CONTENT_TYPE)}

    status = fwd.wait_drained()
    assert status["to"] == fwd.fake.url and status["deadLetters"] == 0, status
    assert status["state"] == "ok" and status["sendingHere"] is True, status


def test_a_page_load_forwards_each_impression_once(fwd: Forwarding) -> None:
    """`impressions = proxy`: a page view is one impression of each variant shown. The proxy stores the variants it
    decided (source "proxy") and those the origin reports it applied (`x-cs-applied-variants`, source "origin")
    as separate rows, which its own analytics tell apart; the forwarded events carry no source, so Contentstack
    must get each impression of the page view once."""
    uid = new_uid("page")
    shown = page_impressions(fwd, uid)
    fwd.until(lambda: impressions_of(of_user(received_writes(fwd.received()), uid, OWN_AGENT)) == shown,
              f"the proxy's impressions {sorted(shown)} of the page load")  # fmt: skip
    fwd.wait_drained()
    own = [json.loads(w[5]) for w in of_user(received_writes(fwd.received()), uid, OWN_AGENT)]
    stored = [(r["experience_short_uid"], r["variant_short_uid"], r["source"]) for r in fwd.stack.events(uid)]
    assert len(own) == len(shown), (
        f"one page view, each impression should reach Contentstack once: {sorted(shown)};\n"
        f"it received {own}\n(stored locally: {stored})"
    )


# -- 2. faults: every write arrives, in order per user ------------------------------------------------------------

FAULTS = [
    pytest.param({"mode": "error", "status": 500, "count": 3}, id="500x3"),
    pytest.param({"mode": "rate_limited", "retry_after": 1, "count": 2}, id="429-retry-after-1x2"),
    pytest.param({"mode": "timeout", "count": 2}, id="timeout-x2"),
    pytest.param({"mode": "slow", "delay": 1.5, "count": 2}, id="slow-past-the-timeout-x2"),
    pytest.param({"mode": "refuse", "count": 3}, id="connection-closed-x3"),
    pytest.param({"mode": "stopped"}, id="fake-stopped-5s"),
]


def user_steps(uid: str) -> list[dict[str, Any]]:
    return [
        {"init": {"userId": uid}},
        {"event": "k0"},
        {"event": "k1"},
        {"set": {"owner": uid, "step": 2}},
        {"event": "k2"},
        {"event": "k3"},
        {"event": "k4"},
    ]


@pytest.mark.parametrize("fault", FAULTS)
def test_through_a_fault_every_write_arrives_in_order_per_user(
    fwd: Forwarding, run_node: NodeRunner, fault: dict[str, Any]
) -> None:
    users = [new_uid(f"u{n}") for n in range(3)]
    retried_before = fwd.status()["thisProcess"]["retried"]
    stopped_at = 0.0
    if fault["mode"] == "stopped":
        fwd.fake.stop()  # connections refused
        stopped_at = time.monotonic()
    else:
        fwd.fault(**fault)

    with ThreadPoolExecutor(len(users)) as pool:  # three visitors at once: their writes interleave
        outs = list(pool.map(lambda uid: run_visitor(run_node, fwd, user_steps(uid)), users))
    expected = [w for out in outs for w in sdk_writes(out)]
    for uid in users:
        assert len(of_user(expected, uid)) == 6, of_user(expected, uid)  # 5 events + 1 patch, all answered 2xx

    if fault["mode"] == "stopped":
        fwd.until(lambda: fwd.status()["thisProcess"]["retried"] > retried_before,
                  "the proxy trying (and failing) to forward while the fake is down")  # fmt: skip
        assert fwd.status()["lastFailure"], fwd.status()
        time.sleep(max(0.0, STOPPED_FOR - (time.monotonic() - stopped_at)))  # down long enough to back off
        fwd.fake.start(FAKE_EDGE_API_READY)  # same port

    seen = wait_arrived(fwd, expected)
    assert_in_order(seen, repeats_allowed=fault["mode"] == "slow")
    status = fwd.wait_drained()
    assert status["thisProcess"]["retried"] > retried_before, status  # the fault did make the proxy retry
    assert status["deadLetters"] == 0, status
    if fault["mode"] != "stopped":
        faulted = fwd.faulted()
        assert len(faulted) == fault["count"], faulted  # every injected fault was met, and no more
    if fault["mode"] == "slow":
        # The fake accepted the slow requests after the proxy had given up on them, and the proxy sent those writes
        # again: at-least-once shows as repeats, once the slow answers are in; the order still holds with them.
        fwd.until(lambda: sum(r for _, _, r in per_user(fwd, expected).values()) >= 1,
                  "a repeat of a write the fake accepted after the proxy's timeout")  # fmt: skip
        assert_in_order(per_user(fwd, expected), repeats_allowed=True)


# -- 3. a write Contentstack refuses for good: dead letter, retry ------------------------------------------------


def test_a_refused_event_is_a_dead_letter_its_neighbours_arrive_and_forward_retry_sends_it(
    fwd: Forwarding, run_node: NodeRunner
) -> None:
    uid = new_uid("rejected")
    fwd.fault(mode="reject_body", match="forbidden")
    out = run_visitor(run_node, fwd, [
        {"init": {"userId": uid}},
        {"event": "allowed-before"},
        {"event": "forbidden-thing"},
        {"event": "allowed-after"},
    ])  # fmt: skip
    expected = sdk_writes(out)
    assert [json.loads(w[5])["eventKey"] for w in expected] == ["allowed-before", "forbidden-thing", "allowed-after"]
    forbidden = expected[1]
    others = [expected[0], expected[2]]

    seen = wait_arrived(fwd, others)
    assert_in_order(seen, repeats_allowed=False)
    assert forbidden not in of_user(received_writes(fwd.received()), uid)

    # The refused write is buried before the user's next write is sent, so it is a dead letter by now.
    document = forward_status(fwd)
    assert document["deadLetters"] == 1, document
    letter = document["oldestDeadLetters"][0]
    assert letter["reason"].startswith("HTTP 400"), letter
    assert (letter["method"], letter["path"], letter["userUid"]) == ("POST", "/events", uid), letter
    assert letter["body"] == [json.loads(forbidden[5])], letter

    # Fixed at Contentstack: `forward retry` queues it again, it is sent (at the end of the user's queue).
    _http("DELETE", f"{fwd.fake.url}/_fake/faults")
    assert forward_cli(fwd, "retry").stdout.strip() == "1 dead letters queued again"
    seen = wait_arrived(fwd, expected)
    _, got, repeats = seen[uid]
    assert got == [*others, forbidden] and repeats == 0, got
    document = forward_status(fwd)
    assert document["deadLetters"] == 0, document
    status = fwd.wait_drained()
    fwd.until(lambda: fwd.status()["deadLetters"] == 0, "the proxy's status shows no dead letter")
    assert status["thisProcess"]["deadLettered"] >= 1, status


# -- 4. a merge must not overtake the source user's earlier writes ------------------------------------------------


def test_a_merge_is_forwarded_after_the_source_users_earlier_writes(fwd: Forwarding, run_node: NodeRunner) -> None:
    """The SDK sets attributes on the anonymous user, then logs in with preserveUserAttributes (a merge that copies
    them onto the known user). Contentstack must see the PATCH before the merge, or the merge copies nothing.

    Made deterministic with faults: the anonymous user's first event is rate-limited (Retry-After 2 s), so their
    event, their PATCH and the merge wait in the outbox together; then that event is answered slowly (0.5 s,
    within the timeout). The PATCH waits behind it; the merge must wait too."""
    anonymous, known = new_uid("anonymous"), new_uid("known")
    fwd.fault(mode="rate_limited", retry_after=2, paths=["/events"], count=1)
    fwd.fault(mode="slow", delay=0.5, paths=["/events"], count=1)
    out = run_visitor(run_node, fwd, [
        {"init": {"userId": anonymous}},
        {"event": "browsed"},
        {"set": {"tier": "gold", "lifetime_value": 1500}},
        {"setUserId": known, "preserve": True},
    ])  # fmt: skip
    expected = sdk_writes(out)
    assert [w[0] for w in expected] == ["POST /events", "PATCH /user-attributes", MERGE]
    seen = wait_arrived(fwd, expected, merge_source=True)
    arrived = [w[0] for w in seen[anonymous][1]]
    assert arrived == [w[0] for w in expected], (
        f"Contentstack received the anonymous user's writes as {arrived}: the merge "
        f"{anonymous} -> {known} overtook the PATCH it was meant to copy"
    )
    fwd.wait_drained()


# -- 5. the SDK in a browser --------------------------------------------------------------------------------------


def test_the_browser_sdk_impressions_and_event_arrive_with_its_headers(
    fwd: Forwarding, node_bin: str, chromium_bin: str, sdk_installed: Path
) -> None:
    visit = browse(node_bin, chromium_bin, fwd.stack, [
        {"name": "forwarded", "url": fwd.stack.url + "/", "fresh": True, "event": "fwd-browser-purchase"},
    ])["forwarded"]  # fmt: skip
    uid = {c["name"]: c["value"] for c in visit["cookies"]}[UID_COOKIE]
    fetched = [(e, v) for e, v in visit["sdk"]["fetched"] if v is not None]
    assert fetched, visit["sdk"]
    # What the bundle sent: triggerImpressions (the experiences with a variant, in the manifest's order) and
    # triggerEvent, each with the SDK's headers (same origin: no preflight). The proxy accepted them: they are
    # in its event store, in this order.
    impressions = [{"experienceShortUid": e, "variantShortUid": v, "type": "IMPRESSION"} for e, v in fetched]
    bodies = [*impressions, {"eventKey": "fwd-browser-purchase", "type": "EVENT"}]
    expected: list[Write] = [("POST /events", PROJECT_UID, uid, SDK_AGENT, CONTENT_TYPE, _canonical(b)) for b in bodies]
    stored = [r for r in fwd.stack.events(uid) if r["source"] == "sdk"]
    assert [(r["type"], r["experience_short_uid"] or r["event_key"]) for r in stored] == [
        *(("IMPRESSION", e) for e, _ in fetched),
        ("EVENT", "fwd-browser-purchase"),
    ], stored

    seen = wait_arrived(fwd, expected)
    assert_in_order(seen, repeats_allowed=False)
    # The page itself: the proxy's own impressions of what it decided, with its own agent.
    shown = {(e, v) for e, v in visit["sdk"]["fromCookie"] if v is not None}
    fwd.until(lambda: impressions_of(of_user(received_writes(fwd.received()), uid, OWN_AGENT)) == shown,
              f"the proxy's impressions {sorted(shown)} of the browser's page load")  # fmt: skip
    fwd.wait_drained()
