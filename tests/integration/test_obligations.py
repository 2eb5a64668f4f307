"""The owner's obligations enforced by real gateways over mutual TLS: masks, row filters,
aggregate-only grants, quotas and the audit of every decision.

The owner decides with a real Rego policy (regorus) whose decision document depends on the
purpose asked for, so one gateway can hand out every kind of obligation. Consumers ask
through their own town's gateway, which forwards to the owner's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

import allmende_gateway.server as gateway_server
from allmende.ca import CertificateAuthority
from allmende.client import GatewayClient
from allmende.config import load_town_config
from allmende.errors import (
    AuditUnavailable,
    InvalidRequest,
    PolicyDenied,
    QuotaExceeded,
)
from allmende.identity import gateway_server_name
from allmende.policy import PolicyEngine
from allmende.v1 import query_pb2
from allmende_gateway import GatewayThread
from allmende_gateway.masks import mask_key
from allmende_gateway.serving import OwnerService
from allmende_node.importer import import_configured

from .subscriptions import first_event_or_error_from, subscribe_all_from
from .towns import PARKING, Town, make_town

pytestmark = pytest.mark.integration

# The town's own policy loader (the module fixture replaces it while its owner gateway starts).
REAL_LOAD_POLICY = gateway_server.load_policy

OWNER = "kaiserslautern"
SITES = "parking-sites"
PERMITS = "parking-permits"


def _allow(agreement: str, **obligations: Any) -> dict[str, Any]:
    return {
        "allow": True,
        "reasons": [f"agreement {agreement} grants it"],
        "policy_version": "obligations-v1",
        "mask": {},
        "row_filter": {},
        "max_rows": 1000,
        "way_in": "agreement",
        "agreements": [agreement],
        **obligations,
    }


MASKS = {
    "name": "hash:ka-masks",
    "capacity": "bucket:500",
    "geom": "coarsen:1",
    "district": "redact",
}
ROW_FILTERS = {
    "eq": ({"capacity": {"eq": 300}}, ["p-03"]),
    "ne": ({"district": {"ne": "West"}}, ["p-01", "p-03", "p-05", "p-07", "p-09", "p-11"]),
    "lt": ({"capacity": {"lt": 300}}, ["p-01", "p-02"]),
    "le": ({"capacity": {"le": 300}}, ["p-01", "p-02", "p-03"]),
    "gt": ({"capacity": {"gt": 1000}}, ["p-11", "p-12"]),
    "ge": ({"capacity": {"ge": 1000}}, ["p-10", "p-11", "p-12"]),
    "in": ({"capacity": {"in": [100, 1200]}}, ["p-01", "p-12"]),
}
DECISIONS: dict[str, dict[str, Any]] = {
    "plain": _allow("ka-plain"),
    "masks": _allow("ka-masks", mask=MASKS),
    "stats": _allow("ka-stats", min_group_size=8, mask={"holder": "redact"}),
    "quota": _allow("ka-quota", requests_per_minute=2),
    "few": _allow("ka-few", max_rows=3),
    "quota-mixed": _allow("ka-quota-mixed", requests_per_minute=3),
    **{f"rf-{op}": _allow(f"ka-rf-{op}", row_filter=rf) for op, (rf, _) in ROW_FILTERS.items()},
}


def obligations_policy() -> PolicyEngine:
    """A real Rego policy: the decision document for each purpose; anything else is denied."""
    source = (
        "package allmende.decision\n\nimport rego.v1\n\n"
        f"decisions := {json.dumps(DECISIONS, sort_keys=True, indent=1)}\n\n"
        "decision := decisions[input.request.purpose]\n"
    )
    return PolicyEngine({"obligations.rego": source})


class RecordingSink:
    """Keeps every audit record, as the real log would write it."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, record: Mapping[str, Any]) -> object:
        self.records.append(json.loads(json.dumps(record)))
        return len(self.records)


class FailingSink:
    """An audit log on a full disk."""

    def append(self, record: Mapping[str, Any]) -> object:
        raise AuditUnavailable("audit log /dev/full cannot be written: [Errno 28] No space left")


@dataclass
class SwitchSink:
    """The owner gateway's auditor; each test puts the sink it needs in ``current``."""

    current: RecordingSink | FailingSink | None = None

    def append(self, record: Mapping[str, Any]) -> object:
        return None if self.current is None else self.current.append(record)


