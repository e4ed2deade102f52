"""`edgeproxy` command line: serve, decide, compile, sync, fake-admin, fake-edge-api, forward, user, report, ..."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from edgeproxy.engine.context import GeoLookup, context_from_description
from edgeproxy.engine.decide import CompiledSnapshot
from edgeproxy.engine.errors import RequestDescriptionError, RulesError
from edgeproxy.engine.explain import explain, render_explanation
from edgeproxy.files.snapshot_file import load_snapshot, write_snapshot_file
from edgeproxy.geo import IpWarning


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _request_lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield number, line


def _request_file(path: Path) -> Iterator[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.strip()
    # A single (possibly pretty-printed) description or an array of them (on one line or many) is accepted as well
    # as JSON lines.
    if stripped.startswith("[") or (stripped.startswith("{") and "\n" in stripped):
        try:
            whole = json.loads(stripped)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            yield 1, json.dumps(whole)
            return
        if isinstance(whole, list):
            for index, item in enumerate(whole, start=1):
                yield index, json.dumps(item)
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _geo_lookup(path: str | None) -> GeoLookup | None:
    if not path:
        return None
    from edgeproxy.geo import MaxMindGeo

    return MaxMindGeo(path).lookup


def run_decide(args: argparse.Namespace, out: IO[str]) -> int:
    snapshot = load_snapshot(args.rules)
    geo_lookup = _geo_lookup(args.geoip)
    lines = _request_file(Path(args.request)) if args.request else _request_lines(sys.stdin)
    ip_warning = IpWarning(snapshot, args.geoip)
    failures = 0
    for number, line in lines:
        ip_warning.line(line)
        result = decide_line(snapshot, line, number, geo_lookup, explain_mode=args.explain)
        if "error" in result[0]:
            failures += 1
        out.write(_dump(result[0]) + "\n")
        if result[1] is not None:
            out.write(result[1] + "\n\n")
        out.flush()
    return 1 if failures and args.strict else 0


def decide_line(
    snapshot: CompiledSnapshot, line: str, number: int, geo_lookup: GeoLookup | None, explain_mode: str | None = None
) -> tuple[dict[str, Any], str | None]:
    """One request description line -> (manifest or error object, optional readable explanation)."""
    try:
        description = json.loads(line)
    except json.JSONDecodeError as exc:
        return {
            "line": number,
            "error": "invalid_json",
            "message": f"line {number}: not valid JSON: {exc.msg} at column {exc.colno}",
        }, None
    try:
        described = context_from_description(
            description,
            clock=time.time,
            new_uid=lambda: str(uuid.uuid4()),
            classifier=snapshot.classifier,
            geo_lookup=geo_lookup,
        )
    except RequestDescriptionError as exc:
        return {
            "line": number,
            "error": "invalid_request",
            "field": exc.field,
            "message": f"line {number}: {exc}",
        }, None
    forcing = described.forcing
    if forcing is None:
        manifest = snapshot.decide(described.context, described.tags).to_dict()
    else:  # the description's `preview` (SPEC §10)
        manifest = snapshot.decide_forced(described.context, described.tags, forcing).to_dict()
    if explain_mode is None:
        return manifest, None
    trace = explain(snapshot, described.context, described.tags, forcing)
    if explain_mode == "json":
        manifest["explanation"] = trace
        return manifest, None
    return manifest, render_explanation(trace)


def run_compile(args: argparse.Namespace, out: IO[str]) -> int:
    from edgeproxy.replay.chart import output_problem

    problem = output_problem("-o", args.output)  # before loading: a typo'd folder is not created at random
    if problem is not None:
        print(f"edgeproxy: compile: {problem}", file=sys.stderr)
        return 2
    snapshot = load_snapshot(args.rules)
    write_snapshot_file(snapshot, args.output)
    project = snapshot.project
    out.write(
        f"wrote {args.output}: version {snapshot.version}, project {project.uid}, "
        f"{len(project.experiences)} live experiences ({len(project.omitted)} omitted), "
        f"{len(project.audiences)} audiences, {len(project.attributes)} attributes, {len(project.events)} events\n"
    )
    for problem in project.draft_problems:  # a draft in progress never blocks a snapshot; previews leave it out
        print(f"edgeproxy: compile: warning: {problem}", file=sys.stderr)
    return 0


def run_sync(args: argparse.Namespace, out: IO[str]) -> int:
    import asyncio
    import os

    from edgeproxy.sync.client import ManagementClient, SyncError, admin_base_url
    from edgeproxy.sync.writer import write_export

    authtoken = args.authtoken or os.environ.get("EDGEPROXY_AUTHTOKEN")
    oauth = args.oauth_token or os.environ.get("EDGEPROXY_OAUTH_TOKEN")
    try:
        client = ManagementClient(
            admin_base_url(args.admin_url, args.region), args.project_uid, authtoken=authtoken, oauth_token=oauth
        )
        print(f"fetching project {args.project_uid} from {client.base_url} ...", file=sys.stderr, flush=True)
        tree = asyncio.run(client.fetch_tree())
    except SyncError as exc:
        print(f"edgeproxy: sync failed: {exc}", file=sys.stderr)
        return 2
    snapshot = write_export(args.out, tree.files)
    client.commit(tree)
    project = snapshot.project
    folder = Path(args.out)
    out.write(
        f"synced {folder}: version {snapshot.version}, {len(project.experiences)} live experiences "
        f"({len(project.omitted)} omitted), {len(project.audiences)} audiences; "
        f"--rules {folder} or {folder / 'snapshot.msgpack'}\n"
    )
    return 0


def run_publish(args: argparse.Namespace, out: IO[str]) -> int:
    import asyncio

    from redis.exceptions import RedisError

    from edgeproxy.analytics.sources import redact
    from edgeproxy.sync.fleet import publish

    url = args.fleet_redis
    if not url.startswith(("redis://", "rediss://", "unix://")):
        print(f"edgeproxy: publish: --fleet-redis {redact(url)!r} is not a redis://host:port/db URL", file=sys.stderr)
        return 2
    snapshot = load_snapshot(args.rules)
    try:
        heard = asyncio.run(publish(url, snapshot))
    except (RedisError, OSError, ValueError) as exc:
        print(
            f"edgeproxy: publish: cannot publish to Redis at {redact(url)}: {exc} "
            "(is Redis running there? check --fleet-redis)",
            file=sys.stderr,
        )
        return 2
    out.write(f"published {snapshot.version} to {redact(url)}: {heard} instance(s) listening\n")
    return 0


def _listen_address(command: str, listen: str) -> tuple[str, int] | None:
    """HOST:PORT of a fake's --listen (HOST defaults to 127.0.0.1), or None after one line on stderr."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        print(f"edgeproxy: {command}: --listen {listen!r} is not HOST:PORT with a port 1-65535", file=sys.stderr)
        return None
    return host or "127.0.0.1", int(port)


