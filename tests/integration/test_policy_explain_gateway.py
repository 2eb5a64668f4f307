"""`allmende policy explain` says what a real gateway decides, and `policy diff` replays the
audit log that gateway wrote.

A real owner gateway (mutual TLS, the town's store, its agreements) answers a set of
requests: allowed, masked, filtered, aggregate-only, denied with reasons, expired. For each,
`allmende policy explain --config <the owner's town.toml>` must give the same decision: the
QueryResponse's decision summary for what is allowed, the PERMISSION_DENIED status details
(allmende.v1.Denial) for what is not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from allmende.ca import CertificateAuthority
from allmende.client import GatewayClient
from allmende.errors import PolicyDenied
from allmende.identity import TlsFiles, gateway_server_name
from allmende.v1 import query_pb2
from allmende_cli.main import main
from allmende_gateway import GatewayThread

from .towns import Town, make_town

pytestmark = pytest.mark.integration

KL, SW = "kaiserslautern", "suedwest"
AGREEMENTS = {
    "ka-ps.yaml": """
agreement: ka-ps-permits
provider: kaiserslautern
datasets: [parking-permits]
consumers: [pirmasens]
purposes: [traffic-planning]
mask: {holder: redact, plate: hash}
valid_from: 2026-01-01
valid_until: 2099-01-01
max_rows: 10
requests_per_minute: 1000
""",
    "ka-wnd.yaml": """
agreement: ka-wnd-permits
provider: kaiserslautern
datasets: [parking-permits]
consumers: [sankt-wendel]
purposes: [research]
mask: {plate: redact}
row_filter: {district: {in: [Innenstadt]}}
valid_from: 2026-01-01
valid_until: 2099-01-01
""",
    "ka-zw.yaml": """
agreement: ka-zw-statistics
provider: kaiserslautern
datasets: [parking-permits]
consumers: [zweibruecken]
purposes: [statistics]
aggregate_only: {min_group_size: 5}
valid_from: 2026-01-01
valid_until: 2099-01-01
""",
    "ka-kus.yaml": """
agreement: ka-kus-old
provider: kaiserslautern
datasets: [parking-permits]
consumers: [kusel]
purposes: [research]
valid_from: 2020-01-01
valid_until: 2021-01-01
""",
}


@dataclass
class Setup:
    ca: CertificateAuthority
    kl: Town
    bundle: Path
    root: Path

    def client(self, member: str) -> GatewayClient:
        issued = self.ca.issue(self.root / "certs" / member, member, "explainer")
        tls = TlsFiles(ca=self.bundle, cert=issued.tls.cert, key=issued.tls.key)
        server = gateway_server_name(SW, KL)
        return GatewayClient(self.kl.config.gateway.listen, tls, server_name=server)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("explain")
    ca = CertificateAuthority.init(root / "ca", SW)
    bundle = root / "bundle.pem"
    bundle.write_bytes(ca.cert_path.read_bytes())
    folder = root / "agreements"
    folder.mkdir()
    for name, text in AGREEMENTS.items():
        (folder / name).write_text(text, encoding="utf-8")
    kl = make_town(root, ca, bundle, KL, datasets=True, agreements=folder)
    gateway = GatewayThread(kl.config.gateway).start()
    try:
        yield Setup(ca, kl, bundle, root)
    finally:
        gateway.stop()


# member, dataset, purpose, action, filter (a "where" the request uses)
REQUESTS = [
    (KL, "parking-permits", "anything", "query", ""),  # the owner
    ("pirmasens", "parking-sites", "planning", "query", ""),  # open dataset
    ("pirmasens", "parking-permits", "traffic-planning", "query", ""),  # masked, limited
    ("sankt-wendel", "parking-permits", "research", "query", ""),  # row filter
    ("sankt-wendel", "parking-permits", "research", "subscribe", ""),  # row filter, stream
    ("zweibruecken", "parking-permits", "statistics", "aggregate", ""),  # aggregate-only
    ("zweibruecken", "parking-permits", "statistics", "query", ""),  # rows refused
    ("pirmasens", "parking-permits", "marketing", "query", ""),  # wrong purpose
    ("kusel", "parking-permits", "research", "query", ""),  # expired
    ("pirmasens", "parking-permits", "traffic-planning", "query", "holder=Holder 3"),  # masked
    ("trier", "parking-permits", "research", "query", ""),  # no agreement at all
]


def ask_gateway(
    setup: Setup, member: str, dataset: str, purpose: str, action: str, where: str
) -> tuple[str, Any]:
    """The gateway's decision: ("allow", DecisionSummary) or ("deny", PolicyDenied)."""
    filters = [where] if where else []
    with setup.client(member) as c:
        try:
            if action == "query":
                return "allow", c.query(KL, dataset, purpose, where=filters, page_size=5).decision
            if action == "aggregate":
                answer = c.aggregate(KL, dataset, purpose, group_by=["district"], where=filters)
                return "allow", answer.decision
            stream = c.subscribe(
                KL, dataset, purpose, where=filters, start=query_pb2.START_FROM_BEGINNING
            )
            try:
                first = next(iter(stream))
            finally:
                stream.cancel()
            return "allow", first.decision
        except PolicyDenied as exc:
            return "deny", exc