@dataclass
class Towns:
    ca: CertificateAuthority
    kl: Town
    ps: Town
    sink: SwitchSink
    gateways: dict[str, GatewayThread] = field(default_factory=dict)

    def client(self) -> GatewayClient:
        """Pirmasens' traffic dashboard, talking to its own town's gateway."""
        return self.ps.client(self.ca, "traffic-dashboard")


@pytest.fixture(scope="module")
def towns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Towns]:
    root = tmp_path_factory.mktemp("obligations")
    ca = CertificateAuthority.init(root / "ca", "suedwest")
    kl = make_town(root, ca, ca.cert_path, OWNER, datasets=True)
    ps = make_town(
        root, ca, ca.cert_path, "pirmasens", peers={OWNER: (kl.config.gateway.listen, "suedwest")}
    )
    sink = SwitchSink()
    made = Towns(ca, kl, ps, sink)
    with pytest.MonkeyPatch.context() as mp:
        # The policy and the audit sink the owner's gateway is built with (server.py loads
        # the town's policy and passes the real AuditLog; these replace them for the test).
        # regorus' VM is bound to the thread that made it, so the policy is built where the
        # gateway loads its own: on its event loop. The hash masks' key is the town's own.
        mp.setattr(gateway_server, "load_policy", lambda config: obligations_policy())
        mp.setattr(
            gateway_server,
            "OwnerService",
            lambda *a, **kw: OwnerService(*a, **{**kw, "auditor": sink}),
        )
        try:
            made.gateways[OWNER] = GatewayThread(kl.config.gateway).start()
            made.gateways["pirmasens"] = GatewayThread(ps.config.gateway).start()
            yield made
        finally:
            for g in made.gateways.values():
                g.stop()


def rows(page: query_pb2.QueryResponse) -> dict[str, dict]:
    return {r.id: json.loads(r.json) for r in page.records}


def subscribe_all(client: GatewayClient, dataset: str, purpose: str, n: int, **kw: Any) -> list:
    """The first ``n`` change events after the greeting; asserts no more arrive."""
    return subscribe_all_from(client, OWNER, dataset, purpose, n, **kw)


def first_event_or_error(client: GatewayClient, dataset: str, purpose: str, **kw: Any) -> Any:
    return first_event_or_error_from(client, OWNER, dataset, purpose, **kw)


def expected_hash(town: Town, agreement: str, value: Any) -> str:
    """The contract's hash, computed here from the owner's signing key file."""
    assert town.config.gateway.keys is not None
    pem = town.config.gateway.keys.signing_key.read_bytes()
    raw = serialization.load_pem_private_key(pem, None).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    salt = hmac.new(raw, b"allmende mask salt v1\0" + agreement.encode(), hashlib.sha256).digest()
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(salt, text.encode(), hashlib.sha256).hexdigest()


# -- masks ------------------------------------------------------------------------------------


def test_every_mask_applies_to_query_and_subscribe(towns: Towns) -> None:
    with towns.client() as c:
        page = c.query(OWNER, SITES, "masks", page_size=100)
        events = subscribe_all(c, SITES, "masks", len(PARKING["features"]))
    got = rows(page)
    assert len(got) == len(PARKING["features"])
    features: list[dict[str, Any]] = PARKING["features"]  # type: ignore[assignment]
    for feature in features:
        props = feature["properties"]
        lon = round(feature["geometry"]["coordinates"][0], 1)
        assert got[props["id"]] == {
            "id": props["id"],
            "name": expected_hash(towns.kl, "ka-masks", props["name"]),
            "capacity": props["capacity"] // 500 * 500,
            "geom": {"type": "Point", "coordinates": [lon, 49.4]},
            "district": None,
        }
    assert dict(page.decision.masked_fields) == MASKS
    assert list(page.decision.agreements) == ["ka-masks"]
    assert page.decision.way_in == "agreement"
    # The stream shows every record exactly as the query does, and says how it is masked.
    assert dict(events[0].decision.masked_fields) == MASKS
    assert {e.record.id: json.loads(e.record.json) for e in events[1:]} == got


def test_the_hash_key_is_the_signing_key_or_else_the_tls_key(towns: Towns) -> None:
    config = towns.kl.config.gateway
    assert config.keys is not None
    pem = config.keys.signing_key.read_bytes()
    raw = serialization.load_pem_private_key(pem, None).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert mask_key(config) == raw
    assert mask_key(dataclasses.replace(config, keys=None)) == config.tls.key.read_bytes()