def run_fake_admin(args: argparse.Namespace, out: IO[str]) -> int:
    from edgeproxy.sync.fake_admin import run_fake_admin as serve_fake

    address = _listen_address("fake-admin", args.listen)
    if address is None:
        return 2
    serve_fake(args.rules, args.project_uid, args.token, *address)
    return 0


def run_fake_edge_api(args: argparse.Namespace, out: IO[str]) -> int:
    from edgeproxy.sync.fake_edge_api import run_fake_edge_api as serve_fake

    address = _listen_address("fake-edge-api", args.listen)
    if address is None:
        return 2
    serve_fake(args.project_uid, *address)
    return 0


def _add_sync(commands: Any) -> None:
    sync = commands.add_parser(
        "sync",
        help="fetch a project from the Personalize Management API into an export folder + snapshot",
        description="Fetch attributes, events, audiences (with Lytics), experiences, every experience's versions "
        "and the priority from the Management API, validate them, and write OUT/personalize (the CLI-export "
        "layout) and OUT/snapshot.msgpack atomically. The snapshot version is a content hash.",
    )
    sync.add_argument("--admin-url", help="Management API base URL (default: the --region host)")
    sync.add_argument("--region", help="na (default), eu, au, azure-na, azure-eu, gcp-na, gcp-eu")
    sync.add_argument("--project-uid", required=True, help="the Personalize project uid")
    sync.add_argument("--authtoken", help="authtoken (or EDGEPROXY_AUTHTOKEN)")
    sync.add_argument("--oauth-token", help="OAuth bearer token (or EDGEPROXY_OAUTH_TOKEN)")
    sync.add_argument("--out", required=True, help="output folder (created; previous versions are kept)")
    sync.set_defaults(run=run_sync)

    pub = commands.add_parser(
        "publish",
        help="publish a snapshot to a fleet of proxies through Redis (serve --fleet-redis)",
        description="Validate rules (a folder or a .msgpack) and publish them to every edgeproxy started with "
        "--fleet-redis URL; they all swap to it together, and instances started later adopt it.",
    )
    pub.add_argument("--rules", required=True, help="export folder or compiled .msgpack snapshot")
    pub.add_argument("--fleet-redis", required=True, help="redis://host:port/db shared by the fleet")
    pub.set_defaults(run=run_publish)

    fake = commands.add_parser(
        "fake-admin",
        help="serve a rules folder as a local fake of the Management API (tests, trying sync)",
        description="A faithful local fake of the Personalize Management API with fault injection "
        "(POST /_fake/faults); see edgeproxy/sync/fake_admin.py.",
    )
    fake.add_argument("--rules", required=True, help="export folder to serve (re-read on every request)")
    fake.add_argument("--project-uid", required=True, help="the project uid it answers for")
    fake.add_argument("--token", required=True, help="the authtoken / bearer token it accepts")
    fake.add_argument("--listen", default="127.0.0.1:4000", help="HOST:PORT (default 127.0.0.1:4000)")
    fake.set_defaults(run=run_fake_admin)

    edge = commands.add_parser(
        "fake-edge-api",
        help="a local fake of the Personalize Edge API that records what it receives (tests, trying forwarding)",
        description="A faithful local fake of the Personalize Edge API write paths (docs/contract.md §5) that "
        "records every accepted request (GET /_fake/received) and injects faults (POST /_fake/faults); see "
        "edgeproxy/sync/fake_edge_api.py.",
    )
    edge.add_argument(
        "--project-uid",
        action="append",
        default=[],
        help="a project uid it answers for (repeatable; others get 404; default: any project)",
    )
    edge.add_argument("--listen", default="127.0.0.1:4001", help="HOST:PORT (default 127.0.0.1:4001)")
    edge.set_defaults(run=run_fake_edge_api)


