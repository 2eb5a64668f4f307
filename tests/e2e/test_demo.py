"""The demo federation end to end: four towns, the real broker, nodes, gateways and the tour."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from allmende_cli.demo_federation import DemoFederation
from allmende_cli.demo_tour import run_tour

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_tour_runs_every_step_through_real_calls(tmp_path: Path) -> None:
    out = io.StringIO()

    def say(text: str) -> None:
        out.write(text + "\n")

    with DemoFederation(tmp_path / "demo", say=say) as fed:
        # published by one node, seen in every member's catalog through the backbone
        for town in ("kaiserslautern", "pirmasens", "sankt-wendel"):
            service = next(iter(fed.towns[town].services))
            with fed.client(town, service) as c:
                owners = {d.owner for d in c.list_datasets()}
            assert owners == {"kaiserslautern", "pirmasens", "sankt-wendel"}
        with fed.client("luzern", "city-app") as c:
            # Luzern's own cluster catalog holds only its own dataset
            assert {d.owner for d in c.list_datasets()} == {"luzern"}
        run_tour(fed, say=say)
        # The tour ended by revoking Sankt Wendel: its datasets leave every catalog.
        deadline = time.monotonic() + 5
        with fed.client("kaiserslautern", "open-data-portal") as c:
            while "sankt-wendel" in {d.owner for d in c.list_datasets()}:
                assert time.monotonic() < deadline, "a revoked member's datasets stayed listed"
                time.sleep(0.05)
    text = out.getvalue()
    for marker in (
        "1. The federated catalog",
        "2. Allowed",
        "3. Masked",
        "4. Denied",
        "5. Luzern",
        "6. A live subscription",
        "← upsert",
        "← delete",
        "not a member of cluster suedwest",
        "'plate': 'redact'",
        # the data steward's steps, each checked inside the tour against the gateway's answer
        "8. Aggregate-only",
        "2 district(s) with fewer than 5 permits suppressed",
        "grants pirmasens aggregates only (groups of at least 5 records): use Aggregate",
        "9. Explain",
        "rule:        baseline → agreements: agreement ka-ps-permits-2026",
        "rule:        gateway: the grant is aggregate-only, so rows are refused",
        "= the gateway's answer in step 4: same decision, reasons and policy version",
        "10. Audit",
        "OK: every entry is intact, in order and linked",
        "edited: entry seq",
        "11. Signed policy bundles",
        "1 decision(s) change",
        "to cluster-v1+kaiserslautern-v1",
        "masked: {'plate': 'hash:ka-ps-permits-2026'}",
    ):
        assert marker in text, f"{marker!r} missing from the tour:\n{text}"
    # the audit report's row for step 4's denial: member, service, purpose, action, 0 allowed,
    # 1 denied, 0 rows
    assert re.search(r"sankt-wendel +research-app +marketing +query +0 +1 +0\n", text), text


def test_allmende_cli_reports_bad_input_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "client.toml"
    bad.write_text("[client]\ngateway = 5\n")
    result = subprocess.run(
        [sys.executable, "-m", "allmende_cli.main", "catalog", "--profile", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "[client] gateway must be a str" in result.stderr
    assert "[client] ca is required" in result.stderr
    assert "Traceback" not in result.stderr
