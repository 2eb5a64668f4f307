"""SPIFFE IDs are parsed exactly; the CA issues certificates carrying them."""

from __future__ import annotations

import pytest
from cryptography import x509

from allmende.ca import CertificateAuthority
from allmende.errors import IdentityError
from allmende.identity import Identity, parse_spiffe_id


def test_member_and_service_ids_parse() -> None:
    assert parse_spiffe_id("spiffe://suedwest/member/pirmasens") == Identity(
        "suedwest", "pirmasens"
    )
    assert parse_spiffe_id(
        "spiffe://suedwest/member/pirmasens/service/traffic-dashboard"
    ) == Identity("suedwest", "pirmasens", "traffic-dashboard")


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://suedwest/member/pirmasens/",  # trailing slash
        "spiffe://suedwest/member/Pirmasens",  # case trick
        "SPIFFE://suedwest/member/pirmasens",
        "spiffe://suedwest/member/../member/pirmasens",  # dot segments
        "spiffe://suedwest/member/./pirmasens",
        "spiffe://suedwest/member/pirm%61sens",  # percent-encoding
        "spiffe://suedwest//member/pirmasens",  # empty segment
        "spiffe://suedwest/member/pirmasens?x=1",
        "spiffe://suedwest/member/pirmasens#frag",
        "spiffe://suedwest:443/member/pirmasens",
        "spiffe://user@suedwest/member/pirmasens",
        "spiffe://suedwest/members/pirmasens",
        "spiffe://suedwest/member/pirmasens/service",
        "spiffe://suedwest/member/pirmasens/svc/x",
        "spiffe://suedwest/member/-pirmasens",
        "spiffe://suedwest/member/pirmasens-",
        "spiffe://suedwest/member/pirma sens",
        "spiffe://suedwest/member/pirmasens\\x",
        "https://suedwest/member/pirmasens",
        "spiffe://suedwest/member/pirmäsens",
        "",
    ],
)
def test_ambiguous_or_malformed_ids_are_refused(text: str) -> None:
    with pytest.raises(IdentityError):
        parse_spiffe_id(text)


def test_ca_issues_certificate_with_spiffe_san(tmp_path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "suedwest")
    issued = ca.issue(tmp_path / "certs", "pirmasens")
    cert = x509.load_pem_x509_certificate(issued.tls.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://suedwest/member/pirmasens"
    ]
    assert "pirmasens.suedwest.allmende" in san.get_values_for_type(x509.DNSName)
    assert CertificateAuthority.load(tmp_path / "ca").cluster == "suedwest"
    with pytest.raises(IdentityError, match="already holds a CA"):
        CertificateAuthority.init(tmp_path / "ca", "suedwest")
    with pytest.raises(IdentityError, match="member name"):
        ca.issue(tmp_path / "certs", "Pirmasens")
