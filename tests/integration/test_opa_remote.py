"""The remote engine adapter (RemotePolicy) against an OPA server's API.

NOTE: no OPA binary can be installed where these tests run, so the server here is a TEST
DOUBLE (tests/integration/opa_double.py): a small HTTP server speaking OPA's Policy and Data
API as opa-python-client calls it, evaluating with regorus, a real Rego engine. The adapter,
opa-python-client and the HTTP exchange are real; OPA itself is not.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from allmende.broker import free_port
from allmende.errors import PolicyError
from allmende.policy import BUNDLED_POLICY_DIR, PolicyEngine, load_agreements, read_policy_sources
from allmende.policy.explain import DatasetFacts, Subject, policy_input
from allmende.policy.remote import MODULE_PREFIX, RemotePolicy

from .opa_double import OpaDouble

pytestmark = pytest.mark.integration

SW = "suedwest"
AT = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
AGREEMENTS = {
    "a.yaml": """
agreement: ka-ps-permits
provider: kaiserslautern
datasets: [parking-permits]
consumers: [pirmasens]
purposes: [traffic-planning]
mask: {holder: redact, plate: hash, capacity: {bucket: 50}}
valid_from: 2026-01-01
valid_until: 2099-01-01
max_rows: 20
requests_per_minute: 30
""",
    "b.yaml": """
agreement: ka-wnd-permits
provider: kaiserslautern
datasets: [parking-permits]
consumers: [sankt-wendel]
purposes: [research]
row_filter: {district: {in: [Innenstadt]}, capacity: {ge: 10}}
valid_from: 2026-01-01
valid_until: 2099-01-01
""",
    "c.yaml": """
agreement: ka-zw-statistics
provider: kaiserslautern
datasets: [parking-permits]
consumers: [zweibruecken]
purposes: [statistics]
aggregate_only: {min_group_size: 5}
valid_from: 2026-01-01
valid_until: 2099-01-01
""",
    "d.yaml": """
agreement: ka-kus-old
provider: kaiserslautern
datasets: [parking-permits]
consumers: [kusel]
purposes: [research]
valid_from: 2020-01-01
valid_until: 2021-01-01
""",
}
PERMITS = DatasetFacts(
    "kaiserslautern", "parking-permits", "internal", ("id", "holder", "plate", "capacity")
)
SITES = DatasetFacts("kaiserslautern", "parking-sites", "open", ("id", "name"))
REQUESTS = [
    ("kaiserslautern", SW, PERMITS, "x", "query"),
    ("pirmasens", SW, SITES, "x", "subscribe"),
    ("pirmasens", SW, PERMITS, "traffic-planning", "query"),
    ("pirmasens", SW, PERMITS, "marketing", "query"),
    ("sankt-wendel", SW, PERMITS, "research", "subscribe"),
    ("zweibruecken", SW, PERMITS, "statistics", "aggregate"),
    ("kusel", SW, PERMITS, "research", "query"),
    ("luzern", "zentral", PERMITS, "research", "query"),
    ("pirmasens", SW, PERMITS, "traffic-planning", "delete"),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], list[dict]]:
    folder = tmp_path_factory.mktemp("agreements")
    for name, text in AGREEMENTS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return read_policy_sources(BUNDLED_POLICY_DIR, include_tests=False), load_agreements(folder)


@pytest.fixture
def opa() -> Iterator[OpaDouble]:
    with OpaDouble() as server:
        yield server


def inputs() -> list[dict]:
    return [
        policy_input(Subject(m, c, "svc"), action, facts, SW, purpose, [], 50, AT)
        for m, c, facts, purpose, action in REQUESTS
    ]


def test_remote_decisions_equal_the_embedded_engines(
    opa: OpaDouble, bundle: tuple[dict[str, str], list[dict]]
) -> None:
    sources, agreements = bundle
    settings = {"default_max_rows": 700}
    embedded = PolicyEngine(sources, agreements, settings)
    remote = RemotePolicy(opa.url, sources, agreements, settings)
    try:
        assert remote.policy_version == embedded.policy_version
        seen = set()
        for document in inputs():
            got, want = remote.decide(document), embedded.decide(document)
            assert got == want, document
            seen.add((got.allow, got.way_in, bool(got.mask), bool(got.row_filter)))
            seen.add(("k", got.min_group_size, got.requests_per_minute))
        # The inputs cover every kind of answer: owner, open, masked, filtered,
        # aggregate-only, quota, denied.
        assert {(True, "owner", False, False), (True, "open", False, False)} <= seen
        assert {(True, "agreement", True, False), (True, "agreement", False, True)} <= seen
        assert {("k", 5, 0), ("k", 0, 30), (False, "", False, False)} <= seen
    finally:
        remote.close()
    # What went over the wire: OPA's Policy API for the modules, its Data API for the data
    # and the decisions.
    assert sorted(opa.policies) == sorted(MODULE_PREFIX + name for name in sources)
    assert opa.data["allmende"]["settings"]["policy_version"] == embedded.policy_version
    assert ("POST", "/v1/data/allmende/decision/decision") in opa.calls


def test_a_new_push_replaces_the_old_modules_and_labels_the_version(
    opa: OpaDouble, bundle: tuple[dict[str, str], list[dict]]
) -> None:
    sources, agreements = bundle
    extra = {**sources, "allmende/extra.rego": "package allmende.extra\n\nx := 1\n"}
    RemotePolicy(opa.url, extra, agreements).close()
    assert MODULE_PREFIX + "allmende/extra.rego" in opa.policies
    opa.policies["someone-else/mod.rego"] = "package other\n\ny := 2\n"  # another tenant's
    remote = RemotePolicy(opa.url, sources, [], version_label="cluster-v3+kaiserslautern-v5")
    try:
        assert MODULE_PREFIX + "allmende/extra.rego" not in opa.policies
        assert "someone-else/mod.rego" in opa.policies
        labelled = PolicyEngine(sources, [], version_label="cluster-v3+kaiserslautern-v5")
        assert remote.policy_version == labelled.policy_version
        assert remote.policy_version.startswith("cluster-v3+kaiserslautern-v5:sha256:")
        decision = remote.decide(inputs()[2])  # the agreements are gone
        assert not decision.allow and decision.policy_version == remote.policy_version
    finally:
        remote.close()


def test_an_undefined_decision_denies(opa: OpaDouble) -> None:
    only_queries = """package allmende.decision

