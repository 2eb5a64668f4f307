"""The committed generated code is exactly what scripts/gen_protos.py produces from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"regenerate with `make protos`:\n{result.stdout}{result.stderr}"


def test_proto_package_matches_import_path() -> None:
    for proto in (REPO / "proto" / "allmende" / "v1").glob("*.proto"):
        assert "package allmende.v1;" in proto.read_text(), proto.name
