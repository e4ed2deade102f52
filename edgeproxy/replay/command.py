"""`edgeproxy replay`: run recorded traffic through the engine, compare snapshots, check expectations."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import IO, Any

from edgeproxy.engine.model import parse_iso_time
from edgeproxy.files.snapshot_file import load_snapshot
from edgeproxy.replay.aggregate import DEFAULT_SRM_ALPHA
from edgeproxy.replay.coverage import DEFAULT_RULE_SAMPLE
from edgeproxy.replay.diff import DEFAULT_EXPLAINED_MOVES, DEFAULT_SAMPLES_PER_MOVE
from edgeproxy.replay.expectations import ExpectationResult, ExpectationsError, check_expectation, load_expectations
from edgeproxy.replay.readers import FORMATS, HarFilter, TrafficError

DESCRIPTION = """\
Replay recorded traffic through the decision engine and report, per experience and variant, how many requests
and distinct users got it; A/B splits against their weights (chi-square); experiences never activated, audiences
never matched and rules never true. TRAFFIC files are HAR files, edgeproxy decision logs (serve --decision-log)
or request-description JSON lines (docs/contract.md §9), detected per file; .gz is read too, and - is stdin.

behavioural attributes (--behaviour FILE, README "Behavioural attributes"): the attributes of FILE's [behaviour]
table (the proxy's config file works) are computed from the traffic itself, as the proxy computes them. All the
traffic is read first, then decided in time order: by each request's `now`, a stable order (equal times keep their
input order); a request without `now` is taken at --now (default: the current time), and such requests keep their
input order. A visitor's page view (GET, Sec-Fetch-Mode absent or navigate, not XMLHttpRequest or prefetch, not a
bot User-Agent, not a preview) is counted, then the visitor's attributes are merged over the request's stored
attributes (computed values win); other requests read them without counting. A visitor without a uid is new on
every request; one whose stored attributes carry a behaviour (decision logs do) continues from it. --against
decides with the same attributes; --limit takes the first N requests in time order.