import rego.v1

decision := {"allow": true, "reasons": ["queries only"], "mask": {}, "row_filter": {},
	"max_rows": 5, "policy_version": "v"} if input.action == "query"
"""
    remote = RemotePolicy(opa.url, {"d.rego": only_queries}, [])
    try:
        assert remote.decide(inputs()[0]).allow
        subscribe = remote.decide(inputs()[1])
        assert not subscribe.allow
        assert subscribe.reasons == ("policy produced no decision",)
    finally:
        remote.close()


def test_opa_that_cannot_be_reached_is_a_policy_error(
    bundle: tuple[dict[str, str], list[dict]],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PolicyError, match=f"OPA at {url} cannot be reached"):
        RemotePolicy(url, *bundle)
    with pytest.raises(PolicyError, match="must be http://host:port"):
        RemotePolicy("opa.local:8181", *bundle)
    with pytest.raises(PolicyError, match="no path"):
        RemotePolicy("http://127.0.0.1:8181/v1", *bundle)


def test_opa_going_down_fails_the_decision_closed(
    bundle: tuple[dict[str, str], list[dict]],
) -> None:
    server = OpaDouble().start()
    try:
        remote = RemotePolicy(server.url, *bundle)
        assert remote.decide(inputs()[0]).allow
    finally:
        server.stop()
    with pytest.raises(PolicyError, match=f"OPA at {server.url} failed to decide"):
        remote.decide(inputs()[0])
    remote.close()


def test_a_module_opa_refuses_is_a_policy_error(
    opa: OpaDouble, bundle: tuple[dict[str, str], list[dict]]
) -> None:
    sources, agreements = bundle
    broken = {**sources, "allmende/broken.rego": "package allmende.broken\n\nx := \n"}
    with pytest.raises(PolicyError) as err:
        RemotePolicy(opa.url, broken, agreements)
    message = str(err.value)
    assert f"OPA at {opa.url} refused the policy module allmende/broken.rego" in message
    assert "error(s) occurred while compiling module(s)" in message
    assert MODULE_PREFIX + "allmende/broken.rego" not in opa.policies

    no_decision = {"x.rego": "package allmende.other\n\nx := 1\n"}
    with pytest.raises(PolicyError, match="decides nothing for a sample request"):
        RemotePolicy(opa.url, no_decision, [])
    malformed = {"d.rego": 'package allmende.decision\n\ndecision := {"allow": 1}\n'}
    with pytest.raises(PolicyError, match=f"OPA at {opa.url}: policy decision is malformed"):
        RemotePolicy(opa.url, malformed, [])
    with pytest.raises(PolicyError, match="label 'v 1'"):
        RemotePolicy(opa.url, sources, [], version_label="v 1")


def test_the_double_answers_like_opa_for_the_client_calls(opa: OpaDouble) -> None:
    """The double's own contract, through opa-python-client itself."""
    from opa_client import OpaClient

    client = OpaClient(host="127.0.0.1", port=int(opa.url.rsplit(":", 1)[1]))
    try:
        assert client.check_health()
        assert client.update_policy_from_string("package t\n\nr := data.cfg.v + 1\n", "t.rego")
        assert client.update_or_create_data({"v": 41}, "cfg")
        assert client.get_data("t/r")["result"] == 42
        assert client.query_rule({"a": 1}, "t", "r") == {"result": 42}
        assert client.get_policies_list() == ["t.rego"]
        assert client.delete_policy("t.rego")
        assert client.query_rule({}, "t", "r") == {}
    finally:
        client.close_connection()


