"""The narrated tour of `allmende demo`: every step is a real call through real gateways."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Container, Iterable
from pathlib import Path

from allmende.errors import AllmendeError, PolicyDenied
from allmende.v1 import query_pb2
from allmende_cli.demo_federation import DemoFederation
from allmende_cli.demo_steward import (
    Answered,
    aggregate_only,
    audit_trail,
    explain_answers,
    signed_bundles,
)
from allmende_cli.tables import render_table

__all__ = ["run_tour"]

_CLASSES = {1: "open", 2: "internal", 3: "restricted"}


def _rows(
    records: Iterable[query_pb2.Record], columns: list[str], masked: Container[str] = ()
) -> list[list[object]]:
    parsed = [json.loads(r.json) for r in records]
    return [["[redacted]" if c in masked else row.get(c) for c in columns] for row in parsed]


def run_tour(fed: DemoFederation, say: Callable[[str], None] = print) -> None:
    """Print each step of the tour; raises AllmendeError if a step does not behave as told."""

    def step(n: int, title: str) -> None:
        say(f"\n── {n}. {title} " + "─" * max(0, 66 - len(title)))

    answers: list[Answered] = []  # what the owner's gateway answered, for step 9 to explain

    step(1, "The federated catalog, as each town's gateway shows it")
    for member, service in (
        ("kaiserslautern", "open-data-portal"),
        ("pirmasens", "traffic-dashboard"),
        ("sankt-wendel", "research-app"),
        ("luzern", "city-app"),
    ):
        with fed.client(member, service) as c:
            datasets = c.list_datasets()
        say(f"{member} ({fed.towns[member].cluster}) sees {len(datasets)} dataset(s):")
        say(
            render_table(
                ["dataset", "classification", "records", "source"],
                [
                    (f"{d.owner}/{d.id}", _CLASSES[d.classification], d.record_count, d.source)
                    for d in datasets
                ],
            )
        )

    step(2, "Allowed: Pirmasens' traffic dashboard queries Kaiserslautern's car parks")
    say("pirmasens/traffic-dashboard → pirmasens gateway → kaiserslautern gateway (mTLS, Rego)")
    say("  query kaiserslautern/parking-sites  purpose=traffic-planning  where capacity >= 700")
    with fed.client("pirmasens", "traffic-dashboard") as c:
        page = c.query(
            "kaiserslautern",
            "parking-sites",
            "traffic-planning",
            fields=["name", "capacity", "type"],
            where=["capacity>=700"],
        )
    say(
        render_table(
            ["name", "capacity", "type"], _rows(page.records, ["name", "capacity", "type"])
        )
    )
    say(f"  decision: {'; '.join(page.decision.reasons)}")

    step(3, "Masked: the same dashboard reads Kaiserslautern's internal parking permits")
    say(
        "  agreement ka-ps-permits-2026 grants Pirmasens traffic-planning, holder and plate redacted"
    )
    with fed.client("pirmasens", "traffic-dashboard") as c:
        page = c.query("kaiserslautern", "parking-permits", "traffic-planning", page_size=5)
    answers.append(
        Answered.allowed_by(
            3, "pirmasens", "traffic-dashboard", "traffic-planning", "query", page.decision
        )
    )
    cols = ["permit_id", "holder", "plate", "district", "zone"]
    say(render_table(cols, _rows(page.records, cols, page.decision.masked_fields)))
    say(f"  masked by the owner's gateway: {dict(page.decision.masked_fields)}")
    with fed.client("sankt-wendel", "research-app") as c:
        page = c.query("kaiserslautern", "parking-permits", "research", page_size=5)
    say("  Sankt Wendel's research app, under ka-wnd-permits-2026 (row filter + mask):")
    say(render_table(cols, _rows(page.records, cols, page.decision.masked_fields)))
    say(
        f"  row filter added by the policy: {page.decision.row_filter_json}; "
        f"masked: {dict(page.decision.masked_fields)}"
    )

    step(4, "Denied, with the reason: Sankt Wendel asks the permits for marketing")
    with fed.client("sankt-wendel", "research-app") as c:
        try:
            c.query("kaiserslautern", "parking-permits", "marketing")
            raise AllmendeError("the marketing query should have been denied")
        except PolicyDenied as err:
            say(f"  PERMISSION_DENIED by {err.owner}'s policy {err.policy_version}:")
            for reason in err.reasons:
                say(f"    - {reason}")
            answers.append(
                Answered.denied_by(4, "sankt-wendel", "research-app", "marketing", "query", err)
            )

    step(5, "Luzern (cluster zentralschweiz, not a member of suedwest) is refused")
    with fed.client("luzern", "city-app") as c:
        try:
            c.query("kaiserslautern", "parking-sites", "tourism")
            raise AllmendeError("Luzern's query should have been refused")
        except PolicyDenied as err:
            say("  luzern/city-app → luzern gateway → kaiserslautern gateway:")
            for reason in err.reasons:
                say(f"    - {reason}")

    step(6, "A live subscription receives changes published at the owner")
    _live_subscription(fed, say)

    step(7, "Trust on the shared backbone: ciphertext, signatures, revocation")
    _trust(fed, say)

    step(8, "Aggregate-only: statistics without single records")
    answers.append(aggregate_only(fed, say))

    step(9, "Explain: why was that allowed, masked or refused")
    explain_answers(fed, answers, say)

    step(10, "Audit: who accessed Kaiserslautern's data")
    audit_trail(fed, say)

    step(11, "Signed policy bundles: a steward's change goes live, no restart")
    signed_bundles(fed, say)


def _live_subscription(fed: DemoFederation, say: Callable[[str], None]) -> None:
    events: queue.Queue[object] = queue.Queue()
    client = fed.client("pirmasens", "traffic-dashboard")
    stream = client.subscribe(
        "kaiserslautern", "parking-sites", "traffic-planning", start=query_pb2.START_FROM_LIVE
    )

    def pump() -> None:
        try:
            for event in stream:
                events.put(event)
        except AllmendeError as err:
            events.put(err)

    threading.Thread(target=pump, daemon=True).start()
    first = events.get(timeout=10)
    if isinstance(first, Exception):
        raise first
    say("  pirmasens/traffic-dashboard subscribed to kaiserslautern/parking-sites (live)")
    kl = fed.towns["kaiserslautern"]
    assert kl.node is not None
    path = kl.dir / "data" / "parking-sites.geojson"
    doc = json.loads(path.read_text(encoding="utf-8"))
    changed, removed = doc["features"][0], doc["features"].pop()
    changed["properties"]["capacity"] += 25
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    say(
        f"  Kaiserslautern edits its file: {changed['properties']['name']} capacity → "
        f"{changed['properties']['capacity']}, removes {removed['properties']['name']}"
    )
    result = kl.node.import_now("parking-sites")
    if result.upserts or result.deletes:
        say(
            f"  its node re-imports: version {result.version}, "
            f"{result.upserts} upsert, {result.deletes} delete"
        )
    else:  # its file watcher was quicker
        say(f"  its node has re-imported the file: version {result.version}")
    seen: list[str] = []
    deadline = time.monotonic() + 15
    while len(seen) < 2 and time.monotonic() < deadline:
        try:
            event = events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if isinstance(event, Exception):
            raise event
        assert isinstance(event, query_pb2.ChangeEvent)
        kind = query_pb2.ChangeKind.Name(event.kind).removeprefix("CHANGE_KIND_").lower()
        body = json.loads(event.record.json) if event.record.json else {}
        detail = f"{body.get('name')} capacity={body.get('capacity')}" if body else ""
        say(f"  ← {kind:<6} {event.record.id}  {detail}")
        seen.append(kind)
    stream.cancel()
    client.close()
    if sorted(seen) != ["delete", "upsert"]:
        raise AllmendeError(f"the subscription received {seen}, expected an upsert and a delete")


def keep_running_help(fed: DemoFederation) -> str:
    """How to talk to the running demo from another terminal."""
    ps = fed.towns["pirmasens"]
    profile = ps.profile("traffic-dashboard")
    kl = fed.towns["kaiserslautern"].config.gateway
    kl_town = fed.towns["kaiserslautern"].dir / "town.toml"
    certs = Path(profile).parent / "certs"
    return "\n".join(
        [
            "",
            "The federation keeps running (Ctrl-C stops it). From another terminal:",
            f"  .venv/bin/allmende catalog --profile {profile}",
            f"  .venv/bin/allmende query --profile {profile} kaiserslautern/parking-sites "
            "--purpose traffic-planning --where 'capacity>=500' --fields name,capacity",
            f"  .venv/bin/allmende subscribe --profile {profile} kaiserslautern/parking-sites "
            "--purpose traffic-planning --live",
            "With grpcurl (reflection and health are on):",
            f"  .venv/bin/grpcurl -cacert {kl.tls.ca} -cert {certs}/pirmasens-traffic-dashboard.pem "
            f"-key {certs}/pirmasens-traffic-dashboard-key.pem -servername pirmasens.suedwest.allmende "
            f"{ps.config.gateway.listen} list",
            f"  .venv/bin/grpcurl -cacert {kl.tls.ca} -cert {certs}/pirmasens-traffic-dashboard.pem "
            f"-key {certs}/pirmasens-traffic-dashboard-key.pem -servername pirmasens.suedwest.allmende "
            '-d \'{"owner":"kaiserslautern","dataset":"parking-sites","purpose":"traffic-planning",'
            f'"page_size":3}}\' {ps.config.gateway.listen} allmende.v1.QueryService/Query',
            "As Kaiserslautern's data steward:",
            f"  .venv/bin/allmende policy explain --config {kl_town} --as pirmasens "
            "--dataset kaiserslautern/parking-permits --purpose statistics --action aggregate",
            f"  .venv/bin/allmende audit report --config {kl_town} --dataset parking-permits",
            f"  .venv/bin/allmende audit verify --config {kl_town}",
            f"  .venv/bin/allmende policy versions --config {kl_town}",
            f"Town files (configs, certificates, stores) are under {fed.workdir}.",
        ]
    )


def _raw_topic_bytes(bootstrap: str, topic: str) -> list[bytes]:
    """Every message value on ``topic``, read as the backbone operator could."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
        bootstrap_timeout_ms=5000,
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        return [m.value for m in consumer]
    finally:
        consumer.close()