exit status: 0 ok; 1 an expectation failed, a recorded decision differs (--from-log), or re-bucketing with
--fail-on-rebucket; 2 bad rules, bad arguments, unreadable traffic, traffic in which no request could be
replayed (all invalid or skipped), or a malformed expectation file; 141 the reader of the output went away."""


def add_replay_command(commands: Any) -> None:
    replay = commands.add_parser(
        "replay",
        help="replay recorded traffic (HAR, decision log, JSON lines) against rules; diff snapshots; expectations",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("traffic", nargs="*", metavar="TRAFFIC", help="traffic files (HAR, decision log, JSON lines)")
    replay.add_argument("--rules", required=True, help="rules: a Personalize export folder or a compiled .msgpack")
    replay.add_argument("--against", metavar="PATH2",
                        help="a second rule set: decide every request under both, report users who move")  # fmt: skip
    replay.add_argument("--geoip", metavar="MMDB", help="MaxMind City database for requests with an IP and no geo")
    replay.add_argument("--format", choices=FORMATS, help="force the traffic format instead of detecting it per file")
    replay.add_argument("--config", metavar="FILE",
                        help="the proxy's TOML config: HAR entries follow its [[routes]] (tags, personalize = "
                        "false), skip_paths and static_extensions, and its consent mode, as `serve` would")  # fmt: skip
    replay.add_argument("--behaviour", metavar="FILE",
                        help="TOML file with a [behaviour] table (e.g. the proxy's config): compute behavioural "
                        "attributes from the traffic, decided in time order (see below)")  # fmt: skip
    replay.add_argument("--all-requests", action="store_true",
                        help="HAR: replay every entry, not only GET page loads (assets, XHR, POST are skipped "
                        "by default)")  # fmt: skip
    replay.add_argument("--expect", metavar="FILE", action="append",
                        help="YAML/JSON expectations: request -> expected variants (repeatable)")  # fmt: skip
    replay.add_argument("--junit", metavar="FILE", help="write JUnit XML (expectations, --from-log checks)")
    replay.add_argument("--from-log", action="store_true",
                        help="verify that today's engine reproduces the decisions recorded in the traffic "
                        "(decision log; HAR manifest cookies)")  # fmt: skip
    replay.add_argument("--json", action="store_true", help="print the report as one JSON object")
    replay.add_argument("--chart", metavar="FILE", help="write a chart of the distribution: FILE.svg or FILE.html")
    replay.add_argument("--now", metavar="ISO", help="clock for requests that carry no time (default: now)")
    replay.add_argument("--limit", type=_positive, metavar="N", help="replay at most N requests (N >= 1)")
    replay.add_argument("--srm-alpha", type=float, default=DEFAULT_SRM_ALPHA,
                        help=f"p-value below which an A/B split mismatches (default {DEFAULT_SRM_ALPHA})")  # fmt: skip
    replay.add_argument("--rule-sample", type=_positive, default=DEFAULT_RULE_SAMPLE, metavar="N",
                        help=f"count rule truth on every Nth request (default {DEFAULT_RULE_SAMPLE}); never-true "
                        "rules are found exactly on all requests")  # fmt: skip
    replay.add_argument("--no-coverage", action="store_true", help="skip audience/rule coverage")
    replay.add_argument("--samples", type=int, default=DEFAULT_SAMPLES_PER_MOVE, metavar="N",
                        help=f"sample requests kept per move (default {DEFAULT_SAMPLES_PER_MOVE})")  # fmt: skip
    replay.add_argument("--explain-moves", type=int, default=DEFAULT_EXPLAINED_MOVES, metavar="N",
                        help=f"explain the first N moves (default {DEFAULT_EXPLAINED_MOVES})")  # fmt: skip
    replay.add_argument("--fail-on-rebucket", action="store_true",
                        help="exit 1 when --against re-buckets users of a running A/B test")  # fmt: skip
    replay.add_argument("--no-memo", action="store_true",
                        help="decide every request from scratch (the memo is exact: for checking)")  # fmt: skip
    replay.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")  # fmt: skip
    replay.set_defaults(run=run_replay)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def _output_problems(args: argparse.Namespace) -> list[str]:
    """Output arguments checked before anything is replayed (a wrong name must not cost a whole replay)."""
    from edgeproxy.replay.chart import CHART_SUFFIXES, output_problem

    problems = []
    if args.chart:
        problems.append(output_problem("--chart", args.chart, CHART_SUFFIXES))
        if not args.traffic:
            problems.append("--chart draws the replayed traffic: give TRAFFIC files")
    if args.junit:
        problems.append(output_problem("--junit", args.junit))
    return [p for p in problems if p]


IP_PEEK_RECORDS = 1000


def _warn_ip_without_geoip(args: argparse.Namespace, snapshot: Any) -> None:
    """`edgeproxy decide`'s warning: descriptions with an `ip` that no --geoip database will look up (their geo
    presets then come only from `geo` fields). Looks at the first records of each file (stdin is not peeked)."""
    import itertools

    from edgeproxy.geo import IpWarning
    from edgeproxy.replay.readers import HarFilter, read_traffic

    warning = IpWarning(snapshot, args.geoip)
    for path in args.traffic:
        if not warning.pending or path == "-":
            continue
        records = read_traffic([path], force=args.format, har_filter=HarFilter())
        assert isinstance(records, Generator)
        try:
            for record in itertools.islice(records, IP_PEEK_RECORDS):
                if record.geo_lookup_allowed:
                    warning.description(record.description)
                if not warning.pending:
                    break
        except (TrafficError, ValueError, OSError):
            pass  # the replay itself reports unreadable traffic
        finally:
            records.close()


def _clock(now: str | None) -> Any:
    if not now:
        return time.time
    try:
        fixed = parse_iso_time(now).timestamp()
    except ValueError:
        raise ValueError(f"--now {now!r}: not ISO-8601 (e.g. 2026-11-22T10:00:00Z)") from None
    return lambda: fixed


def _proxy_config(path: str, rules: str) -> Any:
    """The proxy's settings from its config file, as `serve --config FILE` would use them for routing and consent
    mode (the origin and the rules are not needed for those)."""
    import tomllib

    from edgeproxy.runtime.config import ConfigError, load_config

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--config {path}: cannot be read as TOML: {exc}") from None
    flags: dict[str, Any] = {}
    if not data.get("origin"):
        flags["origin"] = "http://replay.invalid"  # routing does not need the origin
    if not any(data.get(name) for name in ("rules", "admin_url", "region")):
        flags["rules"] = rules
    try:
        return load_config(path, {}, flags)
    except ConfigError as exc:
        raise ValueError(f"--config {path}: {exc}") from None


def run_replay(args: argparse.Namespace, out: IO[str]) -> int:
    from edgeproxy.replay.behaviour import load_behaviour
    from edgeproxy.replay.chart import write_chart
    from edgeproxy.replay.junit import junit_xml, write_junit
    from edgeproxy.replay.progress import Progress
    from edgeproxy.replay.reporting import render_text, report_dict
    from edgeproxy.replay.run import ReplayOptions, ReplayResult, replay
    from edgeproxy.runtime.config import consent_mode, read_settings

    if not args.traffic and not args.expect:
        print("edgeproxy: replay needs TRAFFIC files, --expect FILE, or both", file=sys.stderr)
        return 2
    if args.from_log and not args.traffic:
        print("edgeproxy: --from-log needs the traffic (decision log or HAR) to verify", file=sys.stderr)
        return 2
    if args.against and not args.traffic:
        print("edgeproxy: --against needs TRAFFIC files to replay under both rule sets", file=sys.stderr)
        return 2
    if args.behaviour and not args.traffic:
        print("edgeproxy: --behaviour computes attributes from the traffic: give TRAFFIC files", file=sys.stderr)
        return 2
    problems = _output_problems(args)
    if problems:
        for problem in problems:
            print(f"edgeproxy: replay: {problem}", file=sys.stderr)
        return 2
    clock = _clock(args.now)
    behaviour = load_behaviour(args.behaviour) if args.behaviour else None
    snapshot = load_snapshot(args.rules)
    against = load_snapshot(args.against) if args.against else None
    geo_lookup = None
    if args.geoip:
        from edgeproxy.geo import MaxMindGeo

        geo_lookup = MaxMindGeo(args.geoip).lookup

    routes = consent = None
    if args.config:
        from edgeproxy.exchange.routes import RouteTable

        settings = _proxy_config(args.config, args.rules)
        routes = RouteTable(settings)
        consent = consent_mode(settings)
    elif args.behaviour:
        consent = consent_mode(read_settings(args.behaviour, {}, {}))  # (load_behaviour read it without error)
    if args.traffic:
        _warn_ip_without_geoip(args, snapshot)

    expectation_results: list[ExpectationResult] | None = None
    expectations_seconds = 0.0
    if args.expect:
        started = time.perf_counter()
        try:
            cases = [case for path in args.expect for case in load_expectations(path, snapshot)]
            expectation_results = [check_expectation(c, snapshot, clock=clock, geo_lookup=geo_lookup) for c in cases]
        except ExpectationsError as exc:
            print(f"edgeproxy: expectations error: {exc}", file=sys.stderr)
            return 2
        expectations_seconds = time.perf_counter() - started

    result: ReplayResult | None = None
    if args.traffic:
        options = ReplayOptions(
            traffic=list(args.traffic),
            format=args.format,
            har_filter=HarFilter(all_requests=args.all_requests, routes=routes),
            geo_lookup=geo_lookup,
            clock=clock,
            memo=not args.no_memo,
            coverage=not args.no_coverage,
            rule_sample=args.rule_sample,
            verify_recorded=args.from_log,
            limit=args.limit,
            samples_per_move=args.samples,
            explained_moves=args.explain_moves,
            behaviour=behaviour,
            consent=consent,
        )
        progress = Progress(sys.stderr, list(args.traffic), enabled=args.progress)
        try:
            result = replay(snapshot, options, against=against, progress=progress)
        except TrafficError as exc:
            print(f"\nedgeproxy: traffic error: {exc}", file=sys.stderr)
            return 2
        if args.from_log and result.recorded is not None and result.recorded.checked == 0:
            print(
                "edgeproxy: --from-log: no recorded decisions in the traffic (a decision log from "
                "`serve --decision-log`, or a HAR recorded through edgeproxy with its cookies)",
                file=sys.stderr,
            )
            return 2

    if args.json:
        out.write(json.dumps(report_dict(result, expectation_results, srm_alpha=args.srm_alpha), default=str,
                             ensure_ascii=False, indent=1) + "\n")  # fmt: skip
    else:
        out.write(render_text(result, expectation_results, srm_alpha=args.srm_alpha))
    if args.chart and result is not None:
        before = result.distribution.experience_results(args.srm_alpha)
        after = (
            result.against_distribution.experience_results(args.srm_alpha)
            if result.against_distribution is not None else None
        )  # fmt: skip
        subtitle = f"{result.requests:,} requests, {result.users:,} users; snapshot {snapshot.version}"
        if against is not None:
            subtitle += f" vs {against.version}"
        write_chart(args.chart, before, after, title="edgeproxy replay: variant distribution", subtitle=subtitle)
    if args.junit:
        write_junit(
            args.junit,
            junit_xml(
                expectation_results,
                result.recorded if result is not None else None,
                [s.source for s in result.sources] if result is not None else [],
                expectations_seconds=expectations_seconds,
                replay_seconds=result.seconds if result is not None else 0.0,
            ),
        )
    if result is not None and result.requests == 0:
        skipped = sum(sum(s.skipped.values()) for s in result.sources)
        print(
            f"edgeproxy: replay: no request in the traffic could be replayed ({result.invalid:,} invalid, "
            f"{skipped:,} skipped; see the report): nothing was tested (exit 2)",
            file=sys.stderr,
        )
        return 2
    failed = False
    if expectation_results is not None and any(not r.passed for r in expectation_results):
        failed = True
    if result is not None and result.recorded is not None and result.recorded.mismatched:
        failed = True
    if args.fail_on_rebucket and result is not None and result.diff is not None and result.diff.rebucketed():
        failed = True
    return 1 if failed else 0
