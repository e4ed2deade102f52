"""Rough edges a new user met on first contact (issue 15), each as the user met it: a real `edgeproxy` process."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.processes import free_port, require_tool

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "edgeproxy.cli"]


def run(*args: str, stdin: str = "", cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    clean.update(env or {})
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=clean
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- 1. publish with Redis down ---------------------------------------------------------------------------------


def test_publish_to_a_redis_that_is_down_is_one_line_and_exit_2(example_rules: Path) -> None:
    port = free_port()  # nothing listens there
    result = run("publish", "--rules", str(example_rules), "--fleet-redis", f"redis://127.0.0.1:{port}/0")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert f"cannot publish to Redis at redis://127.0.0.1:{port}/0" in line  # what, where
    assert "is Redis running there? check --fleet-redis" in line  # what to do
    wrong = run("publish", "--rules", str(example_rules), "--fleet-redis", "http://127.0.0.1:1/")
    assert wrong.returncode == 2 and "is not a redis://host:port/db URL" in one_line(wrong.stderr)


# -- 2, 3, 8. settings are checked at start-up, naming the setting and its source ----------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--listen", "127.0.0.1:99999"], "command line --listen: setting 'listen': '127.0.0.1:99999' has a port"),
        (["--listen", "127.0.0.1:0"], "setting 'listen': '127.0.0.1:0' has a port that is not 1-65535"),
        (["--origin", "http://127.0.0.1:99999"], "command line --origin: setting 'origin': 'http://127.0.0.1:99999'"),
        (["--origin", "http://"], "setting 'origin': 'http://' has no host"),
        (["--origin", "http://:3000"], "setting 'origin': 'http://:3000' has no host"),
        (["--state", "mysql://x"], "command line --state: setting 'state': 'mysql://x': unknown scheme 'mysql://'"),
        (["--read-timeout", "-1"], "command line --read-timeout: setting 'read_timeout' must be > 0 seconds (got -1)"),
    ],
)
def test_serve_refuses_bad_settings_before_starting(
    flags: list[str], message: str, example_rules: Path, tmp_path: Path
) -> None:
    argv = ["serve", "--origin", "http://127.0.0.1:3000", "--rules", str(example_rules), *flags]
    result = run(*argv, cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    assert message in one_line(result.stderr)
    assert list(tmp_path.iterdir()) == []  # nothing created: no `mysql:` folder, no SQLite file


def test_state_error_names_the_accepted_forms(example_rules: Path, tmp_path: Path) -> None:
    result = run("serve", "--origin", "http://127.0.0.1:3000", "--rules", str(example_rules), cwd=tmp_path,
                 env={"EDGEPROXY_STATE": "mysql://user:secret@db/x"})  # fmt: skip
    line = one_line(result.stderr)
    assert "environment variable EDGEPROXY_STATE: setting 'state'" in line
    assert "sqlite:///relative/path.db" in line and "redis://host:port/db" in line
    assert "secret" not in line
    assert not (tmp_path / "mysql:").exists()
    report = run("report", "--rules", str(example_rules), "--state", "mysql://x", cwd=tmp_path)
    assert report.returncode == 2 and "unknown scheme 'mysql://'" in one_line(report.stderr)
    assert list(tmp_path.iterdir()) == []


def test_config_file_errors_name_the_file_and_the_setting(example_rules: Path, tmp_path: Path) -> None:
    config = tmp_path / "x.toml"
    config.write_text(f'origin = "http://127.0.0.1:3000"\nrules = "{example_rules}"\nread_timeout = -1\n')
    result = run("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert f"config file {config}: setting 'read_timeout' must be > 0 seconds (got -1)" in one_line(result.stderr)
    head = f'origin = "http://127.0.0.1:3000"\nrules = "{example_rules}"\n'
    config.write_text(head + 'trusted_proxies = ["not-an-ip"]\n')
    result = run("serve", "--config", str(config), cwd=tmp_path)
    assert f"config file {config}: setting 'trusted_proxies': 'not-an-ip' is not an address or CIDR" in one_line(
        result.stderr
    )


# -- 4. decide --request FILE with a one-line JSON array -------------------------------------------------------


def test_decide_request_file_takes_an_array_on_one_line(example_rules: Path, tmp_path: Path) -> None:
    descriptions = [json.loads(line) for line in (example_rules / "requests.jsonl").read_text().splitlines() if line]
    lines = run("decide", "--rules", str(example_rules), "--request", str(example_rules / "requests.jsonl"))
    texts = {"one-line.json": json.dumps(descriptions), "pretty.json": json.dumps(descriptions, indent=2)}
    for name, text in texts.items():
        file = tmp_path / name
        file.write_text(text + "\n")
        result = run("decide", "--rules", str(example_rules), "--request", str(file), "--strict")
        assert result.returncode == 0, result.stderr
        assert result.stdout == lines.stdout  # the same manifests as the JSON lines
    single = tmp_path / "single.json"
    single.write_text(json.dumps(descriptions[0]))
    result = run("decide", "--rules", str(example_rules), "--request", str(single), "--strict")
    assert result.stdout == lines.stdout.splitlines(keepends=True)[0]


# -- 5. a closed output pipe ends the command quietly ------------------------------------------------------------


def closed_stdout(*args: str, read_first: bool) -> tuple[int, str]:
    """Run with stdout a pipe that the reader closes (after one line, or at once, as `| head` would)."""
    process = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    if read_first:
        assert process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    return process.wait(timeout=60), stderr


def test_a_closed_pipe_ends_decide_replay_and_help_quietly(example_rules: Path, tmp_path: Path) -> None:
    many = tmp_path / "many.jsonl"
    many.write_text((example_rules / "requests.jsonl").read_text() * 300)  # far more than a pipe buffer
    commands = [
        (("decide", "--rules", str(example_rules), "--request", str(many)), True, 141),
        (("replay", str(many), "--rules", str(example_rules), "--json"), False, 141),
        (("replay", "--help"), False, 0),  # argparse's help ignores a closed pipe itself
    ]
    for args, read_first, expected in commands:
        code, stderr = closed_stdout(*args, read_first=read_first)
        assert "Broken pipe" not in stderr and "Traceback" not in stderr and "error" not in stderr, (args, stderr)
        assert code == expected, (args, code, stderr)  # 141 = 128 + SIGPIPE, as `cat` exits; not 2 (broken rules)


# -- 7. replay: nothing replayed, --limit, output files ---------------------------------------------------------


def test_replay_with_nothing_valid_exits_2(example_rules: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n" * 5)
    result = run("replay", str(bad), "--rules", str(example_rules))
    assert result.returncode == 2
    assert "no request in the traffic could be replayed (5 invalid, 0 skipped" in result.stderr
    assert "5 invalid" in result.stdout  # the report still shows what was wrong


def test_replay_refuses_a_limit_below_1(example_rules: Path) -> None:
    for limit in ("-5", "0", "x"):
        result = run("replay", str(example_rules / "requests.jsonl"), "--rules", str(example_rules), "--limit", limit)
        assert result.returncode == 2 and "argument --limit" in result.stderr, limit


def test_replay_checks_output_files_before_replaying(example_rules: Path, tmp_path: Path) -> None:
    # A traffic file that would take long to replay: refused at once, never read.
    huge = tmp_path / "huge.jsonl"
    huge.write_text((example_rules / "requests.jsonl").read_text() * 20_000)
    traffic = ("replay", str(huge), "--rules", str(example_rules))
    cases = [
        (("--chart", "x.png"), "--chart x.png: name the file .svg or .html"),
        (("--chart", "missing/x.svg"), "--chart missing/x.svg: the folder 'missing' does not exist"),
        (("--junit", "/no-such-folder-here/j.xml"), "the folder '/no-such-folder-here' does not exist"),
    ]
    for flags, message in cases:
        result = run(*traffic, *flags, cwd=tmp_path, timeout=20)
        assert result.returncode == 2, flags
        assert message in one_line(result.stderr)
        assert result.stdout == ""  # nothing was replayed
    assert not (tmp_path / "missing").exists() and not Path("/no-such-folder-here").exists()


def test_replay_outputs_are_written_like_any_new_file(example_rules: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    old = os.umask(0o022)
    try:
        result = run("replay", str(example_rules / "requests.jsonl"), "--rules", str(example_rules),
                     "--chart", "out/chart.svg", "--junit", "out/junit.xml", cwd=tmp_path)  # fmt: skip
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    for name in ("chart.svg", "junit.xml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in out.iterdir()) == ["chart.svg", "junit.xml"]  # no temporary file left


# -- 16. 'ip' without --geoip -----------------------------------------------------------------------------------


def test_ip_without_geoip_warns_once(example_rules: Path, geoip_db: Path) -> None:
    requests = str(example_rules / "requests.jsonl")
    warning = "request descriptions carry 'ip' but no --geoip was given"
    for args in (("decide", "--rules", str(example_rules), "--request", requests),
                 ("replay", requests, "--rules", str(example_rules))):  # fmt: skip
        result = run(*args)
        assert result.returncode == 0, result.stderr
        assert result.stderr.count(warning) == 1, result.stderr
        assert "pass --geoip tests/data/GeoIP2-City-Test.mmdb for the example" in result.stderr
        with_db = run(*args, "--geoip", str(geoip_db))
        assert with_db.returncode == 0 and warning not in with_db.stderr
    stdin = run("decide", "--rules", str(example_rules), stdin=(example_rules / "requests.jsonl").read_text())
    assert stdin.stderr.count(warning) == 1
    no_ip = run("decide", "--rules", str(example_rules), stdin='{"userUid": "a", "geo": {"country": "GB"}}\n')
    assert warning not in no_ip.stderr
    complete = '{"ip": "81.2.69.160", "geo": {"country": "GB", "region": "ENG", "city": "London"}}\n'
    assert warning not in run("decide", "--rules", str(example_rules), stdin=complete).stderr


def test_rules_that_read_no_geo_do_not_warn(example_rules: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(example_rules, rules)
    experiences = rules / "personalize" / "experiences" / "experiences.json"
    experiences.write_text("[]")
    result = run("decide", "--rules", str(rules), stdin='{"ip": "81.2.69.160"}\n')
    assert result.returncode == 0, result.stderr
    assert "--geoip" not in result.stderr


# -- found on a later trial of every README section ---------------------------------------------------------------


def test_compile_into_a_missing_folder_is_refused_not_created(example_rules: Path, tmp_path: Path) -> None:
    target = tmp_path / "no-such-folder" / "snapshot.msgpack"
    result = run("compile", "--rules", str(example_rules), "-o", str(target))
    assert result.returncode == 2
    assert "does not exist; create it first" in one_line(result.stderr)
    assert not target.parent.exists()
    ok = run("compile", "--rules", str(example_rules), "-o", str(tmp_path / "snapshot.msgpack"))
    assert ok.returncode == 0 and (tmp_path / "snapshot.msgpack").is_file()


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        ({"EDGEPROXY_POOL_SIZE": "abc"}, [],
         "environment variable EDGEPROXY_POOL_SIZE: setting 'pool_size': expected a whole number (got 'abc')"),
        ({"EDGEPROXY_CACHE": "maybe"}, [],
         "environment variable EDGEPROXY_CACHE: setting 'cache': expected true or false (got 'maybe')"),
        ({}, ["--workers", "two"], "command line --workers: setting 'workers': expected a whole number (got 'two')"),
        ({}, ["--read-timeout", "soon"], "command line --read-timeout: setting 'read_timeout': expected a number"),
    ],
)  # fmt: skip
def test_unparsable_settings_name_the_variable_or_flag(
    env: dict[str, str], flags: list[str], message: str, example_rules: Path, tmp_path: Path
) -> None:
    argv = ["serve", "--origin", "http://127.0.0.1:3000", "--rules", str(example_rules), *flags]
    result = run(*argv, cwd=tmp_path, env=env, timeout=30)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert message in line and "invalid literal" not in line


def test_sync_without_credentials_names_the_environment_variable(tmp_path: Path) -> None:
    result = run("sync", "--admin-url", "http://127.0.0.1:9", "--project-uid", "p", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "EDGEPROXY_AUTHTOKEN" in one_line(result.stderr)


def test_workers_refuse_a_port_another_reuse_port_server_holds() -> None:
    """Two `serve --workers` on one port: the second must fail, not silently share the port (SO_REUSEPORT)."""
    import socket

    from edgeproxy.runtime.serve import ListenError
    from edgeproxy.runtime.workers import claim_port

    port = free_port()
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", port))
    other.listen()
    try:
        with pytest.raises(ListenError, match=r"cannot listen on 127\.0\.0\.1"):
            claim_port("127.0.0.1", port)
    finally:
        other.close()
    held = claim_port("127.0.0.1", port)  # free again: held with SO_REUSEPORT, so workers can bind it too
    try:
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.close()
    finally:
        for sock in held:
            sock.close()


def demo(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEPROXY_", "DEMO_", "ORIGIN_", "PROXY_"))}
    clean["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), clean.get("PATH", "")])  # the venv's tools
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    clean.update(env)
    return subprocess.run(["bash", str(ROOT / "examples" / "run-demo.sh")], capture_output=True, text=True,
                          timeout=timeout, env=clean)  # fmt: skip


def test_run_demo_refuses_a_taken_port_or_a_bad_clock_before_starting_anything() -> None:
    import socket

    require_tool("node")  # the demo's origin: missing, the test fails (it never skips)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        origin = demo({"ORIGIN_PORT": str(taken), "PROXY_LISTEN": f"127.0.0.1:{free_port()}"})
        assert origin.returncode == 1
        assert f"port {taken} is already taken" in origin.stderr and "ORIGIN_PORT=" in origin.stderr
        proxy = demo({"ORIGIN_PORT": str(free_port()), "PROXY_LISTEN": f"127.0.0.1:{taken}"})
        assert proxy.returncode == 1
        assert f"127.0.0.1:{taken} is already taken" in proxy.stderr and "PROXY_LISTEN=" in proxy.stderr
    for result in (origin, proxy):
        assert "example origin listening" not in result.stdout + result.stderr  # nothing was started
    clock = demo({"ORIGIN_PORT": str(free_port()), "PROXY_LISTEN": f"127.0.0.1:{free_port()}", "DEMO_NOW": "soon"})
    assert clock.returncode == 1
    assert "DEMO_NOW='soon' is not an ISO-8601 instant" in clock.stderr
    assert "example origin listening" not in clock.stdout + clock.stderr