def _trust(fed: DemoFederation, say: Callable[[str], None]) -> None:
    from allmende.backbone import Topics
    from allmende.ca import publish_registry
    from allmende.errors import PolicyDenied

    kl = fed.towns["kaiserslautern"]
    backbone = kl.config.node.backbone
    topic = Topics(backbone.topic_prefix).records("kaiserslautern", "parking-permits")
    raw = b"".join(_raw_topic_bytes(backbone.bootstrap_servers[0], topic))
    csv = (kl.dir / "data" / "parking-permits.csv").read_text(encoding="utf-8").splitlines()[1:]
    plates = [line.split(",")[2] for line in csv]
    found = sum(p.encode() in raw for p in plates)
    say(
        f"  {topic}: {len(raw)} bytes on the backbone; "
        f"{found} of {len(plates)} plates readable in them (encrypted, signed batches)"
    )
    say("  no member holds the permits' data key: every agreement masks fields, so Pirmasens")
    say("  and Sankt Wendel read through Kaiserslautern's gateway only (replicate: false)")
    with fed.client("sankt-wendel", "research-app") as c:
        before = len(c.query("kaiserslautern", "parking-permits", "research").records)
    ca = fed.cas["suedwest"]
    ca.revoke("sankt-wendel", "demo: membership ended")
    publish_registry(ca, backbone, ["sankt-wendel"])
    say(f"  Sankt Wendel's research app read {before} permits; the CA now revokes Sankt Wendel")
    started = time.monotonic()
    with fed.client("sankt-wendel", "research-app") as c:
        while True:
            try:
                c.query("kaiserslautern", "parking-permits", "research")
            except PolicyDenied as err:
                say(
                    f"  refused {time.monotonic() - started:.1f} s later, without a restart: "
                    f"{'; '.join(err.reasons)}"
                )
                break
            except AllmendeError as err:  # MEMBER_REVOKED arrives as a gateway error
                say(f"  refused {time.monotonic() - started:.1f} s later, without a restart: {err}")
                break
            if time.monotonic() - started > 10:
                raise AllmendeError("the revocation did not take effect within 10 s")
            time.sleep(0.1)
