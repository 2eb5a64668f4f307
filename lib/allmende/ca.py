"""A cluster's certificate authority: certificates, members' keys, the registry, trust statements.

The CA issues member (gateway) and service certificates, either generating the key itself
or signing a certificate signing request the member made (so its private keys never leave
the town). It keeps a registry of every member: public signing and encryption keys,
certificate serials, revocation, and a version that grows with every change. The registry
travels on ``<prefix>.trust`` as TrustStatements signed with the CA's key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.timestamp_pb2 import Timestamp

from allmende.backbone import BackboneProducer, OutgoingMessage, Topics, ensure_topics, seal
from allmende.config import BackboneConfig
from allmende.errors import IdentityError
from allmende.identity import Identity, TlsFiles, check_name, gateway_server_name
from allmende.signing import CA_AUTHOR, CaSigner, write_private_key
from allmende.v1 import backbone_pb2

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "IssuedFiles",
    "publish_registry",
    "read_public_key",
    "trust_key",
]

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


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the CA signed from a member's CSR; the private key stayed with the member."""

    identity: Identity
    certificate: Path
    ca: Path
    serial: str
    not_after: dt.datetime


def trust_key(member: str) -> bytes:
    """The Kafka key of a member's trust statements, ``member/<member>``."""
    return f"member/{member}".encode()