def test_a_gateway_with_an_opa_sidecar_decides_as_explain_says(
    opa: OpaDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`[gateway] policy_engine = "opa"`: the real gateway asks the (double of an) OPA
    server for every decision; its answers equal what `policy explain` (embedded) says."""
    import dataclasses
    import json

    from allmende.ca import CertificateAuthority
    from allmende.client import GatewayClient
    from allmende.errors import PolicyDenied
    from allmende.identity import TlsFiles, gateway_server_name
    from allmende_cli.main import main
    from allmende_gateway import GatewayThread

    from .towns import make_town

    ca = CertificateAuthority.init(tmp_path / "ca", SW)
    folder = tmp_path / "agreements"
    folder.mkdir()
    for name, text in AGREEMENTS.items():
        (folder / name).write_text(text, encoding="utf-8")
    kl = make_town(tmp_path, ca, ca.cert_path, "kaiserslautern", datasets=True, agreements=folder)
    config = dataclasses.replace(kl.config.gateway, policy_engine="opa", opa_url=opa.url)
    issued = ca.issue(tmp_path / "certs", "pirmasens", "dashboard")
    tls = TlsFiles(ca=ca.cert_path, cert=issued.tls.cert, key=issued.tls.key)
    town = str(kl.dir / "town.toml")
    with GatewayThread(config):
        posts = len([c for c in opa.calls if c[0] == "POST"])
        with GatewayClient(
            config.listen, tls, server_name=gateway_server_name(SW, "kaiserslautern")
        ) as client:
            page = client.query("kaiserslautern", "parking-permits", "traffic-planning")
            with pytest.raises(PolicyDenied) as denied:
                client.query("kaiserslautern", "parking-permits", "marketing")
    assert len([c for c in opa.calls if c[0] == "POST"]) == posts + 2  # OPA decided both
    assert all(json.loads(r.json)["holder"] is None for r in page.records)

    argv = ["policy", "explain", "--config", town, "--as", "pirmasens", "--json"]
    argv += ["--dataset", "kaiserslautern/parking-permits", "--service", "dashboard"]
    assert main([*argv, "--purpose", "traffic-planning"]) == 0
    allowed = json.loads(capsys.readouterr().out)
    summary = page.decision
    assert allowed["masked"] == dict(summary.masked_fields)
    assert allowed["max_rows"] == summary.max_rows == 20
    assert allowed["policy_version"] == summary.policy_version
    assert allowed["requests_per_minute"] == summary.requests_per_minute == 30
    assert main([*argv, "--purpose", "marketing"]) == 0
    refused = json.loads(capsys.readouterr().out)
    assert refused["allow"] is False and refused["reasons"] == list(denied.value.reasons)