def test_masked_fields_cannot_be_filtered_grouped_or_measured(towns: Towns) -> None:
    with towns.client() as c:
        with pytest.raises(PolicyDenied, match=r"'capacity' is masked .* in a filter"):
            c.query(OWNER, SITES, "masks", where=["capacity>=500"])
        with pytest.raises(PolicyDenied, match=r"'district' is masked .* in a group_by"):
            c.aggregate(OWNER, SITES, "masks", group_by=["district"])
        with pytest.raises(PolicyDenied, match=r"'capacity' is masked .* in a measure"):
            c.aggregate(OWNER, SITES, "masks", measures=["avg:capacity"])
        refused = first_event_or_error(c, SITES, "masks", where=["capacity>=500"])
        assert isinstance(refused, PolicyDenied)
        assert any("'capacity' is masked" in r for r in refused.reasons)


# -- row filters ------------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(ROW_FILTERS))
def test_row_filter_operators_on_query_and_subscribe(towns: Towns, op: str) -> None:
    _, expected = ROW_FILTERS[op]
    purpose = f"rf-{op}"
    with towns.client() as c:
        assert sorted(rows(c.query(OWNER, SITES, purpose, page_size=100))) == expected
        # A caller's filter narrows the grant but never widens it.
        widened = c.query(OWNER, SITES, purpose, where=["capacity>=0"], page_size=100)
        assert sorted(rows(widened)) == expected
        narrowed = c.query(OWNER, SITES, purpose, where=[f"id={expected[-1]}"])
        assert sorted(rows(narrowed)) == expected[-1:]
        outside = c.query(OWNER, SITES, purpose, where=["id in p-04,p-06,p-08"])
        assert sorted(rows(outside)) == [i for i in ("p-04", "p-06", "p-08") if i in expected]
        events = subscribe_all(c, SITES, purpose, len(expected), where=["capacity>=0"])
        assert sorted(e.record.id for e in events[1:]) == expected
        assert json.loads(events[0].decision.row_filter_json) == ROW_FILTERS[op][0]
        counted = c.aggregate(OWNER, SITES, purpose, where=["capacity>=0"])
        assert [json.loads(g) for g in counted.groups] == [{"count": len(expected)}]


# -- aggregates -------------------------------------------------------------------------------


def test_aggregate_groups_through_the_consumers_gateway(towns: Towns) -> None:
    with towns.client() as c:
        resp = c.aggregate(
            OWNER,
            SITES,
            "plain",
            group_by=["district"],
            measures=["count", "sum:capacity", "avg:capacity", "min:capacity", "max:capacity"],
        )
        filtered = c.aggregate(OWNER, SITES, "plain", measures=["count"], where=["capacity>600"])
        # max_rows caps the groups too, and says so.
        few = c.aggregate(OWNER, SITES, "few", group_by=["id"], measures=["count"])
    assert (len(few.groups), few.truncated, resp.truncated) == (3, True, False)
    assert [json.loads(g) for g in resp.groups] == [
        {
            "district": "Innenstadt",
            "count": 6,
            "sum_capacity": 3600,
            "avg_capacity": 600.0,
            "min_capacity": 100,
            "max_capacity": 1100,
        },
        {
            "district": "West",
            "count": 6,
            "sum_capacity": 4200,
            "avg_capacity": 700.0,
            "min_capacity": 200,
            "max_capacity": 1200,
        },
    ]
    assert resp.groups[0] == json.dumps(json.loads(resp.groups[0]), sort_keys=True).replace(
        ", ", ","
    ).replace(": ", ":")
    assert resp.suppressed_groups == 0 and list(resp.decision.agreements) == ["ka-plain"]
    assert [json.loads(g) for g in filtered.groups] == [{"count": 6}]


