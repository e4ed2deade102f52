"""The engine side of preview (SPEC §10) on the example rules: forced variants, exclusions, DRAFT versions, the
preview's time, its explanation, and the request description's `preview` field. Pure: no proxy, no wall clock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.cli import decide_line
from edgeproxy.engine import model
from edgeproxy.engine.context import DescribedRequest, context_from_description
from edgeproxy.engine.decide import CompiledSnapshot, Forcing, Manifest
from edgeproxy.engine.errors import RequestDescriptionError
from edgeproxy.engine.explain import explain, render_explanation
from edgeproxy.files.snapshot_file import dump_snapshot, load_snapshot, read_snapshot_bytes
from edgeproxy.replay.expectations import Expectation, check_expectation
from edgeproxy.replay.readers import HarFilter
from edgeproxy.replay.run import ReplayOptions, replay

NOW = "2026-11-22T10:00:00Z"  # before Black Friday week, before the winter season
WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
# rules/README.md, "Experiences": every variant of every example experience; 5 is draft-only.
EXAMPLE_VARIANTS = {
    "1": ("0", "1"),
    "0": ("0", "1", "2", "4"),
    "6": ("0", "1", "2"),
    "3": ("0", "1", "2"),
    "2": ("0", "1", "2"),
    "4": ("0", "1"),
    "8": ("0",),
    "9": ("0",),
    "7": ("0", "1"),
}
DRAFT_ONLY_VARIANTS = {"5": ("0",)}
LOYALTY = "20a19900376512678364bd0d"  # experience 4: PAUSED + DRAFT
HERO = "9cb02c8fa84fd9df7972024c"  # experience 0: ARCHIVED + ACTIVE
WINTER = "d5f0fcee04e17d542e6f096d"  # experience 5: DRAFT only


def no_wall_clock() -> float:
    raise AssertionError("the wall clock was read")


def describe(**fields: Any) -> DescribedRequest:
    description = {"userUid": "qa-visitor", "now": NOW, "headers": {"User-Agent": WINDOWS}, **fields}
    return context_from_description(description, clock=no_wall_clock, new_uid=lambda: "minted")


def active(manifest: Manifest) -> dict[str, str | None]:
    return manifest.active_variants


@pytest.fixture(scope="module")
def snapshot(example_rules: Path) -> CompiledSnapshot:
    return load_snapshot(example_rules)


def test_the_example_rules_have_the_variants_these_tests_force(snapshot: CompiledSnapshot) -> None:
    assert snapshot.draft is not None
    live = {ce.short_uid: tuple(v.short_uid for v in ce.variants) for ce in snapshot.experiences}
    drafts = {ce.short_uid: tuple(v.short_uid for v in ce.variants) for ce in snapshot.draft.experiences}
    assert live == EXAMPLE_VARIANTS
    assert drafts == {**EXAMPLE_VARIANTS, **DRAFT_ONLY_VARIANTS}


@pytest.mark.parametrize(
    ("experience", "variant"), [(exp, var) for exp, variants in EXAMPLE_VARIANTS.items() for var in variants]
)
def test_each_variant_of_each_experience_can_be_forced(
    snapshot: CompiledSnapshot, experience: str, variant: str
) -> None:
    described = describe(preview={"set": {experience: variant}})
    assert described.forcing == Forcing(((experience, variant),), False)
    forced = snapshot.decide_forced(described.context, described.tags, described.forcing)
    normal = snapshot.decide(describe().context)
    assert active(forced) == {**active(normal), experience: variant}  # a paused experience (4) too
    assert f"cs_personalize_{experience}_{variant}" in forced.aliases
    assert [su for su, _ in forced.entries] == [su for su, _ in normal.entries]  # priority order kept


@pytest.mark.parametrize(("experience", "variant"), [("5", "0"), ("4", "0"), ("4", "1"), ("0", "4")])
def test_variants_can_be_forced_on_the_drafts(snapshot: CompiledSnapshot, experience: str, variant: str) -> None:
    described = describe(preview={"set": {experience: variant}, "draft": True})
    assert described.forcing is not None
    forced = snapshot.decide_forced(described.context, None, described.forcing)
    assert active(forced)[experience] == variant


def test_an_excluded_experience_is_null_and_the_others_decide_normally(snapshot: CompiledSnapshot) -> None:
    described = describe(preview={"set": {"2": None, "7": None}})
    forced = snapshot.decide_forced(described.context, None, described.forcing or Forcing((), False))
    normal = snapshot.decide(describe().context)
    assert active(normal)["2"] is not None and active(normal)["7"] is not None  # everyone is in these A/B tests
    assert active(forced) == {**active(normal), "2": None, "7": None}
    assert "2_" not in forced.variant_param and "7_" not in forced.variant_param


def test_a_forced_variant_the_experience_lacks_is_ignored(snapshot: CompiledSnapshot) -> None:
    # Variant 3 of experience 0 was deleted (short uids are never reused); 9 never existed.
    described = describe(preview={"set": {"0": "3", "6": "9"}})
    assert described.forcing is not None
    forced = snapshot.decide_forced(described.context, None, described.forcing)
    assert forced == snapshot.decide(describe().context)


def test_forced_experiences_outside_the_tag_selection_stay_out(snapshot: CompiledSnapshot) -> None:
    described = describe(tags=["section:checkout"], preview={"set": {"0": "1", "2": "2"}})
    assert described.forcing is not None
    forced = snapshot.decide_forced(described.context, described.tags, described.forcing)
    assert active(forced) == {"2": "2"}


def test_the_draft_only_experience_appears_only_in_a_draft_preview(snapshot: CompiledSnapshot) -> None:
    winter = {"headers": {"User-Agent": WINDOWS}, "preview": {"now": "2026-12-15T12:00:00Z"}}
    without_draft = describe(**winter)
    assert without_draft.forcing is not None
    assert "5" not in active(snapshot.decide_forced(without_draft.context, None, without_draft.forcing))
    forced_without_draft = describe(preview={"set": {"5": "0"}})
    assert forced_without_draft.forcing is not None
    assert "5" not in active(snapshot.decide_forced(forced_without_draft.context, None, forced_without_draft.forcing))
    assert "5" in [o.short_uid for o in snapshot.project.omitted]

    with_draft = describe(preview={"draft": True, "now": "2026-12-15T12:00:00Z"})
    assert with_draft.forcing is not None
    manifest = snapshot.decide_forced(with_draft.context, None, with_draft.forcing)
    # Decided on its DRAFT (winter season and human), in priority order: 4 then 5, 8, 9, then 7 (not in priorityOrder).
    assert active(manifest)["5"] == "0"
    assert [su for su, _ in manifest.entries] == ["1", "0", "6", "3", "2", "4", "5", "8", "9", "7"]
    before_winter = describe(preview={"draft": True})
    assert before_winter.forcing is not None
    assert active(snapshot.decide_forced(before_winter.context, None, before_winter.forcing))["5"] is None


@pytest.mark.parametrize(
    ("user_agent", "stored", "paused", "draft"),
    [
        (WINDOWS, {"tier": "gold"}, None, "0"),
        (WINDOWS, {"newsletter_subscriber": True}, None, "1"),
        # The DRAFT ANDs each variant with Human visitors: the PAUSED version's conditions would take a gold bot.
        (GOOGLEBOT, {"tier": "gold"}, None, None),
    ],
)
def test_a_paused_experience_is_decided_on_its_draft_version(
    snapshot: CompiledSnapshot, user_agent: str, stored: dict[str, Any], paused: str | None, draft: str | None
) -> None:
    normal = describe(headers={"User-Agent": user_agent}, storedAttributes=stored)
    assert active(snapshot.decide(normal.context))["4"] == paused
    previewed = describe(headers={"User-Agent": user_agent}, storedAttributes=stored, preview={"draft": True})
    assert previewed.forcing is not None
    assert active(snapshot.decide_forced(previewed.context, None, previewed.forcing))["4"] == draft
    assert snapshot.draft is not None
    loyalty = next(ce.experience for ce in snapshot.draft.experiences if ce.short_uid == "4")
    assert (loyalty.status, loyalty.draft, loyalty.version_uid) == ("ACTIVE", True, "3b9e04c1d7a28f65e0c4b1a7")


def test_without_draft_the_forcing_decides_on_the_live_versions(snapshot: CompiledSnapshot) -> None:
    described = describe(storedAttributes={"tier": "gold"}, preview={"draft": False})
    assert described.forcing == Forcing((), False)
    assert snapshot.decide_forced(described.context, None, described.forcing) == snapshot.decide(described.context)


@pytest.mark.parametrize(
    ("top_level_now", "preview_now", "countdown"),
    [
        (NOW, None, None),
        (NOW, "2026-11-27T00:00:00Z", "1"),  # the window's start is inclusive
        (NOW, "2026-11-28T15:30:00Z", "1"),
        (NOW, "2026-11-30T23:59:59Z", "1"),
        (NOW, "2026-12-01T00:00:00Z", None),  # its end is exclusive
        ("2026-11-28T15:30:00Z", None, "1"),
        ("2026-11-28T15:30:00Z", "2026-11-22T10:00:00Z", None),  # the preview's time wins over the request's
    ],
)
def test_the_black_friday_window_opens_only_at_the_previews_time(
    snapshot: CompiledSnapshot, top_level_now: str, preview_now: str | None, countdown: str | None
) -> None:
    preview = {} if preview_now is None else {"now": preview_now}
    described = describe(now=top_level_now, preview=preview)
    assert described.forcing == Forcing((), False)
    expected = model.iso_timestamp(preview_now or top_level_now)
    assert described.context.now == expected
    assert active(snapshot.decide_forced(described.context, None, described.forcing))["1"] == countdown


def test_a_preview_time_needs_no_request_time_and_no_clock() -> None:
    described = context_from_description(
        {"preview": {"now": "2026-11-28T00:00:00Z"}}, clock=no_wall_clock, new_uid=lambda: "minted"
    )
    assert described.context.now == model.iso_timestamp("2026-11-28T00:00:00Z")


def test_explain_says_forced_by_preview(snapshot: CompiledSnapshot) -> None:
    described = describe(storedAttributes={"tier": "gold"}, preview={"set": {"0": "2", "2": None, "6": "9"}})
    assert described.forcing is not None
    trace = explain(snapshot, described.context, None, described.forcing)
    by_short = {e["shortUid"]: e for e in trace["experiences"]}
    assert trace["preview"] == {"forced": {"0": "2", "2": None, "6": "9"}, "draft": False}
    assert by_short["0"]["reason"] == "forced by preview: 2"
    assert by_short["0"]["forcedByPreview"] is True
    assert (by_short["0"]["activeVariantShortUid"], by_short["0"]["alias"]) == ("2", "cs_personalize_0_2")
    assert by_short["2"]["reason"] == "forced by preview: excluded"
    assert (by_short["2"]["activeVariantShortUid"], by_short["2"]["alias"]) == (None, None)
    assert "forcedByPreview" not in by_short["6"] and "'9'" in by_short["6"]["previewNote"]
    assert by_short["4"]["status"] == "PAUSED"
    decided = snapshot.decide_forced(described.context, None, described.forcing)
    assert {su: e["activeVariantShortUid"] for su, e in by_short.items()} == active(decided)
    text = render_explanation(trace)
    assert "-> 2: forced by preview: 2" in text
    assert "-> null: forced by preview: excluded" in text
    assert "preview: forced 0=2, 2=excluded, 6=9; live versions" in text
    assert "preview" not in explain(snapshot, described.context)


def test_explain_of_a_draft_preview_shows_the_draft_versions(snapshot: CompiledSnapshot) -> None:
    described = describe(storedAttributes={"tier": "gold"}, preview={"draft": True, "now": "2026-12-15T12:00:00Z"})
    assert described.forcing is not None
    trace = explain(snapshot, described.context, None, described.forcing)
    by_short = {e["shortUid"]: e for e in trace["experiences"]}
    assert (by_short["4"]["status"], by_short["4"]["activeVariantShortUid"]) == ("DRAFT", "0")
    assert (by_short["5"]["status"], by_short["5"]["activeVariantShortUid"]) == ("DRAFT", "0")
    assert by_short["0"]["status"] == "ACTIVE"
    assert trace["omitted"] == []
    assert "[SEGMENTED, DRAFT] -> 0" in render_explanation(trace)


def write_version(rules: Path, experience_uid: str, version: dict[str, Any]) -> None:
    file = rules / "personalize" / "experiences" / "versions" / f"{experience_uid}.json"
    versions = json.loads(file.read_text())
    versions.append(version)
    file.write_text(json.dumps(versions))


def copy_rules(example_rules: Path, where: Path) -> Path:
    shutil.copytree(example_rules / "personalize", where / "personalize")
    return where


def test_a_broken_draft_is_a_draft_problem_and_the_snapshot_still_loads(example_rules: Path, tmp_path: Path) -> None:
    rules = copy_rules(example_rules, tmp_path / "a")
    broken_variant = {"__type": "SegmentedVariant", "shortUid": "5", "name": "Draft hero", "audiences": ["nope"]}
    write_version(rules, HERO, {"uid": "d1", "status": "DRAFT", "variants": [broken_variant]})
    winter_versions = rules / "personalize" / "experiences" / "versions" / f"{WINTER}.json"
    winter_versions.write_text(json.dumps([{"uid": "d2", "status": "DRAFT", "variants": {"not": "a list"}}]))

    snapshot = load_snapshot(rules)
    problems = snapshot.project.draft_problems
    assert len(problems) == 2
    assert problems[0].startswith(f"experience 0: experiences/versions/{HERO}.json: $[2].variants[0].audiences[0]: ")
    assert "'nope' is not in audiences/audiences.json" in problems[0]
    assert problems[1].startswith(f"experience 5: experiences/versions/{WINTER}.json: $[0].variants: ")
    assert all(str(tmp_path) not in problem for problem in problems)  # the content hash is path-independent
    # The live decision is untouched; the drafts keep experience 0's ACTIVE version and lose experience 5.
    assert [ce.short_uid for ce in snapshot.experiences] == ["1", "0", "6", "3", "2", "4", "8", "9", "7"]
    assert snapshot.draft is not None
    drafts = {ce.short_uid: ce.experience for ce in snapshot.draft.experiences}
    assert list(drafts) == ["1", "0", "6", "3", "2", "4", "8", "9", "7"]
    assert (drafts["0"].draft, drafts["0"].status, [v.short_uid for v in drafts["0"].variants]) == (
        False,
        "ACTIVE",
        ["0", "1", "2", "4"],
    )
    assert drafts["4"].draft is True

    # The same export elsewhere is the same snapshot; a snapshot file keeps the drafts and their problems.
    elsewhere = load_snapshot(copy_rules(rules, tmp_path / "b"))
    assert elsewhere.version == snapshot.version
    reread = read_snapshot_bytes(dump_snapshot(snapshot), "snapshot.msgpack")
    assert reread.project == snapshot.project
    assert reread.draft is not None and reread.draft.project == snapshot.draft.project


def test_only_the_first_draft_version_counts(example_rules: Path, tmp_path: Path) -> None:
    rules = copy_rules(example_rules, tmp_path)
    write_version(rules, LOYALTY, {"uid": "later-draft", "status": "DRAFT", "variants": "broken too"})
    snapshot = load_snapshot(rules)
    assert snapshot.project.draft_problems == ()
    assert snapshot.draft is not None
    loyalty = next(ce.experience for ce in snapshot.draft.experiences if ce.short_uid == "4")
    assert loyalty.version_uid == "3b9e04c1d7a28f65e0c4b1a7"


def test_without_any_draft_there_is_no_draft_snapshot(example_rules: Path, tmp_path: Path) -> None:
    rules = copy_rules(example_rules, tmp_path)
    versions = rules / "personalize" / "experiences" / "versions"
    (versions / f"{WINTER}.json").unlink()
    loyalty = versions / f"{LOYALTY}.json"
    loyalty.write_text(json.dumps([v for v in json.loads(loyalty.read_text()) if v["status"] != "DRAFT"]))
    snapshot = load_snapshot(rules)
    assert (snapshot.project.drafts, snapshot.project.draft_problems, snapshot.draft) == ((), (), None)
    described = describe(storedAttributes={"tier": "gold"}, preview={"draft": True})
    assert described.forcing is not None
    assert snapshot.decide_forced(described.context, None, described.forcing) == snapshot.decide(described.context)


def test_no_preview_field_means_no_forcing() -> None:
    assert describe().forcing is None
    assert describe(preview=None).forcing is None
    assert describe(preview={}).forcing == Forcing((), False)
    assert DescribedRequest(describe().context, None, False).forcing is None


@pytest.mark.parametrize(
    ("preview", "field"),
    [
        ([], "preview"),
        ("draft", "preview"),
        ({"sets": {"0": "1"}}, "preview.sets"),
        ({"set": {"0": "1"}, "exclude": ["2"]}, "preview.exclude"),
        ({"set": ["0", "1"]}, "preview.set"),
        ({"set": "0=1"}, "preview.set"),
        ({"set": {"0": 1}}, "preview.set.0"),
        ({"set": {"4": ["0"]}}, "preview.set.4"),
        ({"draft": "yes"}, "preview.draft"),
        ({"draft": 1}, "preview.draft"),
        ({"now": 1764201600}, "preview.now"),
        ({"now": "Black Friday"}, "preview.now"),
    ],
)
def test_a_malformed_preview_is_a_description_error_naming_the_field(preview: Any, field: str) -> None:
    with pytest.raises(RequestDescriptionError) as caught:
        describe(preview=preview)
    assert caught.value.field == field


def test_decide_command_decides_and_explains_a_preview(snapshot: CompiledSnapshot) -> None:
    line = json.dumps(
        {"userUid": "qa-visitor", "now": NOW, "headers": {"User-Agent": WINDOWS},
         "preview": {"set": {"0": "4", "3": None}, "draft": True, "now": "2026-12-15T12:00:00Z"}}
    )  # fmt: skip
    result, text = decide_line(snapshot, line, 1, None, explain_mode="text")
    assert result["activeVariants"]["0"] == "4"
    assert result["activeVariants"]["3"] is None
    assert result["activeVariants"]["5"] == "0"
    assert text is not None and "forced by preview: 4" in text and "[SEGMENTED, DRAFT]" in text
    result, _ = decide_line(snapshot, line, 1, None, explain_mode="json")
    assert result["explanation"]["preview"] == {"forced": {"0": "4", "3": None}, "draft": True}
    error, _ = decide_line(snapshot, json.dumps({"preview": {"sets": {}}}), 7, None)
    assert (error["error"], error["field"]) == ("invalid_request", "preview.sets")


def test_replay_decides_previews_outside_the_visitors_counts(snapshot: CompiledSnapshot, tmp_path: Path) -> None:
    visitor = {"userUid": "v1", "now": NOW, "headers": {"User-Agent": WINDOWS}}
    preview = {**visitor, "userUid": "qa", "preview": {"set": {"0": "4"}, "draft": True, "now": "2026-12-15T00:00:00Z"}}
    forced = snapshot.decide_forced(
        describe(**preview).context, None, Forcing((("0", "4"),), True)
    ).to_dict()  # what the proxy would have logged
    traffic = tmp_path / "traffic.jsonl"
    records = [visitor, {"request": preview, "decision": forced, "snapshot": snapshot.version}]
    traffic.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = replay(
        snapshot,
        ReplayOptions(traffic=[str(traffic)], har_filter=HarFilter(), clock=no_wall_clock, verify_recorded=True),
        against=snapshot,
    )
    assert result.requests == 2
    assert result.distribution.requests == 1  # the preview is not a visitor's request
    assert result.users == 1
    assert result.recorded is not None
    assert (result.recorded.checked, result.recorded.matched) == (1, 1)
    assert result.diff is not None and result.diff.requests == 1


def test_expectations_can_name_a_preview(snapshot: CompiledSnapshot) -> None:
    case = Expectation(
        name="QA sees the mobile hero",
        request={"userUid": "qa", "now": NOW, "preview": {"set": {"0": "2"}, "draft": True}},
        expect=(("0", ("2",)), ("4", (None,))),
        where="expect.yaml#$[0]",
    )
    assert check_expectation(case, snapshot, clock=no_wall_clock, geo_lookup=None).passed
    failing = Expectation(case.name, case.request, (("0", ("1",)),), case.where)
    result = check_expectation(failing, snapshot, clock=no_wall_clock, geo_lookup=None)
    assert not result.passed
    assert "forced by preview: 2" in result.text