def explain_cli(
    setup: Setup,
    capsys: pytest.CaptureFixture[str],
    member: str,
    dataset: str,
    purpose: str,
    action: str,
    where: str,
    *extra: str,
) -> dict[str, Any]:
    argv = ["policy", "explain", "--config", str(setup.kl.dir / "town.toml"), "--as", member]
    argv += ["--dataset", f"{KL}/{dataset}", "--purpose", purpose, "--action", action, "--json"]
    if where:
        argv += ["--filter-on", where.split("=")[0]]
    assert main([*argv, *extra]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: f"{r[0]}-{r[2]}-{r[3]}")
def test_explain_says_what_the_gateway_decides(
    setup: Setup, capsys: pytest.CaptureFixture[str], request_: tuple[str, ...]
) -> None:
    kind, answer = ask_gateway(setup, *request_)
    explained = explain_cli(setup, capsys, *request_)
    assert explained["allow"] is (kind == "allow"), (answer, explained)
    assert explained["input"]["resource"]["cluster"] == SW
    if kind == "deny":
        # PERMISSION_DENIED's allmende.v1.Denial carries the same reasons and version.
        assert explained["reasons"] == list(answer.reasons)
        assert explained["policy_version"] == answer.policy_version
        return
    summary = answer
    assert explained["masked"] == dict(summary.masked_fields)
    assert explained["row_filter"] == json.loads(summary.row_filter_json or "{}")
    assert explained["max_rows"] == summary.max_rows
    assert explained["reasons"] == list(summary.reasons)
    assert explained["policy_version"] == summary.policy_version
    assert explained["way_in"] == summary.way_in
    assert [a["id"] for a in explained["agreements"]] == list(summary.agreements)
    assert explained["min_group_size"] == summary.min_group_size
    assert explained["requests_per_minute"] == summary.requests_per_minute