def test_bad_aggregates_are_invalid_arguments_naming_the_field(towns: Towns) -> None:
    m = query_pb2.Measure
    cases = [
        ({"group_by": ["colour"]}, "colour"),
        ({"measures": ["sum:district"]}, "district"),
        ({"measures": []}, "measures"),
        ({"measures": ["count", m(function=query_pb2.AGGREGATE_FUNCTION_COUNT)]}, "count"),
        ({"group_by": ["geom"]}, "geom"),
    ]
    with towns.client() as c:
        for kwargs, name in cases:
            with pytest.raises(InvalidRequest) as err:
                c.aggregate(OWNER, SITES, "plain", **kwargs)  # type: ignore[arg-type]
            assert err.value.field == name, kwargs
            assert isinstance(err.value.__cause__, grpc.RpcError)
            assert err.value.__cause__.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_aggregate_only_grant(towns: Towns) -> None:
    reason = (
        "agreement ka-stats grants pirmasens aggregates only (groups of at least 8 records): "
        "use Aggregate"
    )
    with towns.client() as c:
        with pytest.raises(PolicyDenied) as err:
            c.query(OWNER, PERMITS, "stats")
        assert err.value.reasons == [reason]
        refused = first_event_or_error(c, PERMITS, "stats")
        assert isinstance(refused, PolicyDenied) and refused.reasons == [reason]
        with pytest.raises(PolicyDenied, match="counts, sums and averages only"):
            c.aggregate(OWNER, SITES, "stats", measures=["count", "max:capacity"])
        # Zones: Z1 and Z2 hold 8 permits each, Z0 and Z3 hold 7.
        resp = c.aggregate(OWNER, PERMITS, "stats", group_by=["zone"])
        assert [json.loads(g) for g in resp.groups] == [
            {"zone": "Z1", "count": 8},
            {"zone": "Z2", "count": 8},
        ]
        assert resp.suppressed_groups == 2 and resp.decision.min_group_size == 8
        # Not even the count of a small group leaks when COUNT is not asked for.
        one = c.aggregate(OWNER, PERMITS, "stats", group_by=["permit_id"])
        assert list(one.groups) == [] and one.suppressed_groups == 30


# -- quotas -----------------------------------------------------------------------------------


def test_quota_per_minute_through_forwarding(towns: Towns) -> None:
    sink = towns.sink.current = RecordingSink()
    try:
        with towns.client() as c:
            c.query(OWNER, SITES, "quota", page_size=1)
            c.query(OWNER, SITES, "quota", page_size=1)
            with pytest.raises(QuotaExceeded) as err:
                c.query(OWNER, SITES, "quota", page_size=1)
    finally:
        towns.sink.current = None
    assert err.value.agreements == ["ka-quota"] and err.value.per_minute == 2
    assert err.value.member == "pirmasens"
    assert 50 < err.value.retry_after_s <= 60
    assert isinstance(err.value.__cause__, grpc.RpcError)
    assert err.value.__cause__.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The refusal is a decision too, and audited as one.
    assert [r["allow"] for r in sink.records] == [True, True, False]
    assert sink.records[2]["reasons"][0].startswith(
        "quota exceeded: ka-quota allows pirmasens 2 request(s) per minute"
    )
    assert sink.records[2]["agreements"] == ["ka-quota"]


def test_aggregates_and_subscription_opens_count_too(towns: Towns) -> None:
    with towns.client() as c:
        c.aggregate(OWNER, SITES, "quota-mixed")
        assert first_event_or_error(c, SITES, "quota-mixed").decision.requests_per_minute == 3
        c.query(OWNER, SITES, "quota-mixed", page_size=1)
        with pytest.raises(QuotaExceeded):
            c.aggregate(OWNER, SITES, "quota-mixed")
        assert isinstance(first_event_or_error(c, SITES, "quota-mixed"), QuotaExceeded)
        # Another grant of the same member has its own window.
        c.query(OWNER, SITES, "plain", page_size=1)


# -- audit ------------------------------------------------------------------------------------


