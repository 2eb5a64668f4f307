"""Runs the Rego unit tests of a policy directory in regorus and reports like ``opa test``.

Every ``.rego`` file under the directory (policies and ``*_test.rego``) is loaded into one
regorus engine, without data or input: tests bring their own with ``with``. A test is
every rule named ``test_*`` (not a function, not a partial set or object) in a package
whose last name ends in ``_test``, found in the parsed policies. It passes when it is
defined and not false, fails when it is undefined or false, and is an error when regorus
cannot evaluate it. Tests run, and are reported, file by file in the order they are
written, as ``opa test`` does.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import regorus

from allmende.errors import PolicyError
from allmende.policy.engine import read_policy_sources, regorus_message

__all__ = [
    "RegoTest",
    "RegoTestReport",
    "RegoTestResult",
    "format_report",
    "go_duration",
    "run_rego_tests",
]

Status = Literal["PASS", "FAIL", "ERROR"]
_RULER = "-" * 80


@dataclass(frozen=True, order=True)
class RegoTest:
    """One test rule: its package (``allmende.baseline_test``), name and where it starts."""

    package: str
    name: str
    file: str
    line: int

    @property
    def path(self) -> str:
        """The rule's full path, as ``opa test`` prints it: data.<package>.<name>."""
        return f"data.{self.package}.{self.name}"

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class RegoTestResult:
    """What happened to one test; ``message`` says why it failed or erred."""

    test: RegoTest
    status: Status
    message: str
    seconds: float


@dataclass(frozen=True)
class RegoTestReport:
    """Every test result of one run, in package and name order."""

    policy_dir: Path
    results: tuple[RegoTestResult, ...]

    @property
    def passed(self) -> tuple[RegoTestResult, ...]:
        return tuple(r for r in self.results if r.status == "PASS")

    @property
    def failed(self) -> tuple[RegoTestResult, ...]:
        return tuple(r for r in self.results if r.status == "FAIL")

    @property
    def errored(self) -> tuple[RegoTestResult, ...]:
        return tuple(r for r in self.results if r.status == "ERROR")

    @property
    def ok(self) -> bool:
        """True when there is at least one test and every test passed."""
        return bool(self.results) and len(self.passed) == len(self.results)


def run_rego_tests(policy_dir: str | os.PathLike[str]) -> RegoTestReport:
    """Load every ``.rego`` under ``policy_dir``, run every test rule, and report.

    Failing and erring tests are reported, not raised. Raises PolicyError when the
    directory is missing or empty, a file cannot be read or does not compile, or the
    parsed policies cannot be read back from regorus.
    """
    root = Path(policy_dir)
    engine = regorus.Engine()
    for name, source in read_policy_sources(root, include_tests=True).items():
        try:
            engine.add_policy(name, source)
        except RuntimeError as exc:
            raise PolicyError(
                f"policy {name} (in {root}) does not compile: {regorus_message(exc)}"
            ) from exc
    try:
        modules = json.loads(engine.get_ast_as_json())
    except (RuntimeError, ValueError) as exc:
        raise PolicyError(f"cannot read the parsed policies of {root}: {exc}") from exc

    results = []
    for test in sorted(set(_discover(modules)), key=lambda t: (t.file, t.line, t.name)):
        started = time.perf_counter()
        try:
            value = engine.eval_rule(test.path)
        except (RuntimeError, TypeError, ValueError) as exc:
            status: Status = "ERROR"
            message = regorus_message(exc)
        else:
            status = "FAIL" if value is None or value is False else "PASS"
            message = "" if status == "PASS" else ("undefined" if value is None else "false")
        results.append(RegoTestResult(test, status, message, time.perf_counter() - started))
    return RegoTestReport(root, tuple(results))


