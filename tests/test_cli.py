"""`edgeproxy decide` and `edgeproxy compile` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeproxy.cli", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_decide_prints_one_manifest_per_line(example_rules: Path) -> None:
    requests = (example_rules / "requests.jsonl").read_text()
    result = run("decide", "--rules", str(example_rules), stdin=requests)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len([line for line in requests.splitlines() if line.strip()])
    first = json.loads(lines[0])
    assert set(first) == {"userUid", "experiences", "activeVariants", "aliases", "variantParam"}
    assert first["userUid"] == "v01-london-newcomer"


def test_invalid_lines_get_error_lines_with_their_number_and_the_rest_go_on(example_rules: Path) -> None:
    stdin = '{"userUid": "a"}\nnot json\n\n{"headers": "nope"}\n{"now": "yesterday"}\n{"userUid": "b"}\n'
    result = run("decide", "--rules", str(example_rules), stdin=stdin)
    assert result.returncode == 0
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert out[0]["userUid"] == "a"
    assert out[1]["line"] == 2 and out[1]["error"] == "invalid_json"
    assert out[2]["line"] == 4 and out[2]["field"] == "headers"
    assert out[3]["line"] == 5 and out[3]["field"] == "now"
    assert out[4]["userUid"] == "b"
    assert "Traceback" not in result.stderr
    strict = run("decide", "--strict", "--rules", str(example_rules), stdin=stdin)
    assert strict.returncode == 1


def test_new_visitors_get_a_uuid4(example_rules: Path) -> None:
    result = run("decide", "--rules", str(example_rules), stdin="{}\n")
    uid = json.loads(result.stdout)["userUid"]
    import uuid

    assert uuid.UUID(uid).version == 4


def test_request_file_and_explain_text(example_rules: Path, geoip_db: Path) -> None:
    result = run(
        "decide", "--rules", str(example_rules), "--geoip", str(geoip_db),
        "--request", str(example_rules / "requests.jsonl"), "--explain",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "experience 1 'Black Friday banner'" in result.stdout
    assert "bucket " in result.stdout


def test_explain_json_adds_the_trace(example_rules: Path) -> None:
    result = run("decide", "--rules", str(example_rules), "--explain", "json", stdin='{"userUid": "u1"}\n')
    line = json.loads(result.stdout)
    assert line["explanation"]["userUid"] == "u1"
    assert [e["shortUid"] for e in line["explanation"]["experiences"]] == [e["shortUid"] for e in line["experiences"]]


def test_compile_writes_a_snapshot_that_decide_reads(example_rules: Path, tmp_path: Path) -> None:
    out = tmp_path / "snapshot.msgpack"
    result = run("compile", "--rules", str(example_rules), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "version sha256:" in result.stdout
    stdin = (example_rules / "requests.jsonl").read_text()
    from_dir = run("decide", "--rules", str(example_rules), stdin=stdin).stdout
    from_file = run("decide", "--rules", str(out), stdin=stdin).stdout
    assert from_dir == from_file


def test_broken_rules_exit_2_with_file_and_path(tmp_path: Path, example_rules: Path) -> None:
    import shutil

    rules = tmp_path / "rules"
    shutil.copytree(example_rules, rules)
    audiences = rules / "personalize" / "audiences" / "audiences.json"
    data = json.loads(audiences.read_text())
    data[0]["definition"]["rules"][0]["attributeMatchCondition"] = "SOUNDS_LIKE"
    audiences.write_text(json.dumps(data))
    result = run("decide", "--rules", str(rules), stdin="{}\n")
    assert result.returncode == 2
    assert "audiences.json: $[0].definition.rules[0].attributeMatchCondition: unknown match condition" in result.stderr
    assert "Traceback" not in result.stderr
    garbage = tmp_path / "garbage.msgpack"
    garbage.write_bytes(b"\xc1\x00junk")
    result = run("decide", "--rules", str(garbage), stdin="{}\n")
    assert result.returncode == 2 and "edgeproxy compile" in result.stderr


def test_every_command_has_working_help() -> None:
    for command in ("decide", "compile", "serve", "sync", "publish", "fake-admin", "replay", "report"):
        result = run(command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "usage: edgeproxy" in result.stdout