def test_every_decision_is_audited(towns: Towns) -> None:
    sink = towns.sink.current = RecordingSink()
    try:
        with towns.client() as c:
            c.query(OWNER, SITES, "plain", page_size=5)
            with pytest.raises(PolicyDenied):
                c.query(OWNER, SITES, "marketing")
            with pytest.raises(PolicyDenied):
                c.query(OWNER, SITES, "masks", where=["capacity>=500"])
            c.aggregate(OWNER, SITES, "plain", group_by=["district"])
            subscribe_all(c, SITES, "rf-gt", 2)
        # The stream's end is recorded once the owner's gateway sees the call cancelled.
        for _ in range(200):
            if any(r["event"] == "stream-end" for r in sink.records):
                break
            threading.Event().wait(0.02)
    finally:
        towns.sink.current = None
    query_ok, denied, masked, aggregate, opened = sink.records[:5]
    assert query_ok["subject"] == {
        "member": "pirmasens",
        "cluster": "suedwest",
        "service": "traffic-dashboard",
        "spiffe_id": "spiffe://suedwest/member/pirmasens/service/traffic-dashboard",
    }
    assert query_ok["owner"] == OWNER and query_ok["dataset"] == SITES
    assert (query_ok["action"], query_ok["purpose"], query_ok["allow"]) == ("query", "plain", True)
    assert query_ok["rows"] == 5 and query_ok["event"] == "decision"
    assert query_ok["agreements"] == ["ka-plain"] and query_ok["way_in"] == "agreement"
    assert query_ok["policy_version"] == "obligations-v1"
    assert query_ok["reasons"] == ["agreement ka-plain grants it"]
    req = query_pb2.QueryRequest(owner=OWNER, dataset=SITES, purpose="plain", page_size=5)
    req.filter.SetInParent()
    assert (
        query_ok["request_sha256"]
        == hashlib.sha256(req.SerializeToString(deterministic=True)).hexdigest()
    )
    assert query_ok["input"]["request"] == {"purpose": "plain", "fields": [], "limit": 5}
    assert query_ok["input"]["now"].endswith("+00:00")
    assert query_ok["time"].endswith("+00:00")
    assert (denied["allow"], denied["rows"], denied["purpose"]) == (False, 0, "marketing")
    assert denied["reasons"] == ["policy produced no decision"]
    assert masked["allow"] is False and "masked" in masked["reasons"][0]
    assert masked["agreements"] == ["ka-masks"]
    assert (aggregate["action"], aggregate["rows"]) == ("aggregate", 2)
    assert aggregate["input"]["action"] == "aggregate"
    assert aggregate["input"]["request"]["fields"] == ["district"]
    assert (opened["action"], opened["event"], opened["rows"]) == ("subscribe", "decision", 0)
    ended = [r for r in sink.records if r["event"] == "stream-end"]
    assert len(ended) == 1 and ended[0]["rows"] == 2 and ended[0]["allow"] is True


def test_an_unwritable_audit_log_refuses_every_request(towns: Towns) -> None:
    towns.sink.current = FailingSink()
    try:
        with towns.client() as c:
            for call in (
                lambda: c.query(OWNER, SITES, "plain"),
                lambda: c.query(OWNER, SITES, "marketing"),
                lambda: c.aggregate(OWNER, SITES, "plain"),
            ):
                with pytest.raises(AuditUnavailable, match="/dev/full") as err:
                    call()
                assert isinstance(err.value.__cause__, grpc.RpcError)
                assert err.value.__cause__.code() == grpc.StatusCode.UNAVAILABLE
            # Not even the greeting of a stream leaves.
            first = first_event_or_error(c, SITES, "plain")
            assert isinstance(first, AuditUnavailable)
    finally:
        towns.sink.current = None


# -- the command line -------------------------------------------------------------------------


