"""The `allmende` command as operators and stewards use it, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from allmende.signing import write_private_key

pytestmark = pytest.mark.integration


def allmende(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "allmende_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_cluster_operator_creates_ca_and_issues_certificates(tmp_path: Path) -> None:
    assert (
        allmende("ca", "init", "--cluster", "suedwest", "--dir", "ca", cwd=tmp_path).returncode == 0
    )
    issued = allmende(
        "ca",
        "issue",
        "--dir",
        "ca",
        "--member",
        "pirmasens",
        "--out",
        "certs",
        "--dns",
        "gw.pirmasens.de",
        cwd=tmp_path,
    )
    assert issued.returncode == 0, issued.stderr
    assert "spiffe://suedwest/member/pirmasens" in issued.stdout
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "pirmasens.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gw.pirmasens.de" in san.get_values_for_type(x509.DNSName)
    again = allmende("ca", "init", "--cluster", "suedwest", "--dir", "ca", cwd=tmp_path)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    bad = allmende(
        "ca", "issue", "--dir", "ca", "--member", "Pirmasens", "--out", "c", cwd=tmp_path
    )
    assert bad.returncode == 2 and "member name 'Pirmasens'" in bad.stderr


def test_node_operator_imports_and_sees_malformed_files_refused(tmp_path: Path) -> None:
    # imports sign what they publish: the node needs its signing key
    write_private_key(tmp_path / "s.pem", ed25519.Ed25519PrivateKey.generate())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sites.csv").write_text("id,name,capacity\na,Markt,10\nb,Bahnhof,20\n")
    (tmp_path / "town.toml").write_text(
        '[town]\nmember = "pirmasens"\ncluster = "suedwest"\n'
        '[backbone]\nbootstrap_servers = ["127.0.0.1:1"]\n'
        '[tls]\nca = "ca.pem"\ncert = "c.pem"\nkey = "k.pem"\n'
        '[keys]\nsigning_key = "s.pem"\nencryption_key = "e.pem"\ncluster_ca = "ca.pem"\n'
        '[[node.datasets]]\nid = "sites"\nfile = "data/sites.csv"\ntitle = "Sites"\n'
        'classification = "open"\n'
    )
    ok = allmende("dataset", "import", "--config", "town.toml", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "sites: version 1, 2 upserted, 0 deleted" in ok.stdout
    (tmp_path / "data" / "sites.csv").write_text("id,name,capacity\na,Markt,10\nb,Bahnhof\n")
    bad = allmende("dataset", "import", "--config", "town.toml", cwd=tmp_path)
    assert bad.returncode == 2
    assert "sites.csv, line 3" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "data" / "sites.csv").write_text("id,name,capacity\na,Markt,10\n")
    again = allmende("dataset", "import", "--config", "town.toml", cwd=tmp_path)
    assert "sites: version 2, 0 upserted, 1 deleted, 1 unchanged" in again.stdout


def test_steward_runs_policy_tests(tmp_path: Path) -> None:
    result = allmende("policy", "test", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "PASS:" in result.stdout
