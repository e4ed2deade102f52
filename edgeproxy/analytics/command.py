"""`edgeproxy report`: the A/B report of the events the proxy stored, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO, Any

DEFAULT_STATE = "sqlite:///edgeproxy-state.sqlite3"  # the proxy's default `state`


def run_report(args: argparse.Namespace, out: IO[str]) -> int:
    from edgeproxy.analytics.report import build_report, parse_time, render_table, report_scope
    from edgeproxy.analytics.sources import AnalyticsError, collect_tallies, redact
    from edgeproxy.files.snapshot_file import load_snapshot
    from edgeproxy.store.base import state_url_problem
    from edgeproxy.store.events_url import events_url_problem

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
        now = parse_time(args.now) if args.now else None
    except ValueError as exc:
        print(f"edgeproxy: report: {exc}", file=sys.stderr)
        return 2
    if since is not None and until is not None and since >= until:
        print("edgeproxy: report: --since must be before --until", file=sys.stderr)
        return 2
    snapshot = load_snapshot(args.rules)
    project = snapshot.project
    state = args.state or os.environ.get("EDGEPROXY_STATE") or DEFAULT_STATE
    problem = state_url_problem(state)
    if problem:
        where = "--state" if args.state else "EDGEPROXY_STATE"
        print(f"edgeproxy: report: {where}: {problem}", file=sys.stderr)
        return 2
    events = args.events or os.environ.get("EDGEPROXY_EVENTS") or ""
    if events:
        problem = events_url_problem(events)
        if problem:
            where = "--events" if args.events else "EDGEPROXY_EVENTS"
            print(f"edgeproxy: report: {where}: {problem}", file=sys.stderr)
            return 2
    source = events or state
    try:
        scope = report_scope(project, args.experience, since, until)
        tallies = collect_tallies(source, project.uid, scope, daily=False)
    except (AnalyticsError, ValueError) as exc:
        print(f"edgeproxy: report: {exc}", file=sys.stderr)
        return 2
    report = build_report(project, snapshot.version, tallies, scope, now=now, source=redact(source))
    if args.json:
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(render_table(report))
    return 0


def add_report_command(commands: Any) -> None:
    """Register `edgeproxy report` on the CLI's subparsers."""
    report = commands.add_parser(
        "report",
        help="A/B results of the stored events: impressions, conversions, rates, uplift, P2BB, SRM",
        description="Per experience (priority order) and variant: unique impressions (deduplicated across the "
        "sdk, proxy and origin sources), unique conversions per metric (within 30 days after the user's "
        "impression, credited to the variant they saw), conversion rate with a 95%% Wilson interval, uplift "
        "over the first variant, probability to be best (15,000 seeded draws), insights, leader, winner "
        "(P2BB >= 95%% and >= 14 days) and a sample-ratio-mismatch warning (chi-square, p < 0.001).",
    )
    report.add_argument(
        "--rules", required=True, help="the snapshot the events belong to: an export folder or a .msgpack file"
    )
    report.add_argument(
        "--state",
        metavar="URL",
        help=f"where the proxy stores events: sqlite:///path.db or redis://host:port/db "
        f"(default: EDGEPROXY_STATE, else {DEFAULT_STATE})",
    )
    report.add_argument(
        "--events",
        metavar="URL",
        help="where the events are when not in the state store: the fleet's PostgreSQL event store, "
        "postgresql://user@host:port/database (default: EDGEPROXY_EVENTS, else the --state store)",
    )
    report.add_argument("--experience", metavar="SHORTUID", help="only this experience")
    report.add_argument("--since", metavar="ISO", help="only events at or after this time (e.g. 2026-11-01)")
    report.add_argument("--until", metavar="ISO", help="only events before this time")
    report.add_argument(
        "--now", metavar="ISO", help="count 'running days' up to this time instead of the clock (reproducible reports)"
    )
    report.add_argument("--json", action="store_true", help="print the report as JSON (for machines)")
    report.set_defaults(run=run_report)
