"""Issuing from a member's own CSR: the private keys stay in the town; the CA sets the SAN."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID

from allmende.ca import CertificateAuthority, read_public_key
from allmende.errors import IdentityError
from allmende.signing import MemberSigner
from allmende_cli.main import main
from allmende_cli.member_commands import generate_member_keys


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", "suedwest")


def sans(cert_path: Path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier), san.get_values_for_type(
        x509.DNSName
    )


def test_keygen_then_issue_from_csr_keeps_the_keys_in_the_town(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    town = tmp_path / "pirmasens-keys"
    files = generate_member_keys(town, "suedwest", "pirmasens")
    assert files.signing_public is not None and files.encryption_public is not None
    assert files.signing_key is not None
    for private in (files.tls_key, files.signing_key, files.encryption_key):
        assert private is not None and private.stat().st_mode & 0o077 == 0
    cert = ca.issue_from_csr(
        tmp_path / "out",
        "pirmasens",
        files.csr,
        signing_public_key=read_public_key(files.signing_public, "signing"),
        encryption_public_key=read_public_key(files.encryption_public, "encryption"),
        dns_names=("gw.pirmasens.de",),
    )
    assert sans(cert.certificate) == (
        ["spiffe://suedwest/member/pirmasens"],
        ["pirmasens.suedwest.allmende", "gw.pirmasens.de"],
    )
    # The certificate is for the key the town kept.
    issued = x509.load_pem_x509_certificate(cert.certificate.read_bytes())
    key = serialization.load_pem_private_key(files.tls_key.read_bytes(), None)
    assert issued.public_key() == key.public_key()
    assert not list((tmp_path / "out").glob("*key*"))  # the CA wrote no private key
    entry = ca.registry()["pirmasens"]
    assert (
        entry["signing_public_key"]
        == MemberSigner.from_file("pirmasens", files.signing_key).public_key.hex()
    )
    assert cert.serial in entry["certificate_serials"]
    assert entry["certificates"][cert.serial]["not_after"].startswith(f"{cert.not_after:%Y-%m-%d}")


def test_the_ca_never_copies_the_requested_san(ca: CertificateAuthority, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kaiserslautern")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("spiffe://suedwest/member/kaiserslautern"),
                    x509.DNSName("kaiserslautern.suedwest.allmende"),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    csr = tmp_path / "greedy.csr"
    csr.write_bytes(greedy.public_bytes(serialization.Encoding.DER))  # DER is accepted too
    cert = ca.issue_from_csr(tmp_path / "out", "pirmasens", csr, service="dash")
    assert sans(cert.certificate) == (
        ["spiffe://suedwest/member/pirmasens/service/dash"],
        ["localhost"],
    )
    subject = x509.load_pem_x509_certificate(cert.certificate.read_bytes()).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dash"


def test_bad_csrs_and_key_files_are_refused_clearly(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    files = generate_member_keys(tmp_path / "k", "suedwest", "pirmasens")
    assert files.signing_public and files.encryption_public and files.signing_key
    signing = read_public_key(files.signing_public, "signing")
    encryption = read_public_key(files.encryption_public, "encryption")

    def issue(csr: Path, **kw: bytes) -> object:
        args = {"signing_public_key": signing, "encryption_public_key": encryption} | kw
        return ca.issue_from_csr(tmp_path / "out", "pirmasens", csr, **args)

    with pytest.raises(IdentityError, match="not a certificate signing request"):
        issue(files.signing_public)
    tampered = tmp_path / "tampered.csr"
    der = bytearray(
        x509.load_pem_x509_csr(files.csr.read_bytes()).public_bytes(serialization.Encoding.DER)
    )
    der[-40] ^= 0x01  # inside the signature
    tampered.write_bytes(bytes(der))
    with pytest.raises(IdentityError, match="self-signature"):
        issue(tampered)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_csr = tmp_path / "weak.csr"
    weak_csr.write_bytes(
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(weak, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(IdentityError, match="2048"):
        issue(weak_csr)
    with pytest.raises(IdentityError, match="signing and encryption public keys"):
        issue(files.csr, encryption_public_key=b"")
    with pytest.raises(IdentityError, match="32 bytes"):
        issue(files.csr, signing_public_key=b"short")
    with pytest.raises(IdentityError, match="must be Ed25519"):
        read_public_key(files.encryption_public, "signing")
    with pytest.raises(IdentityError, match="must be X25519"):
        read_public_key(files.signing_public, "encryption")
    with pytest.raises(IdentityError, match="private key"):
        read_public_key(files.signing_key, "signing")
    with pytest.raises(IdentityError, match="cannot read"):
        read_public_key(tmp_path / "missing.pem", "signing")
    with pytest.raises(IdentityError, match="member name"):
        ca.issue_from_csr(tmp_path / "out", "Pirmasens", files.csr)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        generate_member_keys(tmp_path / "k", "suedwest", "pirmasens")


def test_public_keys_may_be_raw_or_hex(tmp_path: Path) -> None:
    sk = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = sk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    (tmp_path / "raw.key").write_bytes(raw)
    (tmp_path / "hex.key").write_text(raw.hex() + "\n")
    assert read_public_key(tmp_path / "raw.key", "signing") == raw
    assert read_public_key(tmp_path / "hex.key", "signing") == raw
    ek = x25519.X25519PrivateKey.generate().public_key()
    (tmp_path / "enc.hex").write_text(
        ek.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    )
    assert len(read_public_key(tmp_path / "enc.hex", "encryption")) == 32
    (tmp_path / "junk").write_text("zz" * 32)
    with pytest.raises(IdentityError, match="not hex"):
        read_public_key(tmp_path / "junk", "signing")
    (tmp_path / "short").write_text("abcd")
    with pytest.raises(IdentityError, match="PEM, 32 raw bytes or 64 hex"):
        read_public_key(tmp_path / "short", "signing")


def test_cli_keygen_and_issue_from_csr(
    ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "town"
    assert (
        main(
            [
                "member",
                "keygen",
                "--member",
                "pirmasens",
                "--cluster",
                "suedwest",
                "--out",
                str(keys),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "send the CA" in out and "pirmasens.csr" in out
    args = [
        "ca",
        "issue",
        "--dir",
        str(ca.directory),
        "--member",
        "pirmasens",
        "--out",
        str(tmp_path / "certs"),
    ]
    csr = ["--csr", str(keys / "pirmasens.csr")]
    pubs = [
        "--signing-public",
        str(keys / "pirmasens-signing-public.pem"),
        "--encryption-public",
        str(keys / "pirmasens-encryption-public.pem"),
    ]
    assert main([*args, *csr]) == 2  # a member's CSR needs its public keys
    assert "--signing-public and --encryption-public" in capsys.readouterr().err
    swapped = [pubs[0], pubs[3], pubs[2], pubs[1]]
    assert main([*args, *csr, *swapped]) == 2
    assert "must be Ed25519" in capsys.readouterr().err
    assert main([*args, *csr, *pubs, "--days", "30"]) == 0
    assert "issued spiffe://suedwest/member/pirmasens from" in capsys.readouterr().out
    assert (tmp_path / "certs" / "pirmasens.pem").exists()
    assert (
        main(
            [
                "member",
                "keygen",
                "--member",
                "pirmasens",
                "--cluster",
                "suedwest",
                "--service",
                "dash",
                "--out",
                str(keys),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main([*args, "--service", "dash", "--csr", str(keys / "pirmasens-dash.csr")]) == 0
    assert "spiffe://suedwest/member/pirmasens/service/dash" in capsys.readouterr().out
