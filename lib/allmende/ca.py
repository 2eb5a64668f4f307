"""A cluster's certificate authority: creates the CA and issues member and service certificates."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from allmende.errors import IdentityError
from allmende.identity import Identity, TlsFiles, check_name, gateway_server_name
from allmende.signing import write_private_key

__all__ = ["CertificateAuthority", "IssuedFiles"]

_CA_CERT = "ca.pem"
_CA_KEY = "ca-key.pem"
_CA_META = "ca.json"
_REGISTRY = "registry.json"


@dataclass(frozen=True)
class IssuedFiles:
    """Where an issued identity's files were written (member keys only for a member)."""

    identity: Identity
    tls: TlsFiles
    serial: str
    signing_key: Path | None = None
    encryption_key: Path | None = None


def _raw_public(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    """One cluster's CA kept in a directory (``ca.pem``, ``ca-key.pem``, ``ca.json``)."""

    def __init__(
        self, directory: Path, cluster: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.directory = directory
        self.cluster = cluster
        self.cert = cert
        self._key = key

    @property
    def cert_path(self) -> Path:
        return self.directory / _CA_CERT

    @classmethod
    def init(
        cls, directory: Path, cluster: str, *, days: int = 3650, now: dt.datetime | None = None
    ) -> CertificateAuthority:
        """Create a new CA for ``cluster`` in ``directory``; raises IdentityError if one exists."""
        check_name("cluster", cluster)
        directory = Path(directory)
        if (directory / _CA_KEY).exists():
            raise IdentityError(f"{directory} already holds a CA; refusing to overwrite it")
        directory.mkdir(parents=True, exist_ok=True)
        now = now or dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "allmende"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"allmende cluster CA {cluster}"),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        key_path = directory / _CA_KEY
        key_path.write_bytes(_key_pem(key))
        key_path.chmod(0o600)
        (directory / _CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / _CA_META).write_text(json.dumps({"cluster": cluster}, indent=2) + "\n")
        return cls(directory, cluster, cert, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Load the CA kept in ``directory``; raises IdentityError naming what is missing."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / _CA_META).read_text())
            cert = x509.load_pem_x509_certificate((directory / _CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((directory / _CA_KEY).read_bytes(), None)
        except (OSError, ValueError, KeyError) as exc:
            raise IdentityError(f"{directory} does not hold a usable CA: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{directory / _CA_KEY} is not an EC private key")
        return cls(directory, meta["cluster"], cert, key)

    def issue(
        self,
        out_dir: Path,
        member: str,
        service: str = "",
        *,
        dns_names: tuple[str, ...] = ("localhost",),
        days: int = 397,
        now: dt.datetime | None = None,
    ) -> IssuedFiles:
        """Issue a certificate for a member (a gateway) or one of its services.

        Writes ``<name>.pem``, ``<name>-key.pem`` and a copy of the CA as ``ca.pem`` into
        ``out_dir``. The SAN holds the SPIFFE ID plus ``dns_names`` and 127.0.0.1 so the
        certificate also serves a gateway on loopback. Raises IdentityError for bad names.
        """
        import ipaddress

        identity = Identity(
            self.cluster,
            check_name("member", member),
            check_name("service", service) if service else "",
        )
        now = now or dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.spiffe_id)]
        if not service:
            # The member's gateway name: forwarding gateways verify the owner by it.
            sans.append(x509.DNSName(gateway_server_name(self.cluster, member)))
        sans += [x509.DNSName(d) for d in dns_names]
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"allmende {self.cluster}"),
                        x509.NameAttribute(NameOID.COMMON_NAME, service or member),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"{member}-{service}" if service else member
        cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        key_path.chmod(0o600)
        ca_copy = out_dir / "ca.pem"
        if not ca_copy.exists():
            ca_copy.write_bytes(self.cert_path.read_bytes())
        serial = format(cert.serial_number, "x")
        tls = TlsFiles(ca=ca_copy, cert=cert_path, key=key_path)
        if service:
            self._record(member, serial=serial)
            return IssuedFiles(identity, tls, serial)
        signing, encryption = (
            ed25519.Ed25519PrivateKey.generate(),
            x25519.X25519PrivateKey.generate(),
        )
        signing_path = out_dir / f"{member}-signing-key.pem"
        encryption_path = out_dir / f"{member}-encryption-key.pem"
        write_private_key(signing_path, signing)
        write_private_key(encryption_path, encryption)
        self._record(
            member,
            serial=serial,
            signing_public_key=_raw_public(signing),
            encryption_public_key=_raw_public(encryption),
        )
        return IssuedFiles(identity, tls, serial, signing_path, encryption_path)

    # -- the member registry ---------------------------------------------------------------

    def registry(self) -> dict[str, dict[str, Any]]:
        """Every member the CA issued for: public keys (hex), serials, version, revocation."""
        path = self.directory / _REGISTRY
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise IdentityError(f"cannot read the member registry {path}: {exc}") from exc
        return dict(data)

    def _save_registry(self, registry: dict[str, dict[str, Any]]) -> None:
        path = self.directory / _REGISTRY
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(registry, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)  # atomic: a crash never leaves half a registry

    def _record(
        self,
        member: str,
        *,
        serial: str,
        signing_public_key: bytes = b"",
        encryption_public_key: bytes = b"",
    ) -> None:
        registry = self.registry()
        entry = registry.setdefault(
            member, {"certificate_serials": [], "version": 0, "revoked": False, "reason": ""}
        )
        entry["certificate_serials"] = sorted({*entry["certificate_serials"], serial})
        if signing_public_key:
            entry["signing_public_key"] = signing_public_key.hex()
            entry["encryption_public_key"] = encryption_public_key.hex()
            entry["revoked"], entry["reason"] = False, ""
        entry["version"] += 1
        self._save_registry(registry)
