"""The member registry: revocation, `ca list`, and the CA-signed statements made from it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from allmende.backbone import open_envelope
from allmende.ca import CertificateAuthority, trust_key
from allmende.errors import IdentityError
from allmende.signing import CA_AUTHOR, verify_ca
from allmende.store import connect
from allmende.trust import TrustStore
from allmende.v1 import backbone_pb2
from allmende_cli.main import main


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    ca.issue(tmp_path / "certs", "pirmasens")
    ca.issue(tmp_path / "certs", "kaiserslautern")
    return ca


def test_revoke_is_recorded_once_and_idempotent(ca: CertificateAuthority, tmp_path: Path) -> None:
    before = ca.registry()["pirmasens"]["version"]
    entry, changed = ca.revoke("pirmasens", "  key lost  ")
    assert changed and entry["revoked"] and entry["reason"] == "key lost"
    assert entry["version"] == before + 1
    again, changed = ca.revoke("pirmasens", "another reason")
    assert not changed and again["reason"] == "key lost" and again["version"] == before + 1
    with pytest.raises(IdentityError, match="never issued for member 'luzern'"):
        ca.revoke("luzern", "x")
    with pytest.raises(IdentityError, match="needs a reason"):
        ca.revoke("kaiserslautern", " ")
    with pytest.raises(IdentityError, match="is revoked"):
        ca.issue(tmp_path / "certs", "pirmasens", "dash")
    # Issuing the gateway certificate again re-admits the member, with a higher version.
    ca.issue(tmp_path / "certs2", "pirmasens")
    entry = ca.registry()["pirmasens"]
    assert not entry["revoked"] and entry["version"] == before + 2 and "revoked_at" not in entry


def test_statements_are_ca_signed_and_apply_in_version_order(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    conn = connect(tmp_path / "store.sqlite")
    trust = TrustStore(conn, "suedwest", ca.cert)
    record = ca.statement("pirmasens")
    env, stmt = open_envelope(record, backbone_pb2.TrustStatement)
    verify_ca(env, ca.cert)
    assert env.author == CA_AUTHOR and stmt.WhichOneof("statement") == "member"
    assert stmt.member.signing_public_key.hex() == ca.registry()["pirmasens"]["signing_public_key"]
    assert stmt.member.version == 1 and stmt.member.issued_at.seconds > 0
    assert trust.apply(record)
    assert not trust.apply(ca.statement("pirmasens"))  # the same version again: no change

    ca.revoke("pirmasens", "key lost", now=dt.datetime(2026, 11, 22, 10, tzinfo=dt.UTC))
    revocation = ca.statement("pirmasens")
    _, stmt = open_envelope(revocation, backbone_pb2.TrustStatement)
    assert stmt.WhichOneof("statement") == "revocation"
    assert (stmt.revocation.reason, stmt.revocation.version) == ("key lost", 2)
    assert stmt.revocation.revoked_at.ToJsonString() == "2026-11-22T10:00:00Z"
    assert trust.apply(revocation)
    assert trust.revoked() == {"pirmasens": "key lost"}
    with pytest.raises(IdentityError, match="replayed"):
        trust.apply(record)

    messages = ca.trust_messages("allmende")
    assert [(m.topic, m.key) for m in messages] == [
        ("allmende.trust", trust_key("kaiserslautern")),
        ("allmende.trust", b"member/pirmasens"),
    ]
    with pytest.raises(IdentityError, match="never issued for luzern"):
        ca.trust_messages("allmende", ["luzern"])
    conn.close()


def test_cli_revoke_and_list(ca: CertificateAuthority, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(ca.directory)
    assert main(["ca", "revoke", "--dir", d, "--member", "pirmasens", "--reason", "left"]) == 0
    out = capsys.readouterr().out
    assert "revoked pirmasens: left (version 2)" in out and "ca publish" in out
    assert main(["ca", "revoke", "--dir", d, "--member", "pirmasens", "--reason", "x"]) == 0
    assert "was revoked already" in capsys.readouterr().out
    assert main(["ca", "revoke", "--dir", d, "--member", "nobody", "--reason", "x"]) == 2
    assert "never issued for member 'nobody'" in capsys.readouterr().err
    assert (
        main(["ca", "revoke", "--dir", d, "--member", "pirmasens", "--reason", "x", "--publish"])
        == 2
    )
    assert "--bootstrap" in capsys.readouterr().err

    assert main(["ca", "list", "--dir", d]) == 0
    table = capsys.readouterr().out
    assert "members of cluster suedwest" in table
    header, _rule, *rows = table.splitlines()[1:]
    assert header.split() == ["member", "status", "serials", "not", "after", "version"]
    assert rows[0].split()[:2] == ["kaiserslautern", "active"]
    assert rows[1].split()[:3] == ["pirmasens", "revoked", "(left)"]

    assert main(["ca", "list", "--dir", d, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["cluster"] == "suedwest"
    by_member = {m["member"]: m for m in listing["members"]}
    assert by_member["pirmasens"]["status"] == "revoked"
    assert by_member["pirmasens"]["version"] == 2
    assert by_member["kaiserslautern"]["not_after"].endswith("Z")
    assert len(by_member["kaiserslautern"]["serials"]) == 1

    assert main(["ca", "list", "--dir", str(ca.directory.parent / "no-ca")]) == 2
    assert "does not hold a usable CA" in capsys.readouterr().err