def run_serve(args: argparse.Namespace, out: IO[str]) -> int:
    import os

    from edgeproxy.runtime.config import FIELDS, FILE_ONLY, ConfigError, load_config
    from edgeproxy.runtime.serve import run

    flags = {name: getattr(args, name, None) for name in FIELDS if name not in FILE_ONLY}
    try:
        config = load_config(args.config, os.environ, flags)
    except ConfigError as exc:
        print(f"edgeproxy: config error: {exc}", file=sys.stderr)
        return 2
    return run(config)


def _add_serve(commands: Any) -> None:
    from edgeproxy.runtime.config import FIELDS, FILE_ONLY, ProxyConfig

    serve = commands.add_parser(
        "serve",
        help="run the personalizing reverse proxy in front of an origin",
        description="Run edgeproxy in front of ORIGIN. Settings come from defaults, then --config FILE (TOML), "
        "then EDGEPROXY_<NAME> environment variables (e.g. EDGEPROXY_ORIGIN), then these flags.",
    )
    serve.add_argument("--config", metavar="FILE", help="TOML file with any of the settings below (and [[routes]], "
                       "[behaviour])")  # fmt: skip
    defaults = ProxyConfig()
    for name, text in FIELDS.items():
        if name in FILE_ONLY:
            continue
        text = text.replace("%", "%%")  # argparse formats help strings
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if isinstance(default, bool):
            serve.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            serve.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=text)
    serve.set_defaults(run=run_serve)


def run_preview_link(args: argparse.Namespace, out: IO[str]) -> int:
    from edgeproxy.clock import clock_for
    from edgeproxy.runtime.config import ConfigError, read_settings, source_of
    from edgeproxy.visitor.preview import PreviewRequestError, page_url_problem, preview_for, signed_link

    def fail(problem: str) -> int:
        print(f"edgeproxy: preview-link: {problem}".replace("\n", " "), file=sys.stderr)
        return 2

    forced = []
    for item in args.set or []:
        experience, sep, variant = item.partition("=")
        if not sep:
            return fail(f"--set {item!r}: expected EXP=VAR (short uids), e.g. --set 0=2")
        forced.append((experience, variant))
    url_problem = page_url_problem(args.url)
    if url_problem is not None:
        return fail(f"--url {url_problem}")
    try:  # the proxy's own settings, as `serve` reads them; only preview_secret and now matter here
        config = read_settings(args.config, os.environ, {"preview_secret": args.preview_secret})
    except ConfigError as exc:
        return fail(f"config error: {exc}")
    if not config.preview_secret:
        return fail("no preview secret: pass --preview-secret, set EDGEPROXY_PREVIEW_SECRET, or give the proxy's "
                    "config with preview_secret = '...' as --config FILE")  # fmt: skip
    try:  # the process clock, the one the proxy checks expiry on
        issued = clock_for(config.now)()
    except ValueError as exc:
        return fail(f"{source_of(config, 'now')}: setting 'now': {exc}")
    try:
        preview = preview_for(forced, args.exclude or [], draft=args.draft, now=args.now, ttl=args.ttl, issued=issued)
        link = signed_link(args.url, preview, config.preview_secret)
    except PreviewRequestError as exc:
        return fail(f"--{exc.field} {exc}")  # e.g. "--set '0=a b': expected EXP=VAR ..."
    out.write(link + "\n")
    return 0