def format_report(report: RegoTestReport, verbose: bool = False) -> str:
    """The report as ``opa test`` prints it: failures (every test when ``verbose``), a summary.

    Tests are grouped under their file (``allmende/decision_test.rego:``), one line each:
    ``data.allmende.decision_test.test_x: FAIL (1.2ms)``, ``… ERROR (…)`` followed by
    ``  file:line: <regorus' message>``, and ``… PASS (…)`` only when verbose. Then, when
    anything was listed, a ruler, and ``PASS: n/m`` (``FAIL:``/``ERROR:`` counts when
    non-zero).
    """
    if not report.results:
        return f"no tests found in {report.policy_dir}"
    lines: list[str] = []
    last_file = ""
    for result in report.results:
        test = result.test
        if result.status == "PASS" and not verbose:
            continue
        if test.file != last_file:
            if last_file:
                lines.append("")
            lines.append(f"{test.file}:")
            last_file = test.file
        lines.append(f"{test.path}: {result.status} ({go_duration(result.seconds)})")
        if result.status == "ERROR":
            message = result.message.splitlines() or ["(no message)"]
            lines.append(f"  {test.location}: {message[0]}")
            lines.extend(f"  {line}" for line in message[1:])
    total = len(report.results)
    if lines:
        lines.append(_RULER)
    if report.passed:
        lines.append(f"PASS: {len(report.passed)}/{total}")
    if report.failed:
        lines.append(f"FAIL: {len(report.failed)}/{total}")
    if report.errored:
        lines.append(f"ERROR: {len(report.errored)}/{total}")
    return "\n".join(lines)


def go_duration(seconds: float) -> str:
    """A duration as Go prints one (``opa test`` is Go): 512ns, 415.5µs, 1.2345ms, 2.5s."""
    ns = max(0, round(seconds * 1e9))
    if ns < 1_000:
        return f"{ns}ns"
    for unit, scale, digits in (("µs", 1_000, 3), ("ms", 1_000_000, 6), ("s", 10**9, 9)):
        if ns < scale * 1000 or unit == "s":
            whole, fraction = divmod(ns, scale)
            text = f"{fraction:0{digits}d}".rstrip("0")
            return f"{whole}.{text}{unit}" if text else f"{whole}{unit}"
    raise AssertionError("unreachable")


def _discover(modules: list[dict[str, Any]]) -> Iterator[RegoTest]:
    """Test rules of every ``*_test`` package in regorus' AST (first definition's line)."""
    seen: set[tuple[str, str]] = set()
    for module in modules:
        file = module["source"]["file"]
        package = ".".join(_ref_names(module["ast"]["package"]["refr"], file))
        if not package.endswith("_test"):
            continue
        for rule in module["ast"]["rules"]:
            found = _test_rule(rule)
            if found and (package, found[0]) not in seen:
                seen.add((package, found[0]))
                yield RegoTest(package, found[0], file, found[1])


def _test_rule(rule: dict[str, Any]) -> tuple[str, int] | None:
    """(name, line) when the rule is a plain ``test_*`` rule (complete, no arguments)."""
    if "Default" in rule:
        ref, args = rule["Default"]["refr"], rule["Default"]["args"]
    elif "Compr" in rule.get("Spec", {}).get("head", {}):
        ref, args = rule["Spec"]["head"]["Compr"]["refr"], []
    else:
        return None
    var = ref.get("Var")
    if var is None or args or not var["value"].startswith("test_"):
        return None
    return var["value"], var["span"]["line"]


def _ref_names(ref: dict[str, Any], file: str) -> list[str]:
    """``allmende.baseline_test`` from the package reference as regorus parses it."""
    if "Var" in ref:
        return [ref["Var"]["value"]]
    if "RefDot" in ref:
        return [*_ref_names(ref["RefDot"]["refr"], file), ref["RefDot"]["field"][1]]
    if "RefBrack" in ref and "String" in ref["RefBrack"]["index"]:
        node = ref["RefBrack"]
        return [*_ref_names(node["refr"], file), node["index"]["String"]["value"]]
    raise PolicyError(f"{file}: cannot read its package name from regorus' syntax tree")
