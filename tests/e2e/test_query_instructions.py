"""scripts/query_instructions.py counts instructions per Query call under callgrind (README,
Speed): the gateway's variants against the bare server, and each part of the handler.

The counts themselves are the README's; these tests check that real processes are counted
and that the figures hang together.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "query_instructions.py"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calls", "0"], "--calls must be at least 1"),
        (["--variants", "thread-pool"], "unknown variant thread-pool"),
        (["--variants", ","], "--variants names none"),
        (
            ["--parts", "--variants", "no-audit"],
            "--parts counts the shipped gateway's handler: leave out --variants",
        ),
    ],
)
def test_bad_arguments_are_named(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert message in out.stderr


COUNT_ROW = re.compile(r"^(\S+)\s+([\d,]+)\s+([\d,]+)\s+([+-][\d,]+)$")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_are_counted_under_callgrind() -> None:
    # The real gateway process and the bare server, each under valgrind's callgrind: the
    # gateway's own layer (mutual TLS, authentication, metrics) costs instructions the
    # bare server does not execute.
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--calls",
            "5",
            "--variants",
            "from-memory",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr
    rows = [m for line in out.stdout.splitlines() if (m := COUNT_ROW.match(line))]
    assert [m.group(1) for m in rows] == ["from-memory"], out.stdout
    ours, bare, gap = (int(m.replace(",", "")) for m in rows[0].group(2, 3, 4))
    assert ours > bare > 100_000
    assert abs(gap - (ours - bare)) <= 1  # each figure rounded on its own


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_each_part_of_the_handler_is_counted_in_the_gateway_process() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--parts", "--calls", "100"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr
    counted = {}
    for line in out.stdout.splitlines()[1:]:
        part, _, number = line.rpartition(" ")
        counted[part.strip()] = int(number.replace(",", ""))
    assert list(counted) == [
        "dataset look-up",
        "request bytes",
        "kept plan",
        "SQLite page",
        "page token",
        "page bytes",
        "audit entry",
        "whole handler",
    ], out.stdout
    assert all(n > 0 for n in counted.values()), out.stdout
    # The handler does each of the others once, and little besides.
    parts = sum(n for part, n in counted.items() if part != "whole handler")
    assert 0.7 * parts < counted["whole handler"] < 1.3 * parts, out.stdout


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("query_latency_parts", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_callgrind_dump_is_read_by_its_summary_line(tmp_path: Path) -> None:
    script = _script()
    dump = tmp_path / "out.callgrind.1"
    dump.write_text(
        "# callgrind format\nversion: 1\nevents: Ir\nfl=x\nfn=y\n0 5\nsummary: 1234567\n"
    )
    assert script._instructions(dump) == 1234567
    totals = tmp_path / "old.callgrind.1"
    totals.write_text("events: Ir\ntotals: 42\n")
    assert script._instructions(totals) == 42
    broken = tmp_path / "broken"
    broken.write_text("events: Ir\n")
    with pytest.raises(SystemExit, match="has no summary line: not a callgrind dump"):
        script._instructions(broken)
