"""Agreement files are checked field by field; every problem is named with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from allmende.errors import PolicyError
from allmende.policy import AgreementError, load_agreements, parse_agreement

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
            "purposes": ["traffic-planning"],
            "mask": {"holder": "redact", "plate": "redact"},
            "row_filter": {
                "district": {"in": ["Innenstadt", "Kaiserberg"]},
                "kind": {"eq": "resident"},
            },
            "valid_from": "2026-01-01T00:00:00Z",
            "valid_until": "2027-01-01T05:00:00Z",
            "max_rows": 500,
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
    assert "max_rows" not in agreement


def test_quoted_times_are_read_too() -> None:
    text = _replace("valid_from: 2026-01-01", 'valid_from: "2026-01-01T08:30:00.5Z"')
    assert parse_agreement(text)["valid_from"] == "2026-01-01T08:30:00.500000Z"


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
            "holder: hash",
            "line 6: unknown mask kind 'hash' for field 'holder' (known: redact)",
        ),
        (
            "mask: {holder: redact, plate: redact}",
            "mask: [holder]",
            "line 6: mask must be a mapping of field names",
        ),
        (
            "kind: {eq: resident}",
            "kind: {gt: 3}",
            "line 9: unknown row_filter operator 'gt' for field 'kind' (eq, in)",
        ),
        (
            "kind: {eq: resident}",
            "kind: resident",
            "line 9: row_filter of field 'kind' must be {in: [a, b]} or {eq: a}",
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
            "line 11: valid_until 2025-06-01T00:00:00Z is not after valid_from 2026-01-01T00:00:00Z",
        ),
        (
            "valid_until: 2027-01-01T06:00:00+01:00",
            "valid_until: 9999-01-01",
            "line 11: valid_until 9999-01-01T00:00:00Z is outside the years 1970 to 2261",
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
