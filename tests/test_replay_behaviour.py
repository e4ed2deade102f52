"""`edgeproxy replay --behaviour FILE` (SPEC §13): behavioural attributes computed from the replayed traffic itself,
in time order, as the proxy computes them; without the flag, replay is what it was."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from replay_traffic import GB_UA, write_jsonl
from rulesets import (
    attribute,
    audience,
    custom_rule,
    experience,
    group,
    segmented_variant,
    uid_for,
    version,
    write_rules,
)

import edgeproxy.replay.run as replay_run
from edgeproxy.engine.context import VisitorContext
from edgeproxy.engine.decide import Manifest
from edgeproxy.engine.memo import MemoDecider
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.replay.behaviour import load_behaviour
from edgeproxy.replay.run import ReplayOptions, replay
from edgeproxy.visitor.behaviour import DAY, STATE_KEY, Behaviour, encode

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CONFIG = """\
origin = "http://origin.example"

[behaviour]
session_timeout = "30m"
visits = "visit_count"

[[behaviour.paths]]
attribute = "checkout_views_7d"
path = "/checkout*"
within = "7d"
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", "replay", *args], capture_output=True, text=True, timeout=120
    )


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def rules(folder: Path, *, checkout_more_than: int = 1) -> Path:
    """Experience "0": variant "0" for returning visitors (visit_count > 1). Experience "1": variant "0" for
    checkout shoppers (checkout_views_7d > `checkout_more_than`)."""
    return write_rules(
        folder,
        attributes=[attribute("visit_count"), attribute("checkout_views_7d")],
        audiences=[
            audience("returning", group("AND", custom_rule("visit_count", "NUMBER_GREATER_THAN", 1))),
            audience(
                "checkout shopper",
                group("AND", custom_rule("checkout_views_7d", "NUMBER_GREATER_THAN", checkout_more_than)),
            ),
        ],
        experiences=[
            (experience("returning", "0"), [version("ACTIVE", [segmented_variant("0", [uid_for("returning")])])]),
            (
                experience("checkout", "1"),
                [version("ACTIVE", [segmented_variant("0", [uid_for("checkout shopper")])])],
            ),
        ],
        priority=[uid_for("experience:returning"), uid_for("experience:checkout")],
    )


