"""Loading rules (SPEC §3, §4.1–4.3): broken exports fail with file + JSON path; valid shapes load and order right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rulesets import (
    ab_variant,
    attribute,
    audience,
    custom_rule,
    decide_one,
    event,
    experience,
    group,
    lytics_audience,
    lytics_uid,
    rule,
    segmented_variant,
    uid_for,
    version,
    write_rules,
)

from edgeproxy.engine import RulesError
from edgeproxy.files.snapshot_file import load_snapshot

Json = dict[str, Any]

EVERYONE = audience("everyone", group("AND"))
EVERYONE_UID = EVERYONE["uid"]


def everyone_version(status: str = "ACTIVE", short_uid: str = "0") -> Json:
    return version(status, [segmented_variant(short_uid, [EVERYONE_UID])])


def load_error(rules: Path) -> RulesError:
    with pytest.raises(RulesError) as info:
        load_snapshot(rules)
    return info.value


def assert_error(rules: Path, relative_file: str, path: str, *words: str) -> None:
    error = load_error(rules)
    assert Path(error.file) == rules / relative_file, error
    assert error.path == path, error
    message = str(error)
    assert error.file in message and path in message
    for word in words:
        assert word in message, message


def audience_rules(tmp_path: Path, definition: Json, *, extra: list[Json] | None = None) -> Path:
    """A project whose first audience has `definition`; attribute "tier" exists, Lytics audience "vip" too."""
    return write_rules(
        tmp_path,
        attributes=[attribute("tier")],
        audiences=[audience("broken", definition), *(extra or []), lytics_audience("vip")],
        experiences=[(experience("seg", "0"), [version("ACTIVE", [segmented_variant("0", [uid_for("broken")])])])],
    )


# -- JSON and files --------------------------------------------------------------------------------


def test_invalid_json_names_file_line_and_column(tmp_path: Path) -> None:
    rules = write_rules(tmp_path)
    (rules / "audiences" / "audiences.json").write_text('[\n  {"uid": "x",\n  }\n]\n', encoding="utf-8")
    assert_error(rules, "audiences/audiences.json", "line 3 column 3", "not valid JSON")


def test_a_broken_file_matters_only_when_the_export_needs_it(tmp_path: Path) -> None:
    """The files are read up front (edgeproxy/files/rules.py), but a versions file of no listed experience is not
    an error, as when files were read on demand; the one of a listed experience is, named as ever."""
    rules = write_rules(tmp_path, audiences=[EVERYONE], experiences=[(experience("home", "0"), [everyone_version()])])
    versions = rules / "experiences" / "versions"
    (versions / "unlisted.json").write_text("{not json", encoding="utf-8")
    assert load_snapshot(rules).experiences[0].short_uid == "0"
    (versions / f"{uid_for('experience:home')}.json").write_text("{not json", encoding="utf-8")
    assert_error(rules, f"experiences/versions/{uid_for('experience:home')}.json", "line 1 column 2", "not valid JSON")


def test_missing_experiences_json_is_an_error(tmp_path: Path) -> None:
    rules = write_rules(tmp_path)
    (rules / "experiences" / "experiences.json").unlink()
    assert_error(rules, "experiences/experiences.json", "", "missing")


def test_directory_that_is_not_an_export_gives_clear_error(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello", encoding="utf-8")
    error = load_error(tmp_path / "random")
    assert error.file == str(tmp_path / "random")
    assert "not a Personalize export" in str(error)
    assert "personalize/" in str(error)


def test_missing_directory_gives_clear_error(tmp_path: Path) -> None:
    error = load_error(tmp_path / "nowhere")
    assert error.file == str(tmp_path / "nowhere")
    assert "does not exist" in str(error)


# -- audience definitions --------------------------------------------------------------------------


def test_unknown_rule_type_names_its_path(tmp_path: Path) -> None:
    bad = {**custom_rule("tier", "STRING_EQUALS", "gold"), "__type": "Rulez"}
    rules = audience_rules(tmp_path, group("AND", bad))
    assert_error(rules, "audiences/audiences.json", "$[0].definition.rules[0].__type", "'Rulez'")


def test_unknown_combination_type_of_definition_names_its_path(tmp_path: Path) -> None:
    rules = audience_rules(tmp_path, {"__type": "RuleGroup", "combinationType": "AND", "rules": []})
    assert_error(rules, "audiences/audiences.json", "$[0].definition.__type", "'RuleGroup'")


def test_unknown_rule_type_in_nested_group_names_its_path(tmp_path: Path) -> None:
    bad = {**custom_rule("tier", "STRING_EQUALS", "gold"), "__type": "Condition"}
    rules = audience_rules(tmp_path, group("OR", custom_rule("tier", "HAS_ANY_VALUE"), group("AND", bad)))
    assert_error(rules, "audiences/audiences.json", "$[0].definition.rules[1].rules[0].__type", "'Condition'")


def test_unknown_match_condition_names_its_path(tmp_path: Path) -> None:
    rules = audience_rules(tmp_path, group("AND", custom_rule("tier", "STRING_EQUAL", "gold")))
    assert_error(
        rules, "audiences/audiences.json", "$[0].definition.rules[0].attributeMatchCondition", "'STRING_EQUAL'"
    )


def test_unknown_preset_attribute_names_its_path(tmp_path: Path) -> None:
    rules = audience_rules(tmp_path, group("AND", rule("preset", "LANGUAGE", "STRING_EQUALS", "en")))
    assert_error(rules, "audiences/audiences.json", "$[0].definition.rules[0].attribute.ref", "'LANGUAGE'")


def test_custom_attribute_not_in_attributes_json_names_its_path(tmp_path: Path) -> None:
    rules = audience_rules(tmp_path, group("AND", custom_rule("favourite_colour", "HAS_ANY_VALUE")))
    assert_error(
        rules,
        "audiences/audiences.json",
        "$[0].definition.rules[0].attribute.ref",
        uid_for("favourite_colour"),
        "attributes.json",
    )


def test_is_member_of_non_lytics_audience_names_its_path(tmp_path: Path) -> None:
    plain = audience("plain", group("AND"))
    definition = group("AND", rule("lytics", "LYTICS_AUDIENCE", "IS_MEMBER_OF", plain["uid"]))
    rules = audience_rules(tmp_path, definition, extra=[plain])
    assert_error(
        rules,
        "audiences/audiences.json",
        "$[0].definition.rules[0].attributeMatchOptions.value",
        plain["uid"],
        "Lytics",
    )


def test_is_member_of_unknown_audience_names_its_path(tmp_path: Path) -> None:
    definition = group("AND", rule("lytics", "LYTICS_AUDIENCE", "IS_MEMBER_OF", lytics_uid("nobody")))
    rules = audience_rules(tmp_path, definition)
    assert_error(
        rules, "audiences/audiences.json", "$[0].definition.rules[0].attributeMatchOptions.value", lytics_uid("nobody")
    )


@pytest.mark.parametrize(
    ("options", "path", "bad"),
    [
        pytest.param({"value": "next friday"}, "attributeMatchOptions.value", "next friday", id="before-value"),
        pytest.param(
            {"start": "2026-11-27T00:00:00Z", "end": "2026-13-01T00:00:00Z"},
            "attributeMatchOptions.end",
            "2026-13-01",
            id="between-end",
        ),
        pytest.param(
            {"start": "27/11/2026", "end": "2026-12-01T00:00:00Z"}, "attributeMatchOptions.start", "27/11", id="start"
        ),
    ],
)
def test_bad_iso_time_names_its_path(tmp_path: Path, options: Json, path: str, bad: str) -> None:
    condition = "BETWEEN_TIME" if "start" in options else "BEFORE_TIME"
    rules = audience_rules(tmp_path, group("AND", rule("preset", "DATE_AND_TIME", condition, options)))
    assert_error(rules, "audiences/audiences.json", f"$[0].definition.rules[0].{path}", bad, "ISO-8601")


# -- experiences and versions ----------------------------------------------------------------------


def versions_file(item: Json) -> str:
    return f"experiences/versions/{item['uid']}.json"


def test_variant_audience_not_in_audiences_json_names_its_path(tmp_path: Path) -> None:
    item = experience("seg", "0")
    rules = write_rules(
        tmp_path,
        audiences=[EVERYONE],
        experiences=[(item, [version("ACTIVE", [segmented_variant("0", [EVERYONE_UID, uid_for("ghost")])])])],
    )
    assert_error(rules, versions_file(item), "$[0].variants[0].audiences[1]", uid_for("ghost"), "audiences.json")


def test_variant_lytics_audience_that_is_not_lytics_names_its_path(tmp_path: Path) -> None:
    item = experience("seg", "0")
    rules = write_rules(
        tmp_path,
        audiences=[EVERYONE],
        experiences=[(item, [version("ACTIVE", [segmented_variant("0", lytics_audiences=[EVERYONE_UID])])])],
    )
    assert_error(rules, versions_file(item), "$[0].variants[0].lyticsAudiences[0]", "not a Lytics audience")


def test_unknown_experience_type_names_its_path(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        audiences=[EVERYONE],
        experiences=[
            (experience("ok", "0"), [everyone_version()]),
            (experience("odd", "1", "PERSONALIZED"), [everyone_version()]),
        ],
    )
    assert_error(rules, "experiences/experiences.json", "$[1].__type", "'PERSONALIZED'")


def test_unknown_version_status_names_its_path(tmp_path: Path) -> None:
    item = experience("seg", "0")
    rules = write_rules(
        tmp_path, audiences=[EVERYONE], experiences=[(item, [everyone_version("ARCHIVED"), everyone_version("LIVE")])]
    )
    assert_error(rules, versions_file(item), "$[1].status", "'LIVE'")


def test_variant_type_must_fit_experience_type(tmp_path: Path) -> None:
    item = experience("ab", "0", "AB_TEST")
    rules = write_rules(
        tmp_path,
        audiences=[EVERYONE],
        experiences=[(item, [version("ACTIVE", [ab_variant("0", 50), segmented_variant("1", [EVERYONE_UID])])])],
    )
    assert_error(rules, versions_file(item), "$[0].variants[1].__type", "'SegmentedVariant'", "'ABTestVariant'")


def test_segmented_experience_rejects_ab_variant(tmp_path: Path) -> None:
    item = experience("seg", "0")
    rules = write_rules(tmp_path, audiences=[EVERYONE], experiences=[(item, [version("ACTIVE", [ab_variant("0")])])])
    assert_error(rules, versions_file(item), "$[0].variants[0].__type", "'ABTestVariant'")


def test_custom_percentage_over_100_is_an_error(tmp_path: Path) -> None:
    item = experience("ab", "0", "AB_TEST")
    variants = [ab_variant("0", 60), ab_variant("1", 40.5)]
    rules = write_rules(tmp_path, experiences=[(item, [version("ACTIVE", variants, variantSplit="CUSTOM_PERCENTAGE")])])
    assert_error(rules, versions_file(item), "$[0].variants", "100.5%", "over 100%")


def test_custom_percentage_needs_traffic_distribution(tmp_path: Path) -> None:
    item = experience("ab", "0", "AB_TEST")
    variants = [ab_variant("0", 50), ab_variant("1")]
    rules = write_rules(tmp_path, experiences=[(item, [version("ACTIVE", variants, variantSplit="CUSTOM_PERCENTAGE")])])
    assert_error(rules, versions_file(item), "$[0].variants[1].trafficDistribution", "CUSTOM_PERCENTAGE")


def test_duplicate_experience_short_uid_is_an_error(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        audiences=[EVERYONE],
        experiences=[(experience("a", "7"), [everyone_version()]), (experience("b", "7"), [everyone_version()])],
    )
    assert_error(rules, "experiences/experiences.json", "$[1].shortUid", "'7'")


def test_duplicate_variant_short_uid_is_an_error(tmp_path: Path) -> None:
    item = experience("ab", "0", "AB_TEST")
    rules = write_rules(tmp_path, experiences=[(item, [version("ACTIVE", [ab_variant("1"), ab_variant("1")])])])
    assert_error(rules, versions_file(item), "$[0].variants[1].shortUid", "duplicate", "'1'")


def test_experience_short_uid_with_underscore_is_an_error(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, audiences=[EVERYONE], experiences=[(experience("a", "a_b"), [everyone_version()])])
    assert_error(rules, "experiences/experiences.json", "$[0].shortUid", "'a_b'", "'_'")


def test_metric_event_not_in_events_json_names_its_path(tmp_path: Path) -> None:
    item = experience("ab", "0", "AB_TEST")
    metrics = [
        {"__type": "Primary", "name": "Purchases", "event": event("purchase")["uid"]},
        {"__type": "Secondary", "name": "Ghost", "event": uid_for("event:ghost")},
    ]
    rules = write_rules(
        tmp_path,
        events=[event("purchase")],
        experiences=[(item, [version("ACTIVE", [ab_variant("0"), ab_variant("1")], metrics=metrics)])],
    )
    assert_error(rules, versions_file(item), "$[0].metrics[1].event", uid_for("event:ghost"), "events.json")


def test_metric_events_that_exist_load(tmp_path: Path) -> None:
    item = experience("ab", "0", "AB_TEST")
    metrics = [{"__type": "Primary", "name": "Purchases", "event": event("purchase")["uid"]}]
    rules = write_rules(
        tmp_path,
        events=[event("purchase")],
        experiences=[(item, [version("ACTIVE", [ab_variant("0"), ab_variant("1")], metrics=metrics)])],
    )
    assert load_snapshot(rules).project.experiences[0].metrics[0].event_uid == event("purchase")["uid"]


# -- accepted shapes -------------------------------------------------------------------------------


def old_shape(new_version: Json) -> Json:
    """The older export shape: `variations` / `variationSplit` instead of `variants` / `variantSplit`."""
    old = {k: v for k, v in new_version.items() if k not in ("variants", "variantSplit")}
    old["variations"] = new_version["variants"]
    if "variantSplit" in new_version:
        old["variationSplit"] = new_version["variantSplit"]
    return old


def shape_project(tmp_path: Path, convert: bool) -> Path:
    gold = audience("gold", group("AND", custom_rule("tier", "STRING_EQUALS", "gold")))
    segmented = version("ACTIVE", [segmented_variant("0", [gold["uid"]]), segmented_variant("3", [EVERYONE_UID])])
    custom_split = version(
        "ACTIVE", [ab_variant("0", 20), ab_variant("1", 30), ab_variant("2", 40)], variantSplit="CUSTOM_PERCENTAGE"
    )
    equal_split = version("ACTIVE", [ab_variant("0"), ab_variant("1"), ab_variant("2")], variantSplit="EQUALLY_SPLIT")

    def shaped(item: Json) -> Json:
        return old_shape(item) if convert else item

    return write_rules(
        tmp_path,
        attributes=[attribute("tier")],
        audiences=[EVERYONE, gold],
        experiences=[
            (experience("seg", "0"), [shaped(segmented)]),
            (experience("custom", "1", "AB_TEST"), [shaped(custom_split)]),
            (experience("equal", "2", "AB_TEST"), [shaped(equal_split)]),
        ],
    )


def test_older_variations_shape_decides_like_variants_shape(tmp_path: Path) -> None:
    new = load_snapshot(shape_project(tmp_path / "new", convert=False))
    old = load_snapshot(shape_project(tmp_path / "old", convert=True))
    seen: set[str] = set()
    for index in range(300):
        description = {"userUid": f"user-{index}", "storedAttributes": {"tier": "gold" if index % 2 else "silver"}}
        expected = decide_one(new, description)
        assert decide_one(old, description) == expected
        seen.add(expected["variantParam"])
    # the comparison covered both segmented variants, all A/B variants and the 10% outside the custom split
    params = ",".join(sorted(seen))
    for part in ("0_0", "0_3", "1_0", "1_1", "1_2", "2_0", "2_1", "2_2"):
        assert part in params
    assert any("1_" not in param for param in seen)


def test_older_shape_file_really_uses_variations(tmp_path: Path) -> None:
    rules = shape_project(tmp_path, convert=True)
    for file in (rules / "experiences" / "versions").iterdir():
        text = file.read_text(encoding="utf-8")
        assert '"variations"' in text and '"variants"' not in text


def test_parent_folder_and_personalize_folder_both_load(tmp_path: Path) -> None:
    rules = shape_project(tmp_path, convert=False)
    assert rules == tmp_path / "personalize"
    from_parent = load_snapshot(tmp_path)
    from_folder = load_snapshot(rules)
    assert from_parent.version == from_folder.version
    assert from_parent.project.uid == from_folder.project.uid
    description = {"userUid": "someone", "storedAttributes": {"tier": "gold"}}
    assert decide_one(from_parent, description) == decide_one(from_folder, description)
    assert decide_one(from_parent, description)["activeVariants"]["0"] == "0"


# -- versions, priority, tags ----------------------------------------------------------------------


def test_paused_version_is_used_when_no_active_and_yields_null(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        audiences=[EVERYONE],
        experiences=[
            (
                experience("paused", "0"),
                [everyone_version("ARCHIVED"), everyone_version("PAUSED"), everyone_version("DRAFT")],
            ),
            (experience("live", "1"), [everyone_version("PAUSED", "1"), everyone_version("ACTIVE", "2")]),
        ],
    )
    manifest = decide_one(rules, {"userUid": "u"})
    assert manifest["experiences"] == [
        {"shortUid": "0", "activeVariantShortUid": None},
        {"shortUid": "1", "activeVariantShortUid": "2"},
    ]
    assert manifest["activeVariants"] == {"0": None, "1": "2"}
    assert manifest["aliases"] == ["cs_personalize_1_2"]
    assert manifest["variantParam"] == "1_2"


def test_active_version_wins_over_paused_in_any_file_order(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        audiences=[EVERYONE],
        experiences=[
            (experience("active first", "0"), [everyone_version("ACTIVE", "3"), everyone_version("PAUSED", "4")]),
            (experience("active last", "1"), [everyone_version("PAUSED", "4"), everyone_version("ACTIVE", "3")]),
            (experience("draft later", "2"), [everyone_version("ACTIVE", "3"), everyone_version("DRAFT", "5")]),
        ],
    )
    assert decide_one(rules, {"userUid": "u"})["activeVariants"] == {"0": "3", "1": "3", "2": "3"}


def test_draft_and_archived_only_experiences_are_omitted(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path,
        audiences=[EVERYONE],
        experiences=[
            (experience("draft", "0"), [everyone_version("DRAFT")]),
            (experience("archived", "1"), [everyone_version("ARCHIVED"), everyone_version("DRAFT")]),
            (experience("live", "2"), [everyone_version("ACTIVE")]),
            (experience("no versions", "3"), []),
        ],
    )
    manifest = decide_one(rules, {"userUid": "u"})
    assert manifest["activeVariants"] == {"2": "0"}
    omitted = {item.short_uid for item in load_snapshot(rules).project.omitted}
    assert omitted == {"0", "1", "3"}


def priority_project(tmp_path: Path, priority: list[str] | None) -> Path:
    return write_rules(
        tmp_path,
        audiences=[EVERYONE],
        experiences=[
            (experience(name, short_uid), [everyone_version()])
            for name, short_uid in (("a", "0"), ("b", "1"), ("c", "2"), ("d", "3"))
        ]
        + [(experience("draft", "4"), [everyone_version("DRAFT")])],
        priority=priority,
    )


def exp_uid(name: str) -> str:
    return experience(name, "x")["uid"]


def test_priority_order_first_then_experiences_json_order(tmp_path: Path) -> None:
    rules = priority_project(tmp_path, [exp_uid("c"), exp_uid("draft"), exp_uid("unknown"), exp_uid("a")])
    manifest = decide_one(rules, {"userUid": "u"})
    assert [item["shortUid"] for item in manifest["experiences"]] == ["2", "0", "1", "3"]
    assert list(manifest["activeVariants"]) == ["2", "0", "1", "3"]
    assert manifest["aliases"] == [
        "cs_personalize_2_0",
        "cs_personalize_0_0",
        "cs_personalize_1_0",
        "cs_personalize_3_0",
    ]
    assert manifest["variantParam"] == "2_0,0_0,1_0,3_0"


def test_without_priority_file_experiences_json_order_is_used(tmp_path: Path) -> None:
    rules = priority_project(tmp_path, None)
    assert decide_one(rules, {"userUid": "u"})["variantParam"] == "0_0,1_0,2_0,3_0"


def test_full_priority_order_reverses_decision_order(tmp_path: Path) -> None:
    rules = priority_project(tmp_path, [exp_uid(name) for name in ("d", "c", "b", "a")])
    assert decide_one(rules, {"userUid": "u"})["variantParam"] == "3_0,2_0,1_0,0_0"


def tags_project(tmp_path: Path) -> Path:
    return write_rules(
        tmp_path,
        audiences=[EVERYONE],
        experiences=[
            (experience("home", "0", tags=["Section:Homepage"]), [everyone_version()]),
            (experience("cart", "1", tags=["section:cart", "campaign:bf"]), [everyone_version()]),
            (experience("untagged", "2"), [everyone_version()]),
            (experience("empty tags", "3", tags=[]), [everyone_version()]),
        ],
    )


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        pytest.param(None, ["0", "1", "2", "3"], id="no-filter"),
        pytest.param(["section:HOMEPAGE"], ["0"], id="case-insensitive"),
        pytest.param(["SECTION:CART"], ["1"], id="case-insensitive-other"),
        pytest.param(["section:homepage", "campaign:BF"], ["0", "1"], id="any-tag-matches"),
        pytest.param(["section:checkout"], [], id="no-experience-matches"),
        pytest.param(["section"], [], id="tag-prefix-does-not-match"),
    ],
)
def test_tags_filter_is_case_insensitive_and_excludes_untagged(
    tmp_path: Path, tags: list[str] | None, expected: list[str]
) -> None:
    rules = tags_project(tmp_path)
    assert list(decide_one(rules, {"userUid": "u"}, tags)["activeVariants"]) == expected


def test_tags_in_request_description_filter_too(tmp_path: Path) -> None:
    rules = tags_project(tmp_path)
    manifest = decide_one(rules, {"userUid": "u", "tags": ["campaign:bf"]})
    assert manifest["activeVariants"] == {"1": "0"}
    assert manifest["variantParam"] == "1_0"