def test_the_set_covers_every_kind_of_answer(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = {
        json.dumps([d["allow"], d["way_in"], bool(d["masked"]), bool(d["row_filter"])])
        for d in (explain_cli(setup, capsys, *r) for r in REQUESTS)
    }
    assert {
        '[true, "owner", false, false]',
        '[true, "open", false, false]',
        '[true, "agreement", true, false]',
        '[true, "agreement", true, true]',
        '[false, "", false, false]',
    } <= seen


def test_text_output_names_rule_agreement_and_file(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    town = str(setup.kl.dir / "town.toml")
    argv = ["policy", "explain", "--config", town, "--dataset", f"{KL}/parking-permits"]
    assert main([*argv, "--as", "pirmasens", "--purpose", "traffic-planning"]) == 0
    out = capsys.readouterr().out
    assert "ALLOWED: pirmasens (suedwest) query kaiserslautern/parking-permits" in out
    assert "rule:        baseline → agreements: agreement ka-ps-permits" in out
    assert str(setup.root / "agreements" / "ka-ps.yaml") in out
    assert "plate: hashed (HMAC-SHA256 with the salt of agreement ka-ps-permits)" in out
    assert "decided by:  the local policy of" in out
    assert main([*argv, "--as", "kusel", "--purpose", "research"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("DENIED: kusel")
    assert "agreement ka-kus-old expired at 2021-01-01T00:00:00+00:00" in out
    # A dataset the town's catalog does not have is named.
    assert main([*argv[:-1], f"{KL}/bus-stops", "--as", "kusel", "--purpose", "x"]) == 2
    assert "kaiserslautern/bus-stops is not in the catalog" in capsys.readouterr().err
    # Another town's dataset is decided by that town's gateway, not by this town file.
    assert main([*argv[:-1], "pirmasens/parking", "--as", "kusel", "--purpose", "x"]) == 2
    assert "pirmasens/parking is decided by pirmasens's gateway" in capsys.readouterr().err
    assert main([*argv, "--as", "kusel", "--purpose", "x", "--classification", "open"]) == 2
    assert "leave out --classification" in capsys.readouterr().err


def test_diff_replays_the_audit_log_the_gateway_wrote(
    setup: Setup, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The gateway audits every decision with its policy input; `policy diff --config`
    replays them under a proposal: Sankt Wendel's agreement withdrawn, Pirmasens' row
    limit raised. Exactly those decisions change; the gateway's own refusal of a filter on
    a masked field is not replayed."""
    from allmende.audit import read_entries

    for r in REQUESTS:
        ask_gateway(setup, *r)
    proposed = tmp_path / "proposed"
    proposed.mkdir()
    for name, text in AGREEMENTS.items():
        if name != "ka-wnd.yaml":
            (proposed / name).write_text(text.replace("max_rows: 10", "max_rows: 25"), "utf-8")
    town = str(setup.kl.dir / "town.toml")
    argv = ["policy", "diff", "--config", town, "--proposed-agreements", str(proposed)]
    assert main([*argv, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)

    log = setup.kl.config.gateway.audit_log
    assert log is not None
    decisions = [e for e in read_entries(log) if e["event"] == "decision"]
    masked_filter = [e for e in decisions if not e["allow"] and "is masked" in e["reasons"][0]]
    withdrawn = {e["seq"] for e in decisions if e["subject"]["member"] == "sankt-wendel"}
    raised = {
        e["seq"]
        for e in decisions
        if e["subject"]["member"] == "pirmasens"
        and e["purpose"] == "traffic-planning"
        and e not in masked_filter
    }
    assert withdrawn and raised and masked_filter
    changes = {c["seq"]: c["changed"] for c in doc["changes"]}
    assert set(changes) == withdrawn | raised
    assert all(changes[s] == ["max_rows"] for s in raised)
    assert all(changes[s][0] == "allow" for s in withdrawn)
    assert doc["gateway_refused"] == len(masked_filter)
    assert doc["unchanged"] == len(decisions) - len(changes) - len(masked_filter)

    assert main([*argv[:-1], str(setup.root / "agreements")]) == 0
    assert "0 decision(s) change" in capsys.readouterr().out


def test_explain_decides_with_the_bundles_the_gateway_switched_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once the town's store holds a verified cluster + owner bundle pair, the gateway
    switches to it, and `policy explain --config` decides with that same pair."""
    import dataclasses
    import time

    from allmende.policy import BUNDLED_POLICY_DIR, load_agreements, read_policy_sources
    from allmende.policy.bundles import (
        BundleStore,
        build_cluster_bundle,
        build_owner_bundle,
        read_bundle,
        seal_bundle,
    )
    from allmende.signing import MemberSigner
    from allmende.store import connect
    from allmende.v1 import backbone_pb2

    ca = CertificateAuthority.init(tmp_path / "ca", SW)
    folder = tmp_path / "agreements"
    folder.mkdir()
    for name, text in AGREEMENTS.items():
        (folder / name).write_text(text, encoding="utf-8")
    kl = make_town(tmp_path, ca, ca.cert_path, KL, datasets=True, agreements=folder)
    config = dataclasses.replace(kl.config.gateway, policy_poll_s=0.05)
    assert config.keys is not None
    # The published agreements differ from the local folder: Sankt Wendel's is not there.
    (folder / "ka-wnd.yaml").rename(tmp_path / "withdrawn.yaml")
    sources = read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False)
    pair = [
        (build_cluster_bundle(SW, 1, sources, {"default_max_rows": 10000}), ca.signer),
        (
            build_owner_bundle(SW, KL, 1, load_agreements(folder)),
            MemberSigner.from_file(KL, config.keys.signing_key),
        ),
    ]
    (tmp_path / "withdrawn.yaml").rename(folder / "ka-wnd.yaml")  # the local policy has it
    issued = ca.issue(tmp_path / "certs", "sankt-wendel", "research")
    tls = TlsFiles(ca=ca.cert_path, cert=issued.tls.cert, key=issued.tls.key)
    argv = ["policy", "explain", "--config", str(kl.dir / "town.toml"), "--as", "sankt-wendel"]
    argv += ["--dataset", f"{KL}/parking-permits", "--purpose", "research", "--json"]
    with GatewayThread(config) as gateway:
        assert main(argv) == 0
        before = json.loads(capsys.readouterr().out)
        assert before["allow"] and before["policy_origin"].startswith("the local policy")
        conn = connect(config.store_path)
        try:
            for bundle, signer in pair:
                raw = seal_bundle(bundle, signer)
                env = backbone_pb2.Envelope.FromString(raw)
                content = read_bundle(env, backbone_pb2.PolicyBundle.FromString(env.payload))
                BundleStore(conn).add(raw, "accepted", "", content, received_at="2026-01-01")
            conn.commit()
        finally:
            conn.close()
        deadline = time.monotonic() + 10
        while gateway.gateway.policy_label != "cluster-v1+kaiserslautern-v1":
            assert time.monotonic() < deadline, gateway.gateway.policy_note
            time.sleep(0.02)
        with (
            GatewayClient(config.listen, tls, server_name=gateway_server_name(SW, KL)) as client,
            pytest.raises(PolicyDenied) as denied,
        ):
            client.query(KL, "parking-permits", "research")
    assert main(argv) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["allow"] is False
    assert after["reasons"] == list(denied.value.reasons)
    assert after["policy_version"] == denied.value.policy_version
    assert after["policy_version"].startswith("cluster-v1+kaiserslautern-v1:sha256:")
    assert "cluster-v1+kaiserslautern-v1" in after["policy_origin"]
