"""Policies: sharing agreements, the embedded Rego engine and the Rego test runner.

``BUNDLED_POLICY_DIR`` is looked up when first used and raises PolicyError when the
repository's ``policies/`` directory is missing.
"""

from __future__ import annotations

from pathlib import Path

from allmende.policy.agreements import (
    AGREEMENT_KEYS,
    GROUPS_FILE,
    MASK_KINDS,
    ROW_FILTER_OPERATORS,
    AgreementError,
    load_agreements,
    load_groups,
    parse_agreement,
)
from allmende.policy.bundled import bundled_example_agreements_dir, bundled_policy_dir
from allmende.policy.engine import (
    DECISION_RULE,
    DEFAULT_MAX_ROWS,
    Decision,
    PolicyEngine,
    read_policy_sources,
)
from allmende.policy.testing import (
    RegoTest,
    RegoTestReport,
    RegoTestResult,
    format_report,
    run_rego_tests,
)

__all__ = [
    "AGREEMENT_KEYS",
    "BUNDLED_POLICY_DIR",
    "DECISION_RULE",
    "DEFAULT_MAX_ROWS",
    "GROUPS_FILE",
    "MASK_KINDS",
    "ROW_FILTER_OPERATORS",
    "AgreementError",
    "Decision",
    "PolicyEngine",
    "RegoTest",
    "RegoTestReport",
    "RegoTestResult",
    "bundled_example_agreements_dir",
    "bundled_policy_dir",
    "format_report",
    "load_agreements",
    "load_groups",
    "parse_agreement",
    "read_policy_sources",
    "run_rego_tests",
]


def __getattr__(name: str) -> Path:
    # Resolved lazily so that importing allmende.policy works without the bundled files.
    if name == "BUNDLED_POLICY_DIR":
        return bundled_policy_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