def run_user(args: argparse.Namespace, out: IO[str]) -> int:
    """`edgeproxy user export|delete UID`: a data subject request against the proxy's state store (SPEC §11)."""
    import asyncio
    import logging

    from edgeproxy.clock import clock_for
    from edgeproxy.engine.context import valid_user_uid
    from edgeproxy.forward.opener import open_outbox
    from edgeproxy.runtime.config import ConfigError, read_settings
    from edgeproxy.runtime.users import delete_user, export_user
    from edgeproxy.store.base import AttributeLimits, StoreError
    from edgeproxy.store.opener import open_store
    from edgeproxy.store.sqlite_store import SqliteStore

    def fail(problem: str) -> int:
        print(f"edgeproxy: user {args.action}: {problem}", file=sys.stderr)
        return 2

    if not valid_user_uid(args.uid):
        return fail(f"{args.uid[:80]!r} is not a user uid (1-256 characters of RFC 6265 cookie-octet)")
    try:  # the proxy's own settings, as `serve` reads them: the state, the attributes' lifetime, the clock
        config = read_settings(args.config, os.environ, {"state": args.state, "events": args.events})
        limits = AttributeLimits(
            max_attributes_per_user=config.max_attributes_per_user,
            max_value_bytes=config.max_attribute_value_bytes,
            ttl_seconds=int(config.attribute_ttl_days * 86_400),
            max_users=config.max_users,
        )  # as make_state opens it: the export shows the attributes the proxy decides with
        store = open_store(config.state, limits, clock_for(config.now))
    except (ConfigError, ValueError) as exc:
        return fail(str(exc))
    if isinstance(store, SqliteStore) and not Path(store.path).is_file():  # a typo must not "delete 0 events"
        return fail(f"no state store at {store.path}: name the proxy's SQLite file (--state, --config)")

    # The forwarding outbox lives where the state does; it is searched whether or not forwarding is on now (writes
    # queued while it was on may still wait there).
    outbox = open_outbox(config.state)

    async def act() -> Any:
        events = None
        if config.events:  # the fleet's event store (PostgreSQL): the user's events there too
            from edgeproxy.store.postgres_events import PostgresEventStore

            events = PostgresEventStore(config.events)
            await events.start()
        await store.start()
        try:
            await outbox.start()
            try:
                if args.action == "export":
                    return await export_user(store, args.uid, outbox, events)
                return {"userUid": args.uid, "deleted": await delete_user(store, args.uid, "command line",
                                                                          outbox=outbox, events=events)}  # fmt: skip
            finally:
                await outbox.close()
        finally:
            await store.close()
            if events is not None:
                await events.close()

    # The deletion's log line (counts and a digest of the uid, never the data) is the operator's record: stderr.
    audit = logging.StreamHandler(sys.stderr)
    audit.setFormatter(logging.Formatter(f"edgeproxy: user {args.action}: %(message)s"))
    users_log = logging.getLogger("edgeproxy.users")
    level = users_log.level
    users_log.addHandler(audit)
    users_log.setLevel(logging.INFO)
    try:
        result = asyncio.run(act())
    except StoreError as exc:
        return fail(f"the state store did not answer: {exc}")
    finally:
        users_log.removeHandler(audit)
        users_log.setLevel(level)
    out.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


def _add_user(commands: Any) -> None:
    user = commands.add_parser(
        "user",
        help="export or delete everything stored for one user (data subject requests)",
        description="Export (one JSON document) or delete everything the proxy's state store holds for a user uid: "
        "custom attributes in every project, every event (impressions, conversions) and the user's writes waiting to "
        "be forwarded to Contentstack (forward_edge_api). The store is the proxy's "
        "`state` (--state, EDGEPROXY_STATE or --config FILE, as for serve); with Redis state it is every instance's "
        "of the fleet. Deletion is logged without the user's data. The ops API does the same: GET/DELETE "
        "/_edgeproxy/users/{uid}.",
    )
    user.add_argument("action", choices=("export", "delete"))
    user.add_argument("uid", help="the user uid (the cs-personalize-user-uid cookie's value)")
    user.add_argument("--state", metavar="URL", help="sqlite:///path.db or redis://host:port/db (default: the "
                      "proxy's setting)")  # fmt: skip
    user.add_argument("--events", metavar="URL", help="the fleet's event store, postgresql://... (default: the "
                      "proxy's `events` setting): the user's events there are exported or deleted too")  # fmt: skip
    user.add_argument("--config", metavar="FILE", help="the proxy's TOML config, for state")
    user.set_defaults(run=run_user)


