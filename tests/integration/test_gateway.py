"""Real gateways over mutual TLS, the owner's Rego policy, forwarding, errors with reasons."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from allmende.ca import CertificateAuthority
from allmende.client import GatewayClient
from allmende.errors import (
    AllmendeError,
    InvalidRequest,
    NotOwner,
    PeerUnavailable,
    PolicyDenied,
)
from allmende.identity import TlsFiles, gateway_server_name
from allmende.v1 import query_pb2
from allmende_gateway import GatewayThread

from .towns import PARKING, Town, make_town, reimport

pytestmark = pytest.mark.integration


@dataclass
class Cluster:
    suedwest: CertificateAuthority
    zentral: CertificateAuthority
    kl: Town
    ps: Town
    lu: Town
    gateways: dict[str, GatewayThread]

    def client(self, member: str, service: str) -> GatewayClient:
        town = {"kaiserslautern": self.kl, "pirmasens": self.ps, "luzern": self.lu}[member]
        ca = self.zentral if member == "luzern" else self.suedwest
        return town.client(ca, service)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("gw")
    suedwest = CertificateAuthority.init(root / "ca-suedwest", "suedwest")
    zentral = CertificateAuthority.init(root / "ca-zentral", "zentralschweiz")
    bundle = root / "bundle.pem"
    bundle.write_bytes(suedwest.cert_path.read_bytes() + zentral.cert_path.read_bytes())
    kl = make_town(root, suedwest, bundle, "kaiserslautern", datasets=True, agreements=True)
    kl_addr = (kl.config.gateway.listen, "suedwest")
    ps = make_town(root, suedwest, bundle, "pirmasens", peers={"kaiserslautern": kl_addr})
    lu = make_town(root, zentral, bundle, "luzern", peers={"kaiserslautern": kl_addr})
    gateways: dict[str, GatewayThread] = {}
    try:
        for town in (kl, ps, lu):
            gateways[town.member] = GatewayThread(town.config.gateway).start()
        yield Cluster(suedwest, zentral, kl, ps, lu, gateways)
    finally:
        for g in gateways.values():
            g.stop()


def rows(page: query_pb2.QueryResponse) -> list[dict]:
    return [json.loads(r.json) for r in page.records]


def test_allowed_query_is_forwarded_to_the_owner(cluster: Cluster) -> None:
    with cluster.client("pirmasens", "traffic-dashboard") as c:
        page = c.query(
            "kaiserslautern",
            "parking-sites",
            "traffic-planning",
            fields=["name", "capacity"],
            where=["capacity>=900"],
        )
    assert rows(page) == [
        {"name": "Parkhaus 9", "capacity": 900},
        {"name": "Parkhaus 10", "capacity": 1000},
        {"name": "Parkhaus 11", "capacity": 1100},
        {"name": "Parkhaus 12", "capacity": 1200},
    ]
    assert page.decision.policy_version
    assert page.decision.reasons


def test_paging_with_tokens_bound_to_query_and_caller(cluster: Cluster) -> None:
    with cluster.client("pirmasens", "traffic-dashboard") as c:
        first = c.query("kaiserslautern", "parking-sites", "traffic-planning", page_size=5)
        assert len(first.records) == 5 and first.next_page_token
        everything = list(
            c.query_all("kaiserslautern", "parking-sites", "traffic-planning", page_size=5)
        )
        assert len(everything) == len(PARKING["features"])
        assert len({r.id for r in everything}) == len(everything)
        with pytest.raises(InvalidRequest, match="page_token"):
            c.query(
                "kaiserslautern",
                "parking-sites",
                "traffic-planning",
                page_size=5,
                where=["capacity>=100"],
                page_token=first.next_page_token,
            )
        forged = first.next_page_token[:-2] + (
            "AA" if not first.next_page_token.endswith("AA") else "BB"
        )
        with pytest.raises(InvalidRequest, match="page_token"):
            c.query(
                "kaiserslautern",
                "parking-sites",
                "traffic-planning",
                page_size=5,
                page_token=forged,
            )
    with cluster.client("pirmasens", "other-service") as other, pytest.raises(InvalidRequest):
        other.query(
            "kaiserslautern",
            "parking-sites",
            "traffic-planning",
            page_size=5,
            page_token=first.next_page_token,
        )


def test_agreement_masks_fields(cluster: Cluster) -> None:
    with cluster.client("pirmasens", "traffic-dashboard") as c:
        page = c.query("kaiserslautern", "parking-permits", "traffic-planning", page_size=50)
    got = rows(page)
    assert len(got) == 30
    assert all(r["holder"] is None and r["plate"] is None for r in got)
    assert all(r["district"] for r in got)
    assert dict(page.decision.masked_fields) == {"holder": "redact", "plate": "redact"}


def test_filter_on_masked_field_is_refused(cluster: Cluster) -> None:
    with cluster.client("pirmasens", "traffic-dashboard") as c, pytest.raises(PolicyDenied) as err:
        c.query("kaiserslautern", "parking-permits", "traffic-planning", where=["plate=KL-AB 3"])
    assert any("masked" in r for r in err.value.reasons)


def test_denied_query_carries_the_policy_reasons(cluster: Cluster) -> None:
    with cluster.client("pirmasens", "traffic-dashboard") as c, pytest.raises(PolicyDenied) as err:
        c.query("kaiserslautern", "parking-permits", "marketing")
    assert err.value.owner == "kaiserslautern"
    assert err.value.subject_member == "pirmasens"
    assert err.value.policy_version
    assert any("marketing" in r for r in err.value.reasons)


def test_non_member_is_refused_by_the_baseline(cluster: Cluster) -> None:
    with cluster.client("luzern", "city-app") as c, pytest.raises(PolicyDenied) as err:
        c.query("kaiserslautern", "parking-sites", "tourism")
    assert any("not a member of cluster suedwest" in r for r in err.value.reasons)
    # Asking Kaiserslautern's gateway directly: neither catalog nor data for non-members.
    tls = cluster.lu.service_tls(cluster.zentral, "city-app")
    with GatewayClient(
        cluster.kl.config.gateway.listen,
        tls,
        server_name=gateway_server_name("suedwest", "kaiserslautern"),
    ) as direct:
        with pytest.raises(PolicyDenied, match="not a member of cluster suedwest"):
            direct.list_datasets()
        with pytest.raises(PolicyDenied, match="not a member of cluster suedwest"):
            direct.query("kaiserslautern", "parking-sites", "tourism")


def test_bad_requests_name_the_field(cluster: Cluster) -> None:
    with cluster.client("pirmasens", "traffic-dashboard") as c:
        with pytest.raises(InvalidRequest, match="colour") as err:
            c.query("kaiserslautern", "parking-sites", "traffic-planning", where=["colour=red"])
        assert err.value.field == "colour"
        with pytest.raises(InvalidRequest, match="capacity"):
            c.query("kaiserslautern", "parking-sites", "traffic-planning", where=["capacity=many"])
        with pytest.raises(InvalidRequest, match="purpose"):
            c.query("kaiserslautern", "parking-sites", "")
        with pytest.raises(InvalidRequest, match="nickname"):
            c.query("kaiserslautern", "parking-sites", "x", fields=["nickname"])
        with pytest.raises(AllmendeError, match=r"NOT_FOUND|not in the catalog"):
            c.query("kaiserslautern", "no-such-dataset", "x")


def test_a_gateway_does_not_relay_for_other_towns(cluster: Cluster) -> None:
    # Pirmasens' *gateway* identity asks Luzern's gateway for Kaiserslautern's data.
    town = cluster.ps
    tls = TlsFiles(
        ca=town.bundle, cert=town.config.gateway.tls.cert, key=town.config.gateway.tls.key
    )
    with (
        GatewayClient(
            cluster.lu.config.gateway.listen,
            tls,
            server_name=gateway_server_name("zentralschweiz", "luzern"),
        ) as c,
        pytest.raises(NotOwner),
    ):
        c.query("kaiserslautern", "parking-sites", "traffic-planning")


def test_unreachable_owner_is_unavailable(cluster: Cluster, tmp_path: Path) -> None:
    from allmende.broker import free_port

    ghost = make_town(
        tmp_path,
        cluster.suedwest,
        cluster.kl.bundle,
        "zweibruecken",
        peers={"kaiserslautern": (f"127.0.0.1:{free_port()}", "suedwest")},
    )
    with (
        GatewayThread(ghost.config.gateway) as _gw,
        ghost.client(cluster.suedwest, "svc") as c,
        pytest.raises(PeerUnavailable, match="kaiserslautern"),
    ):
        c.query("kaiserslautern", "parking-sites", "traffic-planning")


def _raw_channel_call(
    address: str, creds: grpc.ChannelCredentials, server_name: str
) -> grpc.RpcError:
    from allmende.v1 import catalog_pb2, catalog_pb2_grpc

    channel = grpc.secure_channel(address, creds, [("grpc.ssl_target_name_override", server_name)])
    try:
        catalog_pb2_grpc.CatalogServiceStub(channel).ListDatasets(
            catalog_pb2.ListDatasetsRequest(), timeout=5
        )
    except grpc.RpcError as exc:
        return exc
    finally:
        channel.close()
    raise AssertionError("the call should have been refused")


def test_client_without_certificate_is_refused(cluster: Cluster) -> None:
    ca = cluster.kl.bundle.read_bytes()
    err = _raw_channel_call(
        cluster.kl.config.gateway.listen,
        grpc.ssl_channel_credentials(ca),
        gateway_server_name("suedwest", "kaiserslautern"),
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    rogue = CertificateAuthority.init(tmp_path / "rogue", "suedwest")  # same name, other key
    issued = rogue.issue(tmp_path / "rogue-certs", "pirmasens", "dash")
    creds = grpc.ssl_channel_credentials(
        cluster.kl.bundle.read_bytes(), issued.tls.key.read_bytes(), issued.tls.cert.read_bytes()
    )
    err = _raw_channel_call(
        cluster.kl.config.gateway.listen, creds, gateway_server_name("suedwest", "kaiserslautern")
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_forwarding_verifies_the_owner_gateway_identity(cluster: Cluster, tmp_path: Path) -> None:
    # Pirmasens is told Kaiserslautern lives at Luzern's address: TLS must refuse it.
    liar = make_town(
        tmp_path,
        cluster.suedwest,
        cluster.kl.bundle,
        "homburg",
        peers={"kaiserslautern": (cluster.lu.config.gateway.listen, "suedwest")},
    )
    with (
        GatewayThread(liar.config.gateway),
        liar.client(cluster.suedwest, "svc") as c,
        pytest.raises(PeerUnavailable),
    ):
        c.query("kaiserslautern", "parking-sites", "traffic-planning")


def _collect(stream, out: queue.Queue) -> None:
    try:
        for event in stream:
            out.put(event)
    except AllmendeError as err:
        out.put(err)


def _next_changes(out: queue.Queue, n: int, timeout: float = 10.0) -> list[query_pb2.ChangeEvent]:
    got = []
    for _ in range(n):
        item = out.get(timeout=timeout)
        if isinstance(item, Exception):
            raise item
        got.append(item)
    return got


def test_subscription_receives_upserts_and_deletes_and_resumes(cluster: Cluster) -> None:
    kl = cluster.kl
    path = kl.dir / "data" / "parking.geojson"
    original = path.read_text()
    with cluster.client("pirmasens", "traffic-dashboard") as c:
        events: queue.Queue = queue.Queue()
        stream = c.subscribe(
            "kaiserslautern", "parking-sites", "traffic-planning", start=query_pb2.START_FROM_LIVE
        )
        threading.Thread(target=_collect, args=(stream, events), daemon=True).start()
        hello = _next_changes(events, 1)[0]
        assert hello.kind == query_pb2.CHANGE_KIND_UNSPECIFIED and hello.decision.policy_version
        try:
            doc = json.loads(original)
            doc["features"][0]["properties"]["capacity"] = 111
            removed = doc["features"].pop()
            path.write_text(json.dumps(doc))
            reimport(kl)
            changes = _next_changes(events, 2)
            kinds = {(e.kind, e.record.id) for e in changes}
            assert kinds == {
                (query_pb2.CHANGE_KIND_UPSERT, "p-01"),
                (query_pb2.CHANGE_KIND_DELETE, removed["properties"]["id"]),
            }
            upsert = next(e for e in changes if e.kind == query_pb2.CHANGE_KIND_UPSERT)
            assert json.loads(upsert.record.json)["capacity"] == 111
            stream.cancel()

            # Disconnected: two more changes happen; resuming yields exactly those.
            doc["features"][1]["properties"]["capacity"] = 222
            doc["features"][2]["properties"]["capacity"] = 333
            path.write_text(json.dumps(doc))
            reimport(kl)
            last_token = changes[-1].resume_token
            resumed: queue.Queue = queue.Queue()
            stream2 = c.subscribe(
                "kaiserslautern",
                "parking-sites",
                "traffic-planning",
                start=query_pb2.START_FROM_LIVE,
                resume_token=last_token,
            )
            threading.Thread(target=_collect, args=(stream2, resumed), daemon=True).start()
            _next_changes(resumed, 1)  # the greeting with the decision
            again = _next_changes(resumed, 2)
            assert [e.record.id for e in again] == ["p-02", "p-03"]
            with pytest.raises(queue.Empty):
                resumed.get(timeout=0.5)
            stream2.cancel()
        finally:
            path.write_text(original)
            reimport(kl)


def test_subscription_applies_masks_and_row_filter(cluster: Cluster, tmp_path: Path) -> None:
    # Sankt Wendel holds an agreement with a row filter (district Innenstadt) and a mask.
    wnd = make_town(
        tmp_path,
        cluster.suedwest,
        cluster.kl.bundle,
        "sankt-wendel",
        peers={"kaiserslautern": (cluster.kl.config.gateway.listen, "suedwest")},
    )
    with GatewayThread(wnd.config.gateway), wnd.client(cluster.suedwest, "research-app") as c:
        page = c.query("kaiserslautern", "parking-permits", "research", page_size=100)
        assert {r["district"] for r in rows(page)} == {"Innenstadt"}
        assert all(r["plate"] is None for r in rows(page))
        events: queue.Queue = queue.Queue()
        stream = c.subscribe(
            "kaiserslautern", "parking-permits", "research", start=query_pb2.START_FROM_BEGINNING
        )
        threading.Thread(target=_collect, args=(stream, events), daemon=True).start()
        got = _next_changes(events, 1 + len(page.records))[1:]
        stream.cancel()
        assert {e.record.id for e in got} == {r.id for r in page.records}
        assert all(json.loads(e.record.json)["plate"] is None for e in got)


def test_grpcurl_lists_services_and_health_is_serving(cluster: Cluster) -> None:
    import shutil

    grpcurl = shutil.which("grpcurl") or str(
        Path(__file__).resolve().parents[2] / ".venv/bin/grpcurl"
    )
    tls = cluster.ps.service_tls(cluster.suedwest, "cli")
    base = [
        grpcurl,
        "-cacert",
        str(tls.ca),
        "-cert",
        str(tls.cert),
        "-key",
        str(tls.key),
        "-servername",
        gateway_server_name("suedwest", "pirmasens"),
        cluster.ps.config.gateway.listen,
    ]
    listed = subprocess.run(
        [*base[:-1], base[-1], "list"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    for name in ("allmende.v1.CatalogService", "allmende.v1.QueryService", "grpc.health.v1.Health"):
        assert name in listed.stdout
    health = subprocess.run(
        [*base, "grpc.health.v1.Health/Check"], capture_output=True, text=True, timeout=30
    )
    assert health.returncode == 0, health.stderr
    assert '"status": "SERVING"' in health.stdout
    query = subprocess.run(
        [
            *base[:-1],
            "-d",
            json.dumps(
                {
                    "owner": "kaiserslautern",
                    "dataset": "parking-sites",
                    "purpose": "traffic-planning",
                    "page_size": 2,
                }
            ),
            base[-1],
            "allmende.v1.QueryService/Query",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert query.returncode == 0, query.stderr
    assert '"records"' in query.stdout


def test_max_rows_of_an_agreement_caps_the_paged_result(cluster: Cluster, tmp_path: Path) -> None:
    agreements = tmp_path / "agreements"
    agreements.mkdir()
    (agreements / "zw-ps.yaml").write_text(
        "agreement: zw-ps-permits\nprovider: zweibruecken\ndatasets: [parking-permits]\n"
        "consumers: [pirmasens]\npurposes: [traffic-planning]\nvalid_from: 2026-01-01\n"
        "max_rows: 7\n"
    )
    owner = make_town(tmp_path, cluster.suedwest, cluster.kl.bundle, "zweibruecken", datasets=True)
    config = owner.config.gateway.__class__(
        **{**owner.config.gateway.__dict__, "agreements_dir": agreements}
    )
    tls = cluster.ps.service_tls(cluster.suedwest, "traffic-dashboard")
    with (
        GatewayThread(config),
        GatewayClient(
            config.listen, tls, server_name=gateway_server_name("suedwest", "zweibruecken")
        ) as c,
    ):
        first = c.query("zweibruecken", "parking-permits", "traffic-planning", page_size=5)
        assert len(first.records) == 5 and first.next_page_token and not first.truncated
        assert first.decision.max_rows == 7
        second = c.query(
            "zweibruecken",
            "parking-permits",
            "traffic-planning",
            page_size=5,
            page_token=first.next_page_token,
        )
        assert len(second.records) == 2
        assert second.truncated and not second.next_page_token
