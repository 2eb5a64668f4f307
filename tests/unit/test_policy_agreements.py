"""Agreement files are checked field by field; every problem is named with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from allmende.errors import PolicyError
from allmende.policy import AgreementError, load_agreements, parse_agreement
from allmende.policy.agreements import NO_END_NS

GOOD = """\
agreement: ka-ps-permits-2026
provider: kaiserslautern
datasets: [parking-permits]
consumers: [pirmasens]
purposes: [traffic-planning]
mask: {holder: redact, plate: redact}
row_filter:
  district: {in: [Innenstadt, Kaiserberg]}
  kind: {eq: resident}
valid_from: 2026-01-01
valid_until: 2027-01-01T06:00:00+01:00
max_rows: 500
"""


def _problems(text: str, tmp_path: Path, name: str = "x.yaml") -> list[str]:
    path = tmp_path / "agreements" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AgreementError) as caught:
        load_agreements(path)
    return caught.value.problems


def _replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


def test_good_agreement_compiles_to_policy_data(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    assert load_agreements(tmp_path) == [
        {
            "agreement": "ka-ps-permits-2026",
            "provider": "kaiserslautern",
            "datasets": ["parking-permits"],
            "consumers": ["pirmasens"],
            "members": ["pirmasens"],
            "purposes": ["traffic-planning"],
            "mask": {"holder": "redact", "plate": "redact"},
            "row_filter": {
                "district": {"in": ["Innenstadt", "Kaiserberg"]},
                "kind": {"eq": "resident"},
            },
            "valid_from": "2026-01-01T00:00:00+00:00",
            "valid_until": "2027-01-01T05:00:00+00:00",
            "valid_from_ns": 1_767_225_600_000_000_000,
            "valid_until_ns": 1_798_779_600_000_000_000,
            "max_rows": 500,
            "requests_per_minute": 0,
            "min_group_size": 0,
            "replicate": False,
        }
    ]


def test_optional_keys_may_be_left_out() -> None:
    text = "\n".join(
        line
        for line in GOOD.splitlines()
        if not line.startswith(("mask", "row_filter", " ", "valid_until", "max_rows"))
    )
    agreement = parse_agreement(text, "a.yaml")
    assert agreement["mask"] == {}
    assert agreement["row_filter"] == {}
    assert "valid_until" not in agreement
    assert agreement["valid_until_ns"] == NO_END_NS  # 2262-01-01: does not expire
    assert "max_rows" not in agreement
    assert agreement["requests_per_minute"] == 0
    assert agreement["min_group_size"] == 0


def test_quoted_times_are_read_too() -> None:
    text = _replace("valid_from: 2026-01-01", 'valid_from: "2026-01-01T08:30:00.5Z"')
    agreement = parse_agreement(text)
    assert agreement["valid_from"] == "2026-01-01T08:30:00.500000+00:00"
    assert agreement["valid_from_ns"] == 1_767_256_200_500_000_000


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    problems = _problems(_replace("consumers:", "consumer:"), tmp_path)
    where = str(tmp_path / "agreements" / "x.yaml")
    assert f"{where}, line 4: unknown key 'consumer' (did you mean 'consumers'?)" in problems
    assert f"{where}, line 1: missing key 'consumers'" in problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "provider: kaiserslautern",
            "provider: Kaiserslautern",
            "line 2: provider 'Kaiserslautern' is not a valid id",
        ),
        (
            "datasets: [parking-permits]",
            "datasets: parking-permits",
            "line 3: datasets must be a list, e.g. [parking-permits]",
        ),
        (
            "consumers: [pirmasens]",
            "consumers: []",
            "line 4: consumers must name at least one entry",
        ),
        (
            "consumers: [pirmasens]",
            "consumers: [pirmasens, pirmasens]",
            "line 4: consumers lists 'pirmasens' twice",
        ),
        (
            "purposes: [traffic-planning]",
            "purposes: [Traffic]",
            "line 5: entry of purposes 'Traffic' is not a valid id",
        ),
        (
            "holder: redact",
            "holder: scramble",
            "line 6: unknown mask kind 'scramble' for field 'holder' (known: redact, hash, "
            "{coarsen: N} (N = 0..10 decimals) or {bucket: W} (W > 0))",
        ),
        (
            "holder: redact",
            "holder: coarsen",
            "line 6: mask 'coarsen' of field 'holder' needs a value: redact, hash,",
        ),
        (
            "holder: redact",
            "holder: {coarsen: 11}",
            "line 6: coarsen of field 'holder' must be a whole number of decimals from 0 to 10, not 11",
        ),
        (
            "holder: redact",
            "holder: {coarsen: two}",
            "line 6: coarsen of field 'holder' must be a whole number of decimals from 0 to 10, not two",
        ),
        (
            "holder: redact",
            "holder: {bucket: -5}",
            "line 6: bucket of field 'holder' must be a positive number (the bucket width), not -5",
        ),
        (
            "holder: redact",
            "holder: {bucket: .nan}",
            "line 6: bucket of field 'holder' must be a positive number (the bucket width), not .nan",
        ),
        (
            "holder: redact",
            "holder: {hash: 3}",
            "line 6: unknown mask kind 'hash' for field 'holder' (redact and hash take no value)",
        ),
        (
            "holder: redact",
            "holder: {bucket: 5, coarsen: 2}",
            "line 6: mask of field 'holder' must be one of redact, hash,",
        ),
        (
            "holder: redact",
            "holder: [redact]",
            "line 6: mask of field 'holder' must be one of redact, hash,",
        ),
        (
            "mask: {holder: redact, plate: redact}",
            "mask: [holder]",
            "line 6: mask must be a mapping of field names",
        ),
        (
            "kind: {eq: resident}",
            "kind: {like: res}",
            "line 9: unknown row_filter operator 'like' for field 'kind' (eq, ne, lt, le, gt, ge, in)",
        ),
        (
            "kind: {eq: resident}",
            "kind: resident",
            "line 9: row_filter of field 'kind' must be one condition {op: value}",
        ),
        (
            "kind: {eq: resident}",
            "kind: {ge: 2, le: 5}",
            "line 9: row_filter of field 'kind' must be one condition {op: value}",
        ),
        (
            "kind: {eq: resident}",
            "kind: {lt: true}",
            "line 9: row_filter lt of field 'kind' needs text or a number",
        ),
        (
            "kind: {eq: resident}",
            "kind: {ne: null}",
            "line 9: row_filter value of field 'kind' must be text or a number",
        ),
        (
            "kind: {eq: resident}",
            "kind: {gt: [1, 2]}",
            "line 9: row_filter value of field 'kind' must be a single value, not a list",
        ),
        (
            "max_rows: 500",
            "max_rows: 500\nrequests_per_minute: 0",
            "line 13: requests_per_minute must be a positive whole number, not 0",
        ),
        (
            "max_rows: 500",
            "max_rows: 500\nrequests_per_minute: 1.5",
            "line 13: requests_per_minute must be a positive whole number, not 1.5",
        ),
        (
            "max_rows: 500",
            "max_rows: 500\naggregate_only: {min_group_size: 1}",
            "line 13: min_group_size must be a whole number of at least 2, not 1",
        ),
        (
            "max_rows: 500",
            "max_rows: 500\naggregate_only: {min_group_size: five}",
            "line 13: min_group_size must be a whole number of at least 2, not five",
        ),
        (
            "max_rows: 500",
            "max_rows: 500\naggregate_only: true",
            "line 13: aggregate_only must be {min_group_size: k} with a whole number k >= 2",
        ),
        (
            "max_rows: 500",
            "max_rows: 500\naggregate_only: {k: 5}",
            "line 13: aggregate_only must be {min_group_size: k} with a whole number k >= 2; "
            "unknown key 'k'",
        ),
        (
            "consumers: [pirmasens]",
            "consumers: [group:Partners]",
            "line 4: entry of consumers 'group:Partners' is not a valid id: use lowercase "
            "letters, digits and inner hyphens (or group:<name>)",
        ),
        (
            "consumers: [pirmasens]",
            "consumers: [group:partners]",
            "line 4: unknown group 'partners': no groups are defined",
        ),
        (
            "{in: [Innenstadt, Kaiserberg]}",
            "{in: []}",
            "line 8: row_filter of field 'district' must be",
        ),
        (
            "valid_from: 2026-01-01",
            "valid_from: next monday",
            "line 10: valid_from 'next monday' is not a date",
        ),
        (
            "valid_from: 2026-01-01",
            "valid_from: 2026-13-01",
            "line 10: valid_from cannot be read: month must be in 1..12",
        ),
        (
            "valid_from: 2026-01-01",
            "valid_from: 2026-01-01 08:00:00",
            "line 10: valid_from 2026-01-01 08:00:00 has no time zone",
        ),
        (
            "valid_until: 2027-01-01T06:00:00+01:00",
            "valid_until: 2025-06-01",
            "line 11: valid_until 2025-06-01T00:00:00+00:00 is not after valid_from "
            "2026-01-01T00:00:00+00:00",
        ),
        (
            "valid_until: 2027-01-01T06:00:00+01:00",
            "valid_until: 9999-01-01",
            "line 11: valid_until 9999-01-01T00:00:00+00:00 is outside the years 1970 to 2261",
        ),
        (
            "max_rows: 500",
            "max_rows: 0",
            "line 12: max_rows must be a positive whole number, not 0",
        ),
        (
            "max_rows: 500",
            "max_rows: many",
            "line 12: max_rows must be a positive whole number, not many",
        ),
        ("max_rows: 500", "max_rows: 500\nmax_rows: 600", "line 13: key 'max_rows' appears twice"),
        (
            "agreement: ka-ps-permits-2026",
            "agreement: [ka-ps]",
            "line 1: agreement must be a single value, not a list",
        ),
    ],
)
def test_each_mistake_named_with_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    problems = _problems(_replace(old, new), tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(tmp_path / "agreements" / "x.yaml") + ", " + expected)


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    text = (
        _replace("consumers:", "consumer:")
        .replace("holder: redact", "holder: shuffle")
        .replace("max_rows: 500", "max_rows: -1")
        .replace("valid_from: 2026-01-01", "valid_from: soon")
    )
    problems = _problems(text, tmp_path)
    lines = sorted(p.split(", line ")[1].split(":")[0] for p in problems)
    assert lines == ["1", "10", "12", "4", "6"]
    with pytest.raises(AgreementError) as caught:
        parse_agreement(text, "x.yaml")
    assert str(caught.value).startswith("5 problem(s) in sharing agreements\n  - x.yaml, line 4:")
    assert isinstance(caught.value, PolicyError)


def test_problems_of_several_files_and_duplicate_ids(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yml").write_text("# same id again\n" + GOOD)
    (tmp_path / "c.yaml").write_text(_replace("max_rows: 500", "max_rows: no"))
    (tmp_path / "notes.txt").write_text("not an agreement")
    with pytest.raises(AgreementError) as caught:
        load_agreements(tmp_path)
    assert caught.value.problems == [
        f"{tmp_path / 'b.yml'}, line 2: agreement id 'ka-ps-permits-2026' is already used in "
        f"{tmp_path / 'a.yaml'}, line 1",
        f"{tmp_path / 'c.yaml'}, line 12: max_rows must be a positive whole number, not no",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "agreement: x\nprovider: [kaiserslautern\n",
            "line 3: malformed YAML: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence)",
        ),
        (
            "agreement: x\n  provider: y\n",
            "line 2: malformed YAML: mapping values are not allowed here",
        ),
        (
            "agreement: x\n---\nagreement: y\n",
            "line 2: malformed YAML: but found another document "
            "(expected a single document in the stream)",
        ),
        ("- agreement: x\n", "line 1: expected a mapping of keys"),
        ("", "is empty; an agreement needs the keys agreement, provider"),
    ],
)
def test_malformed_yaml_named_with_line(tmp_path: Path, text: str, expected: str) -> None:
    problems = _problems(text, tmp_path)
    where = str(tmp_path / "agreements" / "x.yaml")
    assert len(problems) == 1, problems
    separator = ": " if expected.startswith("is empty") else ", "
    assert problems[0].startswith(f"{where}{separator}{expected}"), problems


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(AgreementError, match="no such file or directory"):
        load_agreements(tmp_path / "nowhere")


def test_empty_directory_has_no_agreements(tmp_path: Path) -> None:
    assert load_agreements(tmp_path) == []


def test_replicate_cannot_be_combined_with_masks_or_filters(tmp_path) -> None:
    from allmende.policy import AgreementError, load_agreements

    path = tmp_path / "a.yaml"
    path.write_text(
        "agreement: ka-ps\nprovider: kaiserslautern\ndatasets: [permits]\n"
        "consumers: [pirmasens]\npurposes: [research]\nvalid_from: 2026-01-01\n"
        "mask: {plate: redact}\nreplicate: true\n"
    )
    with pytest.raises(
        AgreementError, match=r"line 8: replicate: true .* cannot be combined with mask"
    ):
        load_agreements(path)
    path.write_text(path.read_text().replace("mask: {plate: redact}\n", ""))
    assert load_agreements(path)[0]["replicate"] is True
    path.write_text(path.read_text().replace("replicate: true", "replicate: maybe"))
    with pytest.raises(AgreementError, match="replicate must be true or false"):
        load_agreements(path)


# --- mask kinds, row filter operators, quotas, aggregate-only ---------------------------------


def test_mask_kinds_compile_to_the_gateways_specs() -> None:
    text = _replace(
        "mask: {holder: redact, plate: redact}",
        "mask: {holder: redact, plate: hash, geom: {coarsen: 2}, free: {bucket: 50}, "
        "rate: {bucket: 0.5}, lot: {coarsen: 0}}",
    )
    assert parse_agreement(text)["mask"] == {
        "holder": "redact",
        "plate": "hash:ka-ps-permits-2026",  # salted per agreement: the id names the salt
        "geom": "coarsen:2",
        "free": "bucket:50",
        "rate": "bucket:0.5",
        "lot": "coarsen:0",
    }


def test_every_row_filter_operator_compiles() -> None:
    text = _replace(
        "  kind: {eq: resident}\n",
        "  kind: {ne: care}\n  a: {lt: 10}\n  b: {le: 2.5}\n  c: {gt: 2026-01-01}\n"
        "  d: {ge: 0}\n  e: {eq: true}\n",
    )
    assert parse_agreement(text)["row_filter"] == {
        "district": {"in": ["Innenstadt", "Kaiserberg"]},
        "kind": {"ne": "care"},
        "a": {"lt": 10},
        "b": {"le": 2.5},
        "c": {"gt": "2026-01-01"},
        "d": {"ge": 0},
        "e": {"eq": True},
    }


def test_quota_and_aggregate_only_compile() -> None:
    text = GOOD + "requests_per_minute: 60\naggregate_only: {min_group_size: 5}\n"
    agreement = parse_agreement(text)
    assert agreement["requests_per_minute"] == 60
    assert agreement["min_group_size"] == 5
    assert "aggregate_only" not in agreement  # compiled to min_group_size


def test_replicate_cannot_be_aggregate_only(tmp_path: Path) -> None:
    text = (
        "agreement: ka-ps\nprovider: kaiserslautern\ndatasets: [permits]\n"
        "consumers: [pirmasens]\npurposes: [research]\nvalid_from: 2026-01-01\n"
        "aggregate_only: {min_group_size: 3}\nreplicate: true\n"
    )
    problems = _problems(text, tmp_path)
    assert len(problems) == 1
    assert "line 8: replicate: true" in problems[0]
    assert problems[0].endswith("cannot be combined with aggregate_only")


# --- groups -----------------------------------------------------------------------------------


def _folder(tmp_path: Path, groups: str, **agreements: str) -> Path:
    folder = tmp_path / "agreements"
    folder.mkdir(exist_ok=True)
    (folder / "groups.yaml").write_text(groups)
    for name, text in agreements.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


GROUPS = "groups:\n  partners: [sankt-wendel, pirmasens]\n  east: [homburg]\n"


def test_groups_expand_into_members(tmp_path: Path) -> None:
    text = _replace("consumers: [pirmasens]", "consumers: [group:partners, zweibruecken]")
    folder = _folder(tmp_path, GROUPS, a=text)
    [agreement] = load_agreements(folder)
    assert agreement["consumers"] == ["group:partners", "zweibruecken"]
    assert agreement["members"] == ["pirmasens", "sankt-wendel", "zweibruecken"]
    # One file of the folder finds the groups beside it too.
    assert load_agreements(folder / "a.yaml") == [agreement]
    # parse_agreement takes the groups as a mapping.
    assert parse_agreement(text, groups={"partners": ["homburg"]})["members"] == [
        "homburg",
        "zweibruecken",
    ]


def test_member_in_a_group_and_named_is_listed_once(tmp_path: Path) -> None:
    text = _replace("consumers: [pirmasens]", "consumers: [pirmasens, group:partners]")
    [agreement] = load_agreements(_folder(tmp_path, GROUPS, a=text))
    assert agreement["members"] == ["pirmasens", "sankt-wendel"]


def test_unknown_group_named_with_file_and_line(tmp_path: Path) -> None:
    text = _replace("consumers: [pirmasens]", "consumers:\n  - pirmasens\n  - group:west")
    folder = _folder(tmp_path, GROUPS, a=text)
    with pytest.raises(AgreementError) as caught:
        load_agreements(folder)
    assert caught.value.problems == [
        f"{folder / 'a.yaml'}, line 6: unknown group 'west' (groups.yaml defines: east, partners)"
    ]


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ("groups:\n  Partners: [pirmasens]\n", "line 2: group name 'Partners' is not valid"),
        ("groups:\n  partners: []\n", "line 2: members of group 'partners' must name at least"),
        ("groups:\n  partners: pirmasens\n", "line 2: members of group 'partners' must be a list"),
        (
            "groups:\n  partners: [pirmasens, pirmasens]\n",
            "line 2: members of group 'partners' lists 'pirmasens' twice",
        ),
        (
            "groups:\n  partners: [Pirmasens]\n",
            "line 2: entry of members of group 'partners' 'Pirmasens' is not a valid id",
        ),
        (
            "groups:\n  partners: [pirmasens]\n  partners: [homburg]\n",
            "line 3: groups: 'partners' appears twice",
        ),
        ("teams:\n  partners: [pirmasens]\n", "line 1: unknown key 'teams' (only 'groups')"),
        ("groups: [pirmasens]\n", "line 1: groups must be a mapping of group names"),
        ("", "is empty; a groups file holds groups"),
        ("groups: {a: [b]\n", "line 2: malformed YAML"),
    ],
)
def test_mistakes_in_groups_file(tmp_path: Path, groups: str, expected: str) -> None:
    folder = _folder(tmp_path, groups, a=GOOD)
    with pytest.raises(AgreementError) as caught:
        load_agreements(folder)
    where = str(folder / "groups.yaml")
    separator = ": " if expected.startswith("is empty") else ", "
    assert any(p.startswith(f"{where}{separator}{expected}") for p in caught.value.problems), (
        caught.value.problems
    )


def test_groups_file_is_not_an_agreement(tmp_path: Path) -> None:
    folder = _folder(tmp_path, GROUPS)
    assert load_agreements(folder) == []


def test_group_without_groups_file(tmp_path: Path) -> None:
    problems = _problems(
        _replace("consumers: [pirmasens]", "consumers: [group:partners]"), tmp_path
    )
    assert problems == [
        f"{tmp_path / 'agreements' / 'x.yaml'}, line 4: unknown group 'partners': no groups "
        f"are defined ({tmp_path / 'agreements' / 'groups.yaml'} does not exist)"
    ]


def test_unreadable_groups_file(tmp_path: Path) -> None:
    from allmende.policy import load_groups

    folder = _folder(tmp_path, "groups:\n  partners: [pirmasens]\n", a=GOOD)
    (folder / "groups.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(AgreementError, match=r"groups\.yaml: cannot be read"):
        load_agreements(folder)
    with pytest.raises(AgreementError, match="cannot be read"):
        load_groups(tmp_path / "missing.yaml")
