"""JUnit XML for CI systems (`--junit FILE`): one test case per expectation, and one per traffic file whose
recorded decisions were verified (`--from-log`), failing with the differences and the explanation."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from edgeproxy.replay.chart import output_problem, write_output
from edgeproxy.replay.expectations import ExpectationResult, describe_failure
from edgeproxy.replay.verify import RecordedCheck


def _suite(parent: ET.Element, name: str, tests: int, failures: int, seconds: float) -> ET.Element:
    return ET.SubElement(
        parent, "testsuite", name=name, tests=str(tests), failures=str(failures), errors="0", skipped="0",
        time=f"{seconds:.3f}",
    )  # fmt: skip


def junit_xml(
    expectations: list[ExpectationResult] | None,
    recorded: RecordedCheck | None,
    sources: list[str],
    *,
    expectations_seconds: float = 0.0,
    replay_seconds: float = 0.0,
) -> bytes:
    root = ET.Element("testsuites", name="edgeproxy replay")
    total = failed = 0
    if expectations is not None:
        failures = sum(1 for r in expectations if not r.passed)
        suite = _suite(root, "expectations", len(expectations), failures, expectations_seconds)
        each = expectations_seconds / len(expectations) if expectations else 0.0
        for result in expectations:
            file = result.expectation.where.split("#", 1)[0]
            case = ET.SubElement(
                suite, "testcase", classname=f"expectations.{Path(file).stem}", name=result.expectation.name,
                file=file, time=f"{each:.6f}",
            )  # fmt: skip
            if not result.passed:
                lines = [describe_failure(f) for f in result.failures]
                failure = ET.SubElement(case, "failure", message="; ".join(lines), type="ExpectationFailed")
                failure.text = "\n".join(lines) + "\n\n" + result.text
        total += len(expectations)
        failed += failures
    if recorded is not None:
        suite = _suite(root, "recorded decisions", len(sources), len(recorded.by_source), replay_seconds)
        for source in sources:
            case = ET.SubElement(suite, "testcase", classname="recorded", name=f"decisions of {source}", file=source)
            count = recorded.by_source.get(source, 0)
            if count:
                kept = [m for m in recorded.mismatches if m["source"] == source]
                failure = ET.SubElement(
                    case, "failure", type="DecisionMismatch",
                    message=f"{count} replayed decision(s) differ from the recorded ones",
                )  # fmt: skip
                failure.text = "\n\n".join(
                    f"{m['source']}:{m['position']}: {m['differences']}\n{m['text']}" for m in kept
                )
        total += len(sources)
        failed += len(recorded.by_source)
    root.set("tests", str(total))
    root.set("failures", str(failed))
    root.set("errors", "0")
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def write_junit(path: str, data: bytes) -> None:
    problem = output_problem("--junit", path)
    if problem:
        raise ValueError(problem)
    write_output(path, data)
