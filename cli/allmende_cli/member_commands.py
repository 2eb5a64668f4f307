"""`allmende member keygen`: a town makes its own keys and a CSR, so no private key leaves it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import NameOID

from allmende.errors import IdentityError
from allmende.identity import Identity, check_name
from allmende.signing import write_private_key

__all__ = ["MemberKeyFiles", "generate_member_keys", "register"]


@dataclass(frozen=True)
class MemberKeyFiles:
    """What ``generate_member_keys`` wrote: keep the private keys, send the rest to the CA."""

    tls_key: Path
    csr: Path
    signing_key: Path | None = None
    signing_public: Path | None = None
    encryption_key: Path | None = None
    encryption_public: Path | None = None


def generate_member_keys(
    out_dir: Path, cluster: str, member: str, service: str = ""
) -> MemberKeyFiles:
    """Make a member's (or service's) private keys and a CSR in ``out_dir``, for the CA to sign.

    Writes ``<name>-key.pem`` (EC P-256 TLS key) and ``<name>.csr``; for a member also
    ``<member>-signing-key.pem`` (Ed25519) and ``<member>-encryption-key.pem`` (X25519) with
    their public keys as PEM (``-signing-public.pem``, ``-encryption-public.pem``). Private
    keys are mode 0600. Raises IdentityError for bad names or when a key file exists already.
    """
    identity = Identity(
        check_name("cluster", cluster),
        check_name("member", member),
        check_name("service", service) if service else "",
    )
    name = f"{member}-{service}" if service else member
    out_dir = Path(out_dir)
    out = MemberKeyFiles(
        tls_key=out_dir / f"{name}-key.pem",
        csr=out_dir / f"{name}.csr",
        **(
            {}
            if service
            else {
                "signing_key": out_dir / f"{member}-signing-key.pem",
                "signing_public": out_dir / f"{member}-signing-public.pem",
                "encryption_key": out_dir / f"{member}-encryption-key.pem",
                "encryption_public": out_dir / f"{member}-encryption-public.pem",
            }
        ),
    )
    for existing in (out.tls_key, out.signing_key, out.encryption_key):
        if existing is not None and existing.exists():
            raise IdentityError(f"{existing} exists already; refusing to overwrite a private key")
    out_dir.mkdir(parents=True, exist_ok=True)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    # The requested SAN is for the reader's information: the CA sets the SAN itself.
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service or member)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_id)]),
            critical=False,
        )
        .sign(tls_key, hashes.SHA256())
    )
    out.tls_key.write_bytes(
        tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out.tls_key.chmod(0o600)
    out.csr.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    pairs = (
        (out.signing_key, out.signing_public, ed25519.Ed25519PrivateKey.generate()),
        (out.encryption_key, out.encryption_public, x25519.X25519PrivateKey.generate()),
    )
    for private_path, public_path, key in pairs:
        if private_path is None or public_path is None:
            continue
        write_private_key(private_path, key)
        public_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return out


def _keygen(args: argparse.Namespace) -> int:
    files = generate_member_keys(Path(args.out), args.cluster, args.member, args.service or "")
    name = f"{args.member}/{args.service}" if args.service else args.member
    print(f"made the keys of {name} in {args.out}")
    print(f"  keep     {files.tls_key}  (TLS private key)")
    if files.signing_key is not None and files.encryption_key is not None:
        print(f"  keep     {files.signing_key}  (Ed25519, signs your backbone messages)")
        print(f"  keep     {files.encryption_key}  (X25519, unwraps data keys for you)")
    print(f"  send the CA  {files.csr}")
    if files.signing_public is not None and files.encryption_public is not None:
        print(f"               {files.signing_public}\n               {files.encryption_public}")
        print(
            f"  the CA runs: allmende ca issue --member {args.member} --csr {files.csr.name} "
            f"--signing-public {files.signing_public.name} "
            f"--encryption-public {files.encryption_public.name} --out certs"
        )
    else:
        print(
            f"  the CA runs: allmende ca issue --member {args.member} --service {args.service} "
            f"--csr {files.csr.name} --out certs"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    member = sub.add_parser(
        "member", help="a member's own keys (made in the town, never sent anywhere)"
    ).add_subparsers(dest="action", required=True)
    p = member.add_parser(
        "keygen",
        help="make the TLS key and CSR, the signing and encryption keys and their public keys",
    )
    p.add_argument("--member", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--service", help="make only a TLS key and CSR for this service of the member")
    p.add_argument("--out", required=True, help="folder to write the keys into")
    p.set_defaults(run=_keygen)
