"""The node's own keys: the signer every message it publishes is sealed with, and the cluster CA.

A node cannot publish unsigned, so a configuration without ``[keys]`` is refused here, once,
for everything the node does. A key is parsed once per process and again only when its
file's content changes (a re-issued key), so the importer, the publisher and the followers
of one node share one loaded key.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

from cryptography import x509

from allmende.config import KeyFiles, NodeConfig
from allmende.errors import ConfigError, IdentityError
from allmende.signing import MemberSigner

__all__ = ["cluster_ca_certificate", "load_ca_certificate", "node_key_files", "node_signer"]

_T = TypeVar("_T")
_lock = threading.Lock()
_loaded: dict[tuple[str, str, Path, bytes], object] = {}


def node_key_files(config: NodeConfig) -> KeyFiles:
    """The node's ``[keys]``; raises ConfigError naming the missing section when there are none."""
    if config.keys is None:
        raise ConfigError(
            f"node of {config.member}",
            [
                "[keys] is required: signing_key, encryption_key and cluster_ca "
                "(a node signs everything it publishes and verifies everything it applies; "
                "`allmende ca issue` writes the keys)"
            ],
        )
    return config.keys


def _cached(kind: str, member: str, path: Path, load: Callable[[], _T]) -> _T:
    try:
        # The content, not the modification time, tells a re-issued key: a key written
        # twice within one timer tick keeps its mtime and size.
        digest = hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError as exc:
        raise IdentityError(f"cannot read {kind} {path}: {exc.strerror}") from exc
    key = (kind, member, Path(path), digest)
    with _lock:
        if key not in _loaded:
            for old in [k for k in _loaded if k[:3] == key[:3]]:
                del _loaded[old]
            _loaded[key] = load()
        return cast(_T, _loaded[key])


def node_signer(config: NodeConfig) -> MemberSigner:
    """The Ed25519 signer of ``config.member``, loaded from ``[keys] signing_key``.

    Raises ConfigError when the configuration has no ``[keys]``, IdentityError naming the
    file when it is missing or not an Ed25519 private key.
    """
    path = node_key_files(config).signing_key
    return _cached(
        "signing key", config.member, path, lambda: MemberSigner.from_file(config.member, path)
    )


def cluster_ca_certificate(config: NodeConfig) -> x509.Certificate:
    """The cluster CA certificate (``[keys] cluster_ca``) that trust statements verify with.

    Raises ConfigError when the configuration has no ``[keys]``, IdentityError naming the
    file when it is missing or not a PEM certificate.
    """
    path = node_key_files(config).cluster_ca
    return _cached("cluster CA certificate", config.member, path, lambda: load_ca_certificate(path))


def verifying_ca_certificate(config: NodeConfig, what: str) -> x509.Certificate:
    """``[keys] cluster_ca``, read now, for a follower that verifies ``what`` with it.

    Raises IdentityError when the node has no ``[keys]`` or the file is unusable.
    """
    if config.keys is None:
        raise IdentityError(f"node {config.member} has no [keys] cluster_ca to verify {what}")
    return load_ca_certificate(config.keys.cluster_ca)


def load_ca_certificate(path: Path) -> x509.Certificate:
    """The cluster CA certificate at ``path``, read now; raises IdentityError naming the file
    when it is missing or not a PEM certificate."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot read the cluster CA certificate {path}: {exc}") from exc