def _raw_public(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _timestamp(iso: str) -> Timestamp:
    ts = Timestamp()
    if iso:
        ts.FromJsonString(iso)
    return ts


def read_public_key(path: Path, kind: Literal["signing", "encryption"]) -> bytes:
    """A member's public key from ``path`` as the raw 32 bytes.

    Accepts a PEM SubjectPublicKeyInfo (what ``allmende member keygen`` writes; its type is
    checked), 32 raw bytes, or 64 hex digits. ``kind`` ``signing`` wants Ed25519,
    ``encryption`` X25519. Raises IdentityError naming the file and what is wrong.
    """
    want, cls = (
        ("Ed25519", ed25519.Ed25519PublicKey)
        if kind == "signing"
        else ("X25519", x25519.X25519PublicKey)
    )
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read {kind} public key {path}: {exc.strerror}") from exc
    if b"PRIVATE KEY-----" in data:
        raise IdentityError(f"{path} holds a private key; send the CA only the public key")
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise IdentityError(f"{path} is not a PEM public key: {exc}") from exc
        if not isinstance(key, cls):
            raise IdentityError(
                f"{path} holds a {type(key).__name__.removeprefix('_')} key; the {kind} key "
                f"must be {want}"
            )
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    text = data.strip()
    if len(data) == 32:
        raw = data
    elif len(text) == 64:
        try:
            raw = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise IdentityError(f"{path}: 64 characters but not hex digits") from exc
    else:
        raise IdentityError(
            f"{path} is not a {want} public key: expected PEM, 32 raw bytes or 64 hex digits"
        )
    cls.from_public_bytes(raw)  # any 32 bytes are a valid point encoding for both curves
    return raw


def _read_csr(path: Path) -> x509.CertificateSigningRequest:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read CSR {path}: {exc.strerror}") from exc
    try:
        csr = (
            x509.load_pem_x509_csr(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_csr(data)
        )
    except ValueError as exc:
        raise IdentityError(f"{path} is not a certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise IdentityError(f"{path}: the CSR's self-signature does not verify")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise IdentityError(f"{path}: EC key on {key.curve.name}; use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise IdentityError(f"{path}: RSA key of {key.key_size} bits; use at least 2048")
    else:
        raise IdentityError(f"{path}: a {type(key).__name__} key cannot serve TLS; use EC P-256")
    return csr


class CertificateAuthority:
    """One cluster's CA kept in a directory (``ca.pem``, ``ca-key.pem``, ``ca.json``,
    ``registry.json``)."""

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

    @property
    def signer(self) -> CaSigner:
        """Signs trust statements as this CA (author ``@ca``)."""
        return CaSigner(self._key)

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
            cluster = meta["cluster"]
        except (OSError, ValueError, KeyError) as exc:
            raise IdentityError(f"{directory} does not hold a usable CA: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{directory / _CA_KEY} is not an EC private key")
        return cls(directory, cluster, cert, key)

    # -- certificates ----------------------------------------------------------------------

    def _identity(self, member: str, service: str) -> Identity:
        identity = Identity(
            self.cluster,
            check_name("member", member),
            check_name("service", service) if service else "",
        )
        entry = self.registry().get(member)
        if service and entry is not None and entry["revoked"]:
            raise IdentityError(
                f"member {member} is revoked ({entry['reason']}); issue its gateway certificate "
                "again to re-admit it before issuing for its services"
            )
        return identity

    def _certificate(
        self,
        identity: Identity,
        public_key: Any,
        dns_names: tuple[str, ...],
        days: int,
        now: dt.datetime | None,
    ) -> x509.Certificate:
        """Sign a certificate whose SAN the CA sets from ``identity``, never from a request."""
        now = now or dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.spiffe_id)]
        if not identity.service:
            # The member's gateway name: forwarding gateways verify the owner by it.
            sans.append(x509.DNSName(gateway_server_name(self.cluster, identity.member)))
        sans += [x509.DNSName(d) for d in dns_names]
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"allmende {self.cluster}"),
                        x509.NameAttribute(
                            NameOID.COMMON_NAME, identity.service or identity.member
                        ),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(public_key)
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

    def _write_cert(self, out_dir: Path, name: str, cert: x509.Certificate) -> tuple[Path, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        cert_path = out_dir / f"{name}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        ca_copy = out_dir / "ca.pem"
        if not ca_copy.exists():
            ca_copy.write_bytes(self.cert_path.read_bytes())
        return cert_path, ca_copy

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
        ``out_dir``; for a member also its signing and encryption keys. The SAN holds the
        SPIFFE ID plus ``dns_names`` and 127.0.0.1 so the certificate also serves a gateway on
        loopback. Issuing a member's certificate registers it (again, if it was revoked).
        Raises IdentityError for bad names, or for a service of a revoked member.
        """
        identity = self._identity(member, service)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._certificate(identity, key.public_key(), dns_names, days, now)
        name = f"{member}-{service}" if service else member
        cert_path, ca_copy = self._write_cert(out_dir, name, cert)
        key_path = Path(out_dir) / f"{name}-key.pem"
        key_path.write_bytes(_key_pem(key))
        key_path.chmod(0o600)
        serial = format(cert.serial_number, "x")
        tls = TlsFiles(ca=ca_copy, cert=cert_path, key=key_path)
        if service:
            self._record(member, cert, service)
            return IssuedFiles(identity, tls, serial)
        signing, encryption = (
            ed25519.Ed25519PrivateKey.generate(),
            x25519.X25519PrivateKey.generate(),
        )
        signing_path = Path(out_dir) / f"{member}-signing-key.pem"
        encryption_path = Path(out_dir) / f"{member}-encryption-key.pem"
        write_private_key(signing_path, signing)
        write_private_key(encryption_path, encryption)
        self._record(member, cert, "", _raw_public(signing), _raw_public(encryption))
        return IssuedFiles(identity, tls, serial, signing_path, encryption_path)

    def issue_from_csr(
        self,
        out_dir: Path,
        member: str,
        csr_path: Path,
        *,
        service: str = "",
        signing_public_key: bytes = b"",
        encryption_public_key: bytes = b"",
        dns_names: tuple[str, ...] = ("localhost",),
        days: int = 397,
        now: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """Sign the CSR at ``csr_path`` for ``member`` (or its ``service``).

        The CSR's self-signature must verify; only its public key is used: subject and SAN
        come from ``member``/``service``, never from the request. A member's certificate needs
        its raw Ed25519 signing and X25519 encryption public keys, which the registry records.
        Writes ``<name>.pem`` and ``ca.pem`` into ``out_dir``. Raises IdentityError.
        """
        identity = self._identity(member, service)
        if service and (signing_public_key or encryption_public_key):
            raise IdentityError("a service has no signing or encryption keys of its own")
        if not service and not (signing_public_key and encryption_public_key):
            raise IdentityError(
                f"a member certificate for {member} needs its signing and encryption public keys"
            )
        for kind, raw in (("signing", signing_public_key), ("encryption", encryption_public_key)):
            if raw and len(raw) != 32:
                raise IdentityError(f"the {kind} public key must be 32 bytes, not {len(raw)}")
        csr = _read_csr(csr_path)
        cert = self._certificate(identity, csr.public_key(), dns_names, days, now)
        name = f"{member}-{service}" if service else member
        cert_path, ca_copy = self._write_cert(out_dir, name, cert)
        self._record(member, cert, service, signing_public_key, encryption_public_key)
        return IssuedCertificate(
            identity,
            cert_path,
            ca_copy,
            format(cert.serial_number, "x"),
            cert.not_valid_after_utc,
        )

    # -- the member registry ---------------------------------------------------------------

    def registry(self) -> dict[str, dict[str, Any]]:
        """Every member the CA issued for: public keys (hex), certificates, version, revocation."""
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
        cert: x509.Certificate,
        service: str,
        signing_public_key: bytes = b"",
        encryption_public_key: bytes = b"",
    ) -> None:
        registry = self.registry()
        entry = registry.setdefault(
            member, {"certificate_serials": [], "version": 0, "revoked": False, "reason": ""}
        )
        serial = format(cert.serial_number, "x")
        entry["certificate_serials"] = sorted({*entry["certificate_serials"], serial})
        entry.setdefault("certificates", {})[serial] = {
            "service": service,
            "not_after": _iso(cert.not_valid_after_utc),
        }
        if signing_public_key:
            entry["signing_public_key"] = signing_public_key.hex()
            entry["encryption_public_key"] = encryption_public_key.hex()
            entry["revoked"], entry["reason"] = False, ""
            entry.pop("revoked_at", None)
        entry["version"] += 1
        entry["updated_at"] = _iso(dt.datetime.now(dt.UTC))
        self._save_registry(registry)

    def revoke(
        self, member: str, reason: str, *, now: dt.datetime | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Mark ``member`` revoked; returns its registry entry and whether this changed it.

        Revoking a member that is revoked already changes nothing (the first reason stays).
        Raises IdentityError for a member the CA never issued for, or without a reason.
        """
        check_name("member", member)
        if not reason.strip():
            raise IdentityError("a revocation needs a reason (--reason)")
        registry = self.registry()
        entry = registry.get(member)
        if entry is None:
            known = ", ".join(sorted(registry)) or "none"
            raise IdentityError(
                f"the CA of {self.cluster} never issued for member {member!r} (members: {known})"
            )
        if entry["revoked"]:
            return entry, False
        when = _iso(now or dt.datetime.now(dt.UTC))
        entry.update(revoked=True, reason=reason.strip(), revoked_at=when, updated_at=when)
        entry["version"] += 1
        self._save_registry(registry)
        return entry, True

    # -- trust statements ------------------------------------------------------------------

    def statement(self, member: str, entry: dict[str, Any] | None = None) -> bytes:
        """The CA-signed TrustStatement envelope for ``member``'s registry entry.

        A MemberRecord with its keys and serials, or a Revocation when it is revoked; its
        ``version`` is the registry version. Raises IdentityError for an unknown member.
        """
        if entry is None:
            entry = self.registry().get(member)
            if entry is None:
                raise IdentityError(f"the CA of {self.cluster} never issued for member {member!r}")
        if entry["revoked"]:
            stmt = backbone_pb2.TrustStatement(
                revocation=backbone_pb2.Revocation(
                    cluster=self.cluster,
                    member=member,
                    reason=entry["reason"],
                    version=entry["version"],
                    revoked_at=_timestamp(entry.get("revoked_at", "")),
                )
            )
        else:
            stmt = backbone_pb2.TrustStatement(
                member=backbone_pb2.MemberRecord(
                    cluster=self.cluster,
                    member=member,
                    signing_public_key=bytes.fromhex(entry.get("signing_public_key", "")),
                    encryption_public_key=bytes.fromhex(entry.get("encryption_public_key", "")),
                    certificate_serials=entry["certificate_serials"],
                    version=entry["version"],
                    issued_at=_timestamp(entry.get("updated_at", "")),
                )
            )
        return seal(CA_AUTHOR, self.cluster, stmt, signer=self.signer)

    def trust_messages(
        self, topic_prefix: str, members: list[str] | None = None
    ) -> list[OutgoingMessage]:
        """Every (or the named) member's statement, ready for ``<prefix>.trust``.

        Raises IdentityError naming a member the CA never issued for.
        """
        registry = self.registry()
        names = sorted(registry) if members is None else members
        unknown = [m for m in names if m not in registry]
        if unknown:
            raise IdentityError(f"the CA of {self.cluster} never issued for {', '.join(unknown)}")
        topic = Topics(topic_prefix).trust
        return [OutgoingMessage(topic, trust_key(m), self.statement(m, registry[m])) for m in names]


def publish_registry(
    ca: CertificateAuthority,
    backbone: BackboneConfig,
    members: list[str] | None = None,
    *,
    timeout_s: float = 5.0,
) -> list[str]:
    """Publish the CA's statements about every (or the named) member to ``<prefix>.trust``.

    Creates the topic if missing and waits for the broker's acknowledgement. Returns the
    members published. Raises IdentityError (unknown member) or BackboneError.
    """
    messages = ca.trust_messages(backbone.topic_prefix, members)
    ensure_topics(backbone, [Topics(backbone.topic_prefix).trust])
    producer = BackboneProducer(backbone, timeout_s=timeout_s)
    try:
        producer.send_all(messages)
    finally:
        producer.close()
    return [m.key.decode().removeprefix("member/") for m in messages]
