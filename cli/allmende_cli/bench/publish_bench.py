"""Publishing: the node's batch builder (serialise + sign) and BackboneProducer against a raw
kafka-python producer sending the same bytes, both to an embedded tansu broker."""

from __future__ import annotations

import asyncio
import json

from google.protobuf.timestamp_pb2 import Timestamp

from allmende.backbone import BackboneProducer, OutgoingMessage, Topics, ensure_topics
from allmende.broker import EmbeddedBroker
from allmende.config import BackboneConfig
from allmende.signing import MemberSigner
from allmende.v1 import backbone_pb2, catalog_pb2, query_pb2
from allmende_node.record_batches import batch_messages

from .measure import Row, alternating_rates
from .town import OWNER, BenchTown

__all__ = ["run_publish_benchmark"]

TARGET = 0.5
DATASET = "parking-sites"


def _changes(n: int) -> list[backbone_pb2.RecordChange]:
    now = Timestamp()
    now.GetCurrentTime()
    out = []
    for i in range(1, n + 1):
        rid = f"p-{i:06d}"
        record = {
            "id": rid,
            "name": f"Parkhaus {i}",
            "capacity": 100 + i % 900,
            "district": "Innenstadt" if i % 2 else "West",
            "geometry": {"type": "Point", "coordinates": [7.76 + i / 1e5, 49.44]},
        }
        out.append(
            backbone_pb2.RecordChange(
                owner=OWNER,
                dataset=DATASET,
                kind=query_pb2.CHANGE_KIND_UPSERT,
                record_id=rid,
                json=json.dumps(record, separators=(",", ":")),
                sequence=i,
                changed_at=now,
                dataset_version=1,
            )
        )
    return out


def run_publish_benchmark(town: BenchTown, n: int, seconds: float) -> list[Row]:
    from kafka import KafkaProducer

    keys = town.config.node.keys
    assert keys is not None, "the bench town has member keys"
    signer = MemberSigner.from_file(OWNER, keys.signing_key)
    cluster = town.config.gateway.cluster
    desc = catalog_pb2.DatasetDescriptor(
        id=DATASET, owner=OWNER, classification=catalog_pb2.CLASSIFICATION_OPEN, version=1
    )
    changes = _changes(n)
    topics = Topics("bench")
    broker = EmbeddedBroker().start()
    ours_producer: BackboneProducer | None = None
    raw = None
    try:
        config = BackboneConfig(bootstrap_servers=(broker.bootstrap,), topic_prefix="bench")
        topic = topics.records(OWNER, DATASET)
        ensure_topics(config, [topic])
        ours_producer = BackboneProducer(config)
        raw = KafkaProducer(
            bootstrap_servers=[broker.bootstrap], acks="all", linger_ms=2, retries=2
        )
        sample: list[OutgoingMessage] = []

        def ours_step() -> None:
            created = Timestamp()
            created.GetCurrentTime()
            messages = batch_messages(
                OWNER,
                cluster,
                topics,
                desc,
                changes,
                signer=signer,
                data_key=None,
                created_at=created,
            )
            assert ours_producer is not None
            ours_producer.send_all(messages)
            if not sample:
                sample.extend(messages)

        ours_step()
        payload = [(m.key, m.value) for m in sample]

        def raw_step() -> None:
            assert raw is not None
            futures = [raw.send(topic, key=k, value=v) for k, v in payload]
            raw.flush(5)
            for f in futures:
                f.get(timeout=5)

        async def ours_call() -> None:
            ours_step()

        async def raw_call() -> None:
            raw_step()

        ours, base = asyncio.run(alternating_rates(ours_call, raw_call, n, seconds))
    finally:
        if ours_producer is not None:
            ours_producer.close()
        if raw is not None:
            raw.close(timeout=1)
        broker.stop()
    ratio = ours / base
    size = sum(len(v) for _, v in payload)
    return [
        Row(
            what=f"publish {n:,} changes",
            ours=ours,
            baseline=base,
            unit="rec/s",
            ratio=ratio,
            target=f">= {TARGET:.2f}x",
            ok=ratio >= TARGET,
            note=(
                f"build + sign {len(payload)} RecordBatch(es) + BackboneProducer vs raw "
                f"kafka-python sending the same {size:,} bytes (open dataset, tansu)"
            ),
        )
    ]