def _add_preview_link(commands: Any) -> None:
    link = commands.add_parser(
        "preview-link",
        help="print a signed preview link: chosen variants, drafts or another time on the real site",
        description="Print URL with a signed cs_preview token: the proxy (with the same preview_secret) decides "
        "that visitor's pages with the --set variants forced, --exclude experiences off, DRAFT versions with "
        "--draft and time conditions at --now, until the token expires. The secret comes from --preview-secret, "
        "EDGEPROXY_PREVIEW_SECRET or --config FILE, as for serve. Preview pages are never cached and record "
        "nothing; ?cs_preview=off ends a preview.",
    )
    link.add_argument("--url", required=True, help="http(s) URL of the page to open in preview")
    link.add_argument("--set", action="append", metavar="EXP=VAR", help="show variant VAR of experience EXP "
                      "(short uids, e.g. 0=2); repeatable")  # fmt: skip
    link.add_argument("--exclude", action="append", metavar="EXP", help="show no variant of experience EXP; "
                      "repeatable")  # fmt: skip
    link.add_argument("--draft", action="store_true", help="decide experiences on their DRAFT versions")
    link.add_argument("--now", metavar="ISO-8601", help="the time every time condition reads, e.g. "
                      "2026-11-28T12:00:00Z (default: the proxy's clock)")  # fmt: skip
    link.add_argument("--ttl", default="1h", help="how long the link works: 3600, 30m, 1h, 2d; at most 7d "
                      "(default 1h)")  # fmt: skip
    link.add_argument("--preview-secret", metavar="SECRET", help="the proxy's preview_secret (prefer "
                      "EDGEPROXY_PREVIEW_SECRET)")  # fmt: skip
    link.add_argument("--config", metavar="FILE", help="the proxy's TOML config, for preview_secret (and now)")
    link.set_defaults(run=run_preview_link)


def _add_replay(commands: Any) -> None:
    from edgeproxy.replay.command import add_replay_command

    add_replay_command(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeproxy",
        description="Contentstack Personalize-style edge personalization in front of any origin.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rules_help = "rules: a Personalize export folder (personalize/ or its parent) or a compiled .msgpack snapshot"

    decide = commands.add_parser(
        "decide",
        help="decide manifests for request descriptions (JSON lines on stdin)",
        description="Read request descriptions (docs/contract.md §9) as JSON lines and print one manifest JSON per "
        "line: userUid, experiences, activeVariants, aliases, variantParam. Invalid lines print "
        '{"line", "error", "message"} and the rest go on.',
    )
    decide.add_argument("--rules", required=True, help=rules_help)
    decide.add_argument(
        "--request", metavar="FILE", help="read descriptions from FILE (JSON lines, one object or an array)"
    )
    decide.add_argument(
        "--explain",
        nargs="?",
        const="text",
        choices=["text", "json"],
        help="explain each decision: readable text after each line (default), or 'json' to add an explanation field",
    )
    decide.add_argument(
        "--geoip", metavar="MMDB", help="MaxMind City database for COUNTRY/REGION/CITY of the `ip` field"
    )
    decide.add_argument("--strict", action="store_true", help="exit 1 if any request line was invalid")
    decide.set_defaults(run=run_decide)

    compile_ = commands.add_parser(
        "compile",
        help="validate rules and write a compiled msgpack snapshot",
        description="Validate a rules folder and write the compiled snapshot (msgpack), named by a content hash.",
    )
    compile_.add_argument("--rules", required=True, help=rules_help)
    compile_.add_argument("-o", "--output", required=True, metavar="FILE", help="snapshot file to write (atomically)")
    compile_.set_defaults(run=run_compile)
    _add_serve(commands)
    _add_sync(commands)
    _add_preview_link(commands)
    _add_user(commands)
    _add_replay(commands)
    from edgeproxy.analytics.command import add_report_command
    from edgeproxy.forward.command import add_forward_command

    add_report_command(commands)
    add_forward_command(commands)
    return parser


EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, what `cat` or `grep` exit with when the reader of their output went away


def _closed_pipe() -> int:
    """stdout's reader went away (`edgeproxy decide ... | head -3`): stop quietly. Python's recipe: point stdout
    at /dev/null so the flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (embedded use): nothing will flush to the pipe
        pass
    return EXIT_CLOSED_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # --help prints too
    except BrokenPipeError:
        return _closed_pipe()
    try:
        code = int(args.run(args, sys.stdout))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except RulesError as exc:
        print(f"edgeproxy: rules error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"edgeproxy: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
