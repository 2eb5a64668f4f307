"""The allmende node: imports a town's files, publishes them, follows catalog, trust and replicas."""

from allmende_node.backbone_link import Backoff
from allmende_node.descriptors import build_descriptor, catalog_message
from allmende_node.follower import CatalogFollower
from allmende_node.importer import (
    ImportResult,
    canonical_json,
    import_dataset,
    import_file,
    withdraw_dataset,
)
from allmende_node.outbox import Outbox, OutboxRow, StoreSource, write_transaction
from allmende_node.publisher import Publisher
from allmende_node.replica_follower import ReplicaFollower, ReplicaSet
from allmende_node.runner import Node
from allmende_node.trust_follower import TrustFollower

__all__ = [
    "Backoff",
    "CatalogFollower",
    "ImportResult",
    "Node",
    "Outbox",
    "OutboxRow",
    "Publisher",
    "ReplicaFollower",
    "ReplicaSet",
    "StoreSource",
    "TrustFollower",
    "build_descriptor",
    "canonical_json",
    "catalog_message",
    "import_dataset",
    "import_file",
    "withdraw_dataset",
    "write_transaction",
]
