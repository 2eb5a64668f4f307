"""The Rego unit tests pass in regorus, and the runner reports failures and errors like opa test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from allmende.errors import PolicyError
from allmende.policy import BUNDLED_POLICY_DIR, format_report, run_rego_tests
from allmende.policy.testing import go_duration

_POLICY = """package demo.rules

import rego.v1

default allow := false

allow if input.n > 1
"""

_TESTS = """package demo.rules_test

import rego.v1

import data.demo.rules

test_big_number_allowed if rules.allow with input as {"n": 5}

test_small_number_allowed if rules.allow with input as {"n": 0}

test_false_value := false

test_division_by_zero if {
\tx := 1 / 0
\tx == 1
}

# Functions, partial sets and non-test packages are not tests.
test_helper(x) := x

test_set contains 1
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_bundled_rego_tests_all_pass() -> None:
    report = run_rego_tests(BUNDLED_POLICY_DIR)
    print("\n" + format_report(report, verbose=True))
    assert report.ok, format_report(report)
    assert len(report.results) >= 20
    packages = {r.test.package for r in report.results}
    assert {
        "allmende.baseline_test",
        "allmende.agreements_test",
        "allmende.decision_test",
    } <= packages


def test_failures_and_errors_are_reported(tmp_path: Path) -> None:
    root = _write(tmp_path, {"demo/rules.rego": _POLICY, "demo/rules_test.rego": _TESTS})
    report = run_rego_tests(root)

    by_name = {r.test.name: r for r in report.results}
    assert set(by_name) == {
        "test_big_number_allowed",
        "test_small_number_allowed",
        "test_false_value",
        "test_division_by_zero",
    }
    assert by_name["test_big_number_allowed"].status == "PASS"
    assert by_name["test_small_number_allowed"].status == "FAIL"
    assert by_name["test_small_number_allowed"].message == "undefined"
    assert by_name["test_false_value"].status == "FAIL"
    assert by_name["test_false_value"].message == "false"
    assert by_name["test_division_by_zero"].status == "ERROR"
    assert "divide by zero" in by_name["test_division_by_zero"].message
    assert not report.ok

    text = format_report(report)
    lines = text.splitlines()
    # Like opa test: the failing file, then one line per failing or erring test with its
    # time, the error's location and message, a ruler, the counts.
    assert lines[0] == "demo/rules_test.rego:"
    assert re.fullmatch(
        r"data\.demo\.rules_test\.test_small_number_allowed: FAIL \([0-9.]+(ns|µs|ms|s)\)",
        lines[1],
    ), lines[1]
    assert lines[2].startswith("data.demo.rules_test.test_false_value: FAIL (")
    assert lines[3].startswith("data.demo.rules_test.test_division_by_zero: ERROR (")
    assert lines[4].startswith("  demo/rules_test.rego:13: ")
    assert "divide by zero" in text
    assert "test_big_number_allowed" not in text
    assert text.endswith("-" * 80 + "\nPASS: 1/4\nFAIL: 2/4\nERROR: 1/4")
    assert "Stack backtrace" not in text
    verbose = format_report(report, verbose=True).splitlines()
    assert verbose[1].startswith("data.demo.rules_test.test_big_number_allowed: PASS (")


def test_failures_grouped_by_file(tmp_path: Path) -> None:
    failing = "package demo.{0}_test\n\nimport rego.v1\n\ntest_{0} if input.never\n"
    root = _write(
        tmp_path,
        {
            "rules.rego": _POLICY,
            "a_test.rego": failing.format("a"),
            "b_test.rego": failing.format("b"),
        },
    )
    text = format_report(run_rego_tests(root))
    assert re.fullmatch(
        r"a_test\.rego:\ndata\.demo\.a_test\.test_a: FAIL \(\S+\)\n\n"
        r"b_test\.rego:\ndata\.demo\.b_test\.test_b: FAIL \(\S+\)\n-{80}\nFAIL: 2/2",
        text,
    ), text


def test_durations_read_like_go() -> None:
    assert [go_duration(s) for s in (4e-7, 4.155e-4, 1.2345e-3, 1.0, 2.5)] == [
        "400ns",
        "415.5µs",
        "1.2345ms",
        "1s",
        "2.5s",
    ]


def test_all_passing_summary(tmp_path: Path) -> None:
    tests = 'package demo.rules_test\n\nimport rego.v1\n\ntest_one if data.demo.rules.allow with input as {"n": 2}\n'
    root = _write(tmp_path, {"rules.rego": _POLICY, "rules_test.rego": tests})
    report = run_rego_tests(root)
    assert report.ok
    assert format_report(report) == "PASS: 1/1"


def test_no_tests_is_not_ok(tmp_path: Path) -> None:
    root = _write(tmp_path, {"rules.rego": _POLICY})
    report = run_rego_tests(root)
    assert not report.ok
    assert format_report(report) == f"no tests found in {root}"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    root = _write(
        tmp_path, {"broken.rego": "package broken\n\nimport rego.v1\n\nallow if { input.x == }\n"}
    )
    with pytest.raises(PolicyError, match=r"broken\.rego") as caught:
        run_rego_tests(root)
    assert "broken.rego:5" in str(caught.value)
    assert "Stack backtrace" not in str(caught.value)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        run_rego_tests(tmp_path / "nowhere")


def test_every_rule_file_has_its_test_file() -> None:
    rules = sorted((BUNDLED_POLICY_DIR / "allmende").glob("*.rego"))
    names = {p.name for p in rules}
    for path in rules:
        if path.name.endswith("_test.rego"):
            continue
        assert path.name.removesuffix(".rego") + "_test.rego" in names, path
