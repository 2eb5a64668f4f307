"""The Kafka backbone: topic names, the envelope around every message, and thin client wrappers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from allmende.config import BackboneConfig
from allmende.errors import BackboneError
from allmende.v1 import backbone_pb2


class Signer(Protocol):
    """Anything that signs an envelope in place (allmende.signing.MemberSigner, CaSigner)."""

    def sign(self, env: backbone_pb2.Envelope) -> None: ...


__all__ = [
    "BackboneProducer",
    "OutgoingMessage",
    "Signer",
    "Topics",
    "catalog_key",
    "ensure_topics",
    "open_envelope",
    "seal",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topics:
    """Topic names under one prefix (``allmende`` unless several clusters share a Kafka)."""

    prefix: str = "allmende"

    @property
    def catalog(self) -> str:
        return f"{self.prefix}.catalog"

    @property
    def trust(self) -> str:
        return f"{self.prefix}.trust"

    @property
    def keys(self) -> str:
        return f"{self.prefix}.keys"

    @property
    def policy(self) -> str:
        """Signed policy bundles: the cluster's baseline (by the CA) and each owner's rules."""
        return f"{self.prefix}.policy"

    @property
    def decisions(self) -> str:
        """Every owner's audit entries, one signed DecisionRecord each."""
        return f"{self.prefix}.decisions"

    def records(self, owner: str, dataset: str) -> str:
        return f"{self.prefix}.records.{owner}.{dataset}"


def catalog_key(owner: str, dataset: str) -> bytes:
    return f"{owner}/{dataset}".encode()


def seal(
    author: str,
    cluster: str,
    payload: Message,
    created_at: Timestamp | None = None,
    signer: Signer | None = None,
) -> bytes:
    """Wrap ``payload`` in an Envelope naming its author and type, signed by ``signer``.

    Returns the wire bytes. Raises IdentityError if the signer is not the author.
    """
    env = backbone_pb2.Envelope(
        author=author,
        cluster=cluster,
        payload_type=payload.DESCRIPTOR.full_name,
        payload=payload.SerializeToString(deterministic=True),
    )
    if created_at is not None:
        env.created_at.CopyFrom(created_at)
    else:
        env.created_at.GetCurrentTime()
    if signer is not None:
        signer.sign(env)
    return env.SerializeToString(deterministic=True)


def open_envelope(raw: bytes, expected: type[Message]) -> tuple[backbone_pb2.Envelope, Any]:
    """Decode an Envelope and its payload of type ``expected``.

    Raises BackboneError naming what is wrong (not an envelope, wrong payload type, bad payload).
    """
    env = backbone_pb2.Envelope()
    try:
        env.ParseFromString(raw)
    except DecodeError as exc:
        raise BackboneError(f"message is not an allmende envelope: {exc}") from exc
    want = expected.DESCRIPTOR.full_name
    if env.payload_type != want:
        raise BackboneError(f"envelope carries {env.payload_type or 'nothing'}, expected {want}")
    if not env.author:
        raise BackboneError("envelope names no author")
    payload = expected()
    try:
        payload.ParseFromString(env.payload)
    except DecodeError as exc:
        raise BackboneError(f"envelope payload is not a valid {want}: {exc}") from exc
    return env, payload


def ensure_topics(config: BackboneConfig, names: Iterable[str]) -> None:
    """Create the named topics (one partition each) where missing; raises BackboneError."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    wanted = sorted(set(names))
    try:
        admin = KafkaAdminClient(
            **config.kafka_options(), request_timeout_ms=5000, bootstrap_timeout_ms=5000
        )
    except (KafkaError, OSError) as exc:
        raise BackboneError(
            f"cannot reach the backbone at {','.join(config.bootstrap_servers)}: {exc}"
        ) from exc
    try:
        missing = [t for t in wanted if t not in set(admin.list_topics())]
        if missing:
            # Another node may create it between our list and our create.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(t, 1, 1) for t in missing])
    except KafkaError as exc:
        raise BackboneError(f"cannot create topics {missing}: {exc}") from exc
    finally:
        admin.close()


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: bytes
    value: bytes


class BackboneProducer:
    """A kafka-python producer that sends a batch and waits for every acknowledgement."""

    def __init__(self, config: BackboneConfig, *, timeout_s: float = 5.0) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.timeout_s = timeout_s
        try:
            self._producer = KafkaProducer(
                **config.kafka_options(),
                acks="all",
                linger_ms=2,
                max_block_ms=int(timeout_s * 1000),
                request_timeout_ms=int(timeout_s * 1000),
                # kafka-python otherwise blocks 30 s in the constructor when no broker answers
                bootstrap_timeout_ms=int(timeout_s * 1000),
                retries=2,
            )
        except (KafkaError, OSError) as exc:
            raise BackboneError(
                f"cannot reach the backbone at {','.join(config.bootstrap_servers)}: {exc}"
            ) from exc

    def send_all(self, messages: Sequence[OutgoingMessage]) -> None:
        """Send ``messages`` in order and wait until the broker acknowledged all of them.

        Raises BackboneError if any was not acknowledged; the caller keeps them to retry.
        """
        from kafka.errors import KafkaError

        try:
            futures = [self._producer.send(m.topic, key=m.key, value=m.value) for m in messages]
            self._producer.flush(self.timeout_s)
            for f in futures:
                f.get(timeout=self.timeout_s)
        except (KafkaError, OSError) as exc:
            raise BackboneError(f"the backbone did not acknowledge a batch: {exc}") from exc

    def close(self) -> None:
        """Close within about two seconds, also while the backbone is down. What was not
        acknowledged by then is dropped here (send_all raised for it; its caller keeps it)."""
        try:
            self._producer.close(timeout=1)
            return
        except Exception as exc:  # closing a producer to a dead broker may raise anything
            log.debug("closing producer: %s", exc)
        # kafka-python's close gives up when its flush times out and leaves its network
        # thread running (reconnecting for ever): stop that thread without sending, which
        # fails what is pending, and close again.
        sender = getattr(self._producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(1)
        with contextlib.suppress(Exception):
            self._producer.close(timeout=0)