def test_allmende_aggregate_command(
    towns: Towns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from allmende_cli.main import main

    tls = towns.ps.service_tls(towns.ca, "traffic-dashboard")
    profile = tmp_path / "client.toml"
    profile.write_text(
        "[client]\n"
        f'gateway = "{towns.ps.config.gateway.listen}"\n'
        f'ca = "{tls.ca}"\ncert = "{tls.cert}"\nkey = "{tls.key}"\n'
        f'server_name = "{gateway_server_name("suedwest", "pirmasens")}"\n'
    )
    base = ["aggregate", "--profile", str(profile), f"{OWNER}/{SITES}", "--purpose", "plain"]
    measures = ["--group-by", "district", "--count", "--sum", "capacity", "--avg", "capacity"]
    assert main([*base, *measures, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "groups": [
            {"district": "Innenstadt", "count": 6, "sum_capacity": 3600, "avg_capacity": 600.0},
            {"district": "West", "count": 6, "sum_capacity": 4200, "avg_capacity": 700.0},
        ],
        "suppressed_groups": 0,
    }
    assert main([*base, *measures, "--where", "capacity>=1100"]) == 0
    table = capsys.readouterr()
    assert table.out.splitlines()[0].split() == [
        "district",
        "avg_capacity",
        "count",
        "sum_capacity",
    ]
    assert "Innenstadt" in table.out and "1100" in table.out
    assert "2 group(s); policy obligations-v1" in table.err
    stats = ["aggregate", "--profile", str(profile), f"{OWNER}/{PERMITS}", "--purpose", "stats"]
    assert main([*stats, "--group-by", "zone"]) == 0
    assert "2 group(s) under 8 records left out" in capsys.readouterr().err
    denied = ["aggregate", "--profile", str(profile), f"{OWNER}/{SITES}", "--purpose", "stats"]
    assert main([*denied, "--max", "capacity"]) == 3  # denied: the reasons go to stderr
    assert "counts, sums and averages only" in capsys.readouterr().err


# -- real agreements, through the bundled Rego library ---------------------------------------

ZW_AGREEMENTS = {
    "groups.yaml": "groups:\n  partners: [pirmasens]\n",
    "zw-ps-sites.yaml": (
        "agreement: zw-ps-sites\nprovider: zweibruecken\ndatasets: [parking-sites]\n"
        "consumers: [pirmasens]\npurposes: [traffic-planning]\n"
        "mask:\n  name: hash\n  capacity: {bucket: 500}\n  geom: {coarsen: 1}\n"
        "row_filter:\n  capacity: {ge: 600}\nvalid_from: 2026-01-01\nrequests_per_minute: 4\n"
    ),
    "zw-ps-stats.yaml": (
        "agreement: zw-ps-stats\nprovider: zweibruecken\ndatasets: [parking-permits]\n"
        "consumers: [group:partners]\npurposes: [statistics]\nvalid_from: 2026-01-01\n"
        "aggregate_only: {min_group_size: 8}\n"
    ),
    "zw-ps-old.yaml": (
        "agreement: zw-ps-old\nprovider: zweibruecken\ndatasets: [parking-sites]\n"
        "consumers: [pirmasens]\npurposes: [archive]\nvalid_from: 2025-01-01\n"
        "valid_until: 2026-01-01\n"
    ),
}


def test_obligations_of_real_agreements(
    towns: Towns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "agreements"
    folder.mkdir()
    for name, text in ZW_AGREEMENTS.items():
        (folder / name).write_text(text)
    owner = make_town(tmp_path, towns.ca, towns.ca.cert_path, "zweibruecken", datasets=True)
    # Internal, not open: readers of an open dataset get it as it is, whatever agreements say.
    toml = owner.dir / "town.toml"
    toml.write_text(toml.read_text().replace('"open"', '"internal"'))
    town_config = load_town_config(toml, env={})
    list(import_configured(town_config.node))
    config = dataclasses.replace(town_config.gateway, agreements_dir=folder)
    monkeypatch.setattr(gateway_server, "load_policy", REAL_LOAD_POLICY)
    tls = towns.ps.service_tls(towns.ca, "traffic-dashboard")
    name = gateway_server_name("suedwest", "zweibruecken")
    with GatewayThread(config), GatewayClient(config.listen, tls, server_name=name) as c:
        page = c.query("zweibruecken", SITES, "traffic-planning", page_size=100)
        events = subscribe_all_from(c, "zweibruecken", SITES, "traffic-planning", 7)
        with pytest.raises(PolicyDenied, match="aggregates only"):
            c.query("zweibruecken", PERMITS, "statistics")
        stats = c.aggregate("zweibruecken", PERMITS, "statistics", group_by=["zone"])
        with pytest.raises(PolicyDenied) as expired:
            c.query("zweibruecken", SITES, "archive")
        for _ in range(2):  # with the query and the subscription above: 4 per minute
            c.query("zweibruecken", SITES, "traffic-planning", page_size=1)
        with pytest.raises(QuotaExceeded):
            c.query("zweibruecken", SITES, "traffic-planning", page_size=1)
    got = rows(page)
    assert sorted(got) == [f"p-{i:02d}" for i in range(6, 13)]
    assert got["p-07"]["name"] == expected_hash(owner, "zw-ps-sites", "Parkhaus 7")
    assert got["p-07"]["capacity"] == 500 and got["p-12"]["capacity"] == 1000
    assert got["p-07"]["geom"] == {"type": "Point", "coordinates": [7.8, 49.4]}
    assert dict(page.decision.masked_fields) == {
        "name": "hash:zw-ps-sites",
        "capacity": "bucket:500",
        "geom": "coarsen:1",
    }
    assert page.decision.requests_per_minute == 4
    assert {e.record.id: json.loads(e.record.json) for e in events[1:]} == got
    assert [json.loads(g) for g in stats.groups] == [
        {"zone": "Z1", "count": 8},
        {"zone": "Z2", "count": 8},
    ]
    assert stats.suppressed_groups == 2 and list(stats.decision.agreements) == ["zw-ps-stats"]
    assert "agreement zw-ps-old expired at 2026-01-01T00:00:00+00:00" in expired.value.reasons