def config_file(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "edgeproxy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def view(step: str, user: str, minutes: float, path: str = "/", *, ua: str = GB_UA, **headers: str) -> dict[str, Any]:
    """A page view; `step` goes into the query (which the behaviour ignores) to name the request."""
    return {
        "url": f"https://shop.example{path}?step={step}",
        "method": "GET",
        "headers": {"User-Agent": ua, "Cookie": f"cs-personalize-user-uid={user}", **headers},
        "now": at(minutes),
    }


# One visitor, in time order: a new visit after 31 minutes without a page view.
RETURNING = [
    view("r1", "v1", 0),
    view("r2", "v1", 10, "/products/a"),
    view("r3", "v1", 41),  # 31 minutes after r2: visit 2
    view("r4", "v1", 42, "/cart"),
]
# Checkout views; a bot's and a script's (Sec-Fetch-Mode: cors) do not count.
CHECKOUT = [
    view("c1", "v2", 0, "/checkout"),
    view("c2", "v2", 1, "/checkout/pay", ua=BOT_UA),
    view("c3", "v2", 2, "/checkout", **{"Sec-Fetch-Mode": "cors"}),
    view("c4", "v2", 3),
    view("c5", "v2", 4, "/checkout/step2", **{"Sec-Fetch-Mode": "navigate"}),
    view("c6", "v2", 5),
]
# A bot 40 minutes after the visitor's first page view would start visit 2 if it counted.
BOT = [view("b1", "v3", 0), view("b2", "v3", 40, ua=BOT_UA), view("b3", "v3", 45)]
TIMELINE = [*RETURNING, *CHECKOUT, *BOT]
SHUFFLED = [TIMELINE[i] for i in (8, 3, 0, 12, 6, 2, 10, 1, 5, 11, 9, 4, 7)]


class Recorder:
    """Every decision replay makes, in the order it makes them: (step, activeVariants)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decisions: list[tuple[str, dict[str, Any]]] = []
        self.stored: dict[str, dict[str, Any]] = {}
        recorder = self

        class Recording(MemoDecider):
            def decide(self, ctx: VisitorContext, tags: Any = None) -> Manifest:
                manifest = super().decide(ctx, tags)
                step = parse_qs(urlsplit(ctx.page_url or "").query)["step"][0]
                recorder.decisions.append((step, dict(manifest.to_dict()["activeVariants"])))
                recorder.stored[step] = dict(ctx.stored)
                return manifest

        monkeypatch.setattr(replay_run, "MemoDecider", Recording)

    def steps(self) -> list[str]:
        return [step for step, _ in self.decisions]

    def in_variant(self, experience: str) -> set[str]:
        return {step for step, variants in self.decisions if variants.get(experience) == "0"}


def run(tmp_path: Path, traffic: list[dict[str, Any]], *, behaviour: bool, **options: Any) -> Any:
    path = write_jsonl(tmp_path / "traffic.jsonl", traffic)
    config = load_behaviour(str(config_file(tmp_path))) if behaviour else None
    return replay(load_snapshot(rules(tmp_path)), ReplayOptions([str(path)], behaviour=config, **options))


def test_behaviour_is_computed_in_time_order_from_traffic_given_out_of_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch)
    result = run(tmp_path, SHUFFLED, behaviour=True)
    assert result.requests == len(TIMELINE)
    # Decided by time (stable: the three requests at minute 0 keep their order in the file: r1, b1, c1).
    times = [next(d["now"] for d in TIMELINE if d["url"].endswith(f"={step}")) for step in recorder.steps()]
    assert times == sorted(times)
    assert recorder.steps()[:3] == ["r1", "b1", "c1"]
    # visit_count > 1: not the first visit; from the page view 31 minutes after the previous one, yes.
    returning = recorder.in_variant("0")
    assert {"r1", "r2"}.isdisjoint(returning) and {"r3", "r4"} <= returning
    assert recorder.stored["r2"]["visit_count"] == 1 and recorder.stored["r3"]["visit_count"] == 2
    # The bot 40 minutes later is not counted (it reads visit 1); the visitor's own page view 45 minutes after
    # the first starts visit 2.
    assert "b2" not in returning and "b3" in returning
    assert recorder.stored["b2"]["visit_count"] == 1
    # /checkout* within 7d > 1: flips with the second checkout page view; the bot's and the script's do not count.
    shoppers = recorder.in_variant("1")
    assert shoppers == {"c5", "c6"}
    assert [recorder.stored[s]["checkout_views_7d"] for s in ("c1", "c2", "c3", "c4", "c5", "c6")] == [
        1, 1, 1, 1, 2, 2,
    ]  # fmt: skip
    assert result.behaviour_page_views == len(TIMELINE) - 3  # two bots, one script


def test_without_behaviour_replay_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    stored = [{**d, "storedAttributes": {"visit_count": 5}} if d["url"].endswith("=r1") else d for d in SHUFFLED]
    result = run(tmp_path, stored, behaviour=False)
    # Input order, nobody in either audience but by the stored attributes given, which are read as they are.
    assert recorder.steps() == [parse_qs(urlsplit(d["url"]).query)["step"][0] for d in SHUFFLED]
    assert recorder.in_variant("0") == {"r1"} and recorder.in_variant("1") == set()
    assert all("checkout_views_7d" not in s for s in recorder.stored.values())
    assert result.behaviour_page_views is None


def test_computed_values_win_over_stored_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    traffic = [{**view("s1", "v9", 0), "storedAttributes": {"visit_count": 5, "tier": "gold"}}]
    run(tmp_path, traffic, behaviour=True)
    assert recorder.stored["s1"] == {"visit_count": 1, "tier": "gold", "checkout_views_7d": 0}
    assert recorder.in_variant("0") == set()


def test_a_stored_behaviour_is_continued_as_on_the_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A decision log records the visitor's behaviour as the store held it: replay carries on from it.
    recorder = Recorder(monkeypatch)
    earlier = (T0 - timedelta(hours=2)).timestamp()
    state = encode(Behaviour(earlier - DAY, earlier, None, 3, 7, None, None, {}))
    traffic = [{**view("k1", "v8", 0), "storedAttributes": {STATE_KEY: state}}, view("k2", "v8", 1)]
    run(tmp_path, traffic, behaviour=True)
    assert recorder.stored["k1"]["visit_count"] == 4 and recorder.stored["k2"]["visit_count"] == 4
    assert recorder.in_variant("0") == {"k1", "k2"}


def test_requests_without_now_keep_their_input_order_at_the_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch)
    untimed = [{k: v for k, v in view(f"n{i}", "v4", 0).items() if k != "now"} for i in (1, 2, 3)]
    traffic = [untimed[0], view("late", "v4", 120), untimed[1], view("early", "v4", 0), untimed[2]]
    # The clock (--now) is 60 minutes after T0: the untimed requests go between the timed ones, in input order.
    clock = (T0 + timedelta(minutes=60)).timestamp()
    run(tmp_path, traffic, behaviour=True, clock=lambda: clock)
    assert recorder.steps() == ["early", "n1", "n2", "n3", "late"]
    assert recorder.stored["n1"]["visit_count"] == 2 and recorder.stored["n3"]["visit_count"] == 2
    assert recorder.stored["late"]["visit_count"] == 3


def _report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _variant_requests(data: dict[str, Any], experience: str, key: str = "experiences") -> int:
    found = next(e for e in data[key] if e["shortUid"] == experience)
    return int(found["variants"][0]["requests"])


def test_cli_flag_json_report_and_against_use_the_same_attributes(tmp_path: Path) -> None:
    traffic = write_jsonl(tmp_path / "t.jsonl", SHUFFLED)
    before = rules(tmp_path / "a")
    after = rules(tmp_path / "b", checkout_more_than=2)  # only experience "1" changes
    config = config_file(tmp_path)
    with_behaviour = _report(cli(str(traffic), "--rules", str(before), "--behaviour", str(config), "--json"))
    assert _variant_requests(with_behaviour, "0") == 3  # r3, r4, b3
    assert _variant_requests(with_behaviour, "1") == 2  # c5, c6
    assert with_behaviour["behaviour"] == {"pageViews": 10}
    text = cli(str(traffic), "--rules", str(before), "--behaviour", str(config))
    assert text.returncode == 0 and "computed in time order from 10 page views" in text.stdout
    # Without the flag: nobody is in either audience, and the report has no behaviour.
    plain = _report(cli(str(traffic), "--rules", str(before), "--json"))
    assert _variant_requests(plain, "0") == 0 and _variant_requests(plain, "1") == 0
    assert "behaviour" not in plain
    # --against decides with the same computed attributes: experience "0" moves nobody; "1" loses c5, c6.
    diff = _report(cli(str(traffic), "--rules", str(before), "--against", str(after), "--behaviour", str(config),
                       "--json"))  # fmt: skip
    against = diff["against"]
    assert _variant_requests(against, "0", "experiencesAfter") == 3
    assert _variant_requests(against, "1", "experiencesAfter") == 0
    assert against["changedRequests"] == 2 and {m["experience"] for m in against["rebucketing"]["moves"]} <= {"1"}


def test_har_and_decision_log_traffic_get_behaviour_too(tmp_path: Path) -> None:
    snapshot_rules = rules(tmp_path)
    config = config_file(tmp_path)

    def entry(minutes: float, path: str) -> dict[str, Any]:
        headers = [("User-Agent", GB_UA), ("Cookie", "cs-personalize-user-uid=h1"), ("Sec-Fetch-Mode", "navigate"),
                   ("Sec-Fetch-Dest", "document")]  # fmt: skip
        return {
            "startedDateTime": at(minutes),
            "request": {"method": "GET", "url": f"https://shop.example{path}",
                        "headers": [{"name": n, "value": v} for n, v in headers]},
            "response": {"status": 200, "headers": [], "content": {"mimeType": "text/html"}},
        }  # fmt: skip

    har = tmp_path / "visit.har"
    har.write_text(json.dumps({"log": {"entries": [entry(41, "/"), entry(0, "/"), entry(10, "/checkout")]}}))
    data = _report(cli(str(har), "--rules", str(snapshot_rules), "--behaviour", str(config), "--json"))
    assert data["requests"] == 3 and _variant_requests(data, "0") == 1  # only the page view at minute 41
    assert _variant_requests(_report(cli(str(har), "--rules", str(snapshot_rules), "--json")), "0") == 0

    # A decision log: the request's time is the record's `ts`.
    def line(minutes: float, path: str) -> dict[str, Any]:
        request = {k: v for k, v in view("l", "l1", minutes, path).items() if k != "now"}
        return {"ts": at(minutes), "request": request, "decision": {"activeVariants": {}}, "snapshot": "x"}

    log = write_jsonl(tmp_path / "decisions.jsonl", [line(50, "/checkout"), line(0, "/checkout"), line(5, "/")])
    data = _report(cli(str(log), "--rules", str(snapshot_rules), "--behaviour", str(config), "--json"))
    assert data["traffic"][0]["format"] == "log"
    assert _variant_requests(data, "0") == 1 and _variant_requests(data, "1") == 1  # the view at minute 50


def test_behaviour_file_problems_exit_2(tmp_path: Path) -> None:
    snapshot_rules = rules(tmp_path)
    traffic = write_jsonl(tmp_path / "t.jsonl", TIMELINE)
    without = config_file(tmp_path, 'origin = "http://origin.example"\n')
    result = cli(str(traffic), "--rules", str(snapshot_rules), "--behaviour", str(without))
    assert result.returncode == 2 and "no [behaviour] table" in result.stderr and str(without) in result.stderr
    assert "Traceback" not in result.stderr
    bad = config_file(tmp_path, '[behaviour]\nvisits = "visit_count"\nsession_timeout = "soon"\n')
    result = cli(str(traffic), "--rules", str(snapshot_rules), "--behaviour", str(bad))
    assert result.returncode == 2 and "session_timeout" in result.stderr and "Traceback" not in result.stderr
    result = cli(str(traffic), "--rules", str(snapshot_rules), "--behaviour", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "missing.toml" in result.stderr and "Traceback" not in result.stderr
    result = cli("--rules", str(snapshot_rules), "--behaviour", str(config_file(tmp_path)))
    assert result.returncode == 2 and "TRAFFIC" in result.stderr


def test_in_consent_mode_a_visitor_without_consent_is_nobody_in_replay_as_on_the_proxy(tmp_path: Path) -> None:
    """The proxy's config in consent mode (SPEC §11): a visitor without the consent cookie (or with another value
    than the one configured) is decided for nobody — no behaviour counted, no stored attributes — by `replay` as by
    the proxy, whether the mode comes from `--config` or from the `--behaviour` file; a decision log was written
    for visitors with consent only, so its records are not asked again."""
    snapshot_rules = rules(tmp_path)
    config = config_file(tmp_path, 'consent_cookie = "ok"\nconsent_value = "yes"\n' + CONFIG)

    def visits(user: str, cookie: str) -> list[dict[str, Any]]:  # visit 2 at minute 41: "returning" from then on
        found = [view(f"{user}{n}", user, minutes) for n, minutes in enumerate((0, 41, 42))]
        for described in found:
            described["headers"]["Cookie"] += cookie
        return found

    stored = {**view("stored", "stored", 50), "storedAttributes": {"visit_count": 5}}
    traffic = write_jsonl(
        tmp_path / "t.jsonl", [*visits("yes", "; ok=yes"), *visits("other", "; ok=no"), *visits("none", ""), stored]
    )
    for flags in (("--behaviour", str(config)), ("--config", str(config), "--behaviour", str(config))):
        data = _report(cli(str(traffic), "--rules", str(snapshot_rules), *flags, "--json"))
        assert data["behaviour"] == {"pageViews": 3}  # only the visitor who consented counts
        assert _variant_requests(data, "0") == 2  # their visit 2 (minutes 41, 42); not the stored 5 of nobody
    (tmp_path / "plain").mkdir()
    plain = _report(cli(str(traffic), "--rules", str(snapshot_rules), "--behaviour",
                        str(config_file(tmp_path / "plain")), "--json"))  # fmt: skip
    assert plain["behaviour"] == {"pageViews": 10} and _variant_requests(plain, "0") == 6  # no consent mode

    # A decision log in consent mode: its visitors had consent (the log keeps only the cookies decisions read).
    def line(minutes: float) -> dict[str, Any]:
        request = {k: v for k, v in view("l", "l1", minutes).items() if k != "now"}
        return {"ts": at(minutes), "request": request, "decision": {"activeVariants": {}}, "snapshot": "x"}

    log = write_jsonl(tmp_path / "decisions.jsonl", [line(0), line(41)])
    data = _report(cli(str(log), "--rules", str(snapshot_rules), "--behaviour", str(config), "--json"))
    assert data["behaviour"] == {"pageViews": 2} and _variant_requests(data, "0") == 1
