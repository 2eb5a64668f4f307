"""A whole demo federation on loopback: two cluster CAs, the broker, four towns' nodes and gateways."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allmende.broker import EmbeddedBroker, free_port
from allmende.ca import CertificateAuthority, publish_registry
from allmende.client import GatewayClient
from allmende.config import TownConfig, load_client_config, load_town_config
from allmende.errors import AllmendeError
from allmende.identity import gateway_server_name
from allmende.policy import BUNDLED_POLICY_DIR
from allmende.store import StoreReader
from allmende_gateway import GatewayThread
from allmende_node import Node

__all__ = ["SAMPLE_DATA", "DemoFederation", "Town"]

SAMPLE_DATA = Path(__file__).resolve().parent / "sample_data"
EXAMPLE_AGREEMENTS = BUNDLED_POLICY_DIR / "examples" / "agreements"

PARKING = {
    "title": "Parkhäuser und Parkplätze",
    "description": "Car parks with location, capacity and whether live occupancy exists.",
    "keywords": ["parking", "mobility"],
}
# (member, cluster, datasets, services)
TOWNS: list[tuple[str, str, list[dict[str, Any]], list[str]]] = [
    (
        "kaiserslautern",
        "suedwest",
        [
            dict(
                id="parking-sites",
                file="parking-sites.geojson",
                classification="open",
                license="dl-de/zero-2-0",
                source="Stadt Köln via ParkAPI (stand-in data)",
                **PARKING,
            ),
            dict(
                id="parking-permits",
                file="parking-permits.csv",
                classification="internal",
                id_field="permit_id",
                license="CC0-1.0",
                source="synthetic demo data",
                title="Anwohnerparkausweise",
                keywords=["parking", "permits"],
                description="Resident and business parking permits with holder and plate.",
            ),
        ],
        ["open-data-portal"],
    ),
    (
        "pirmasens",
        "suedwest",
        [
            dict(
                id="parking-sites",
                file="parking-sites.geojson",
                classification="open",
                license="dl-de/by-2-0",
                source="Stadt Freiburg via ParkAPI (stand-in data)",
                **PARKING,
            ),
        ],
        ["traffic-dashboard"],
    ),
    (
        "sankt-wendel",
        "suedwest",
        [
            dict(
                id="parking-sites",
                file="parking-sites.geojson",
                classification="open",
                license="CC0-1.0",
                source="Immobilien Basel-Stadt via ParkAPI (stand-in data)",
                **PARKING,
            ),
            dict(
                id="recycling-points",
                file="recycling-points.json",
                classification="open",
                license="CC0-1.0",
                source="synthetic demo data",
                title="Wertstoffcontainer",
                keywords=["waste", "recycling"],
                description="Recycling containers and when they were emptied.",
            ),
        ],
        ["research-app"],
    ),
    (
        "luzern",
        "zentralschweiz",
        [
            dict(
                id="parking-sites",
                file="parking-sites.geojson",
                classification="open",
                license="CC0-1.0",
                source="PLS Zürich via ParkAPI (stand-in data)",
                **PARKING,
            ),
        ],
        ["city-app"],
    ),
]


def _toml_value(v: object) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Town:
    member: str
    cluster: str
    dir: Path
    config: TownConfig
    services: dict[str, Path] = field(default_factory=dict)
    node: Node | None = None
    gateway: GatewayThread | None = None

    def profile(self, service: str) -> Path:
        return self.services[service]


class DemoFederation:
    """Builds everything under ``workdir`` (wiped first) and runs it in this process."""

    def __init__(self, workdir: Path, *, say: Callable[[str], None] = print) -> None:
        # Absolute: the town files name each other's paths, resolved from their own folder.
        self.workdir = Path(workdir).resolve()
        self.say = say
        self.broker: EmbeddedBroker | None = None
        self.towns: dict[str, Town] = {}
        self.cas: dict[str, CertificateAuthority] = {}

    # -- building --------------------------------------------------------------------------

    def _certificates(self) -> dict[str, CertificateAuthority]:
        cas = {
            c: CertificateAuthority.init(self.workdir / "ca" / c, c)
            for c in ("suedwest", "zentralschweiz")
        }
        # Gateways of both clusters trust both CAs, so a cross-cluster call reaches the
        # owner's policy, which then decides (and explains) rather than a bare TLS failure.
        bundle = self.workdir / "ca" / "trust-bundle.pem"
        bundle.write_bytes(b"".join(ca.cert_path.read_bytes() for ca in cas.values()))
        return cas

    def _write_town(
        self,
        member: str,
        cluster: str,
        datasets: list[dict],
        services: list[str],
        ca: CertificateAuthority,
        ports: dict[str, int],
    ) -> Town:
        assert self.broker is not None
        tdir = self.workdir / member
        (tdir / "data").mkdir(parents=True)
        issued = ca.issue(tdir / "certs", member)
        bundle = self.workdir / "ca" / "trust-bundle.pem"
        lines = [
            "# Generated by `allmende demo`.",
            "[town]",
            f'member = "{member}"',
            f'cluster = "{cluster}"',
            'data_dir = "var"',
            "",
            "[backbone]",
            f'bootstrap_servers = ["{self.broker.bootstrap}"]',
            # Luzern's cluster has its own backbone; on the one demo broker, its own topic prefix.
            f'topic_prefix = "{"allmende" if cluster == "suedwest" else "allmende-" + cluster}"',
            "",
            "[tls]",
            f'ca = "{bundle}"',
            f'cert = "{issued.tls.cert}"',
            f'key = "{issued.tls.key}"',
            "",
            "[keys]",
            f'signing_key = "{issued.signing_key}"',
            f'encryption_key = "{issued.encryption_key}"',
            f'cluster_ca = "{ca.cert_path}"',
            "",
            "[node]",
            "publish_interval_s = 0.1",
            "rescan_interval_s = 0.5",
            "",
            "[gateway]",
            f'listen = "127.0.0.1:{ports[member]}"',
            "subscribe_poll_s = 0.05",
            "policy_poll_s = 0.2",  # the tour's published bundle goes live within a second
        ]
        if member == "kaiserslautern":
            shutil.copytree(EXAMPLE_AGREEMENTS, tdir / "agreements")
            lines.append('agreements_dir = "agreements"')
        if cluster != "suedwest":
            lines += [
                "",
                "[gateway.peers]",
                f'kaiserslautern = {{ address = "127.0.0.1:{ports["kaiserslautern"]}", cluster = "suedwest" }}',
            ]
        for ds in datasets:
            shutil.copy(SAMPLE_DATA / member / ds["file"], tdir / "data" / ds["file"])
            lines += ["", "[[node.datasets]]"]
            lines += [
                f"{k} = {_toml_value('data/' + v if k == 'file' else v)}" for k, v in ds.items()
            ]
        (tdir / "town.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        town = Town(member, cluster, tdir, load_town_config(tdir / "town.toml"))
        for service in services:
            svc = ca.issue(tdir / "certs", member, service)
            profile = tdir / f"{service}.toml"
            profile.write_text(
                "[client]\n"
                f'gateway = "127.0.0.1:{ports[member]}"\n'
                f'server_name = "{gateway_server_name(cluster, member)}"\n'
                f'ca = "{bundle}"\ncert = "{svc.tls.cert}"\nkey = "{svc.tls.key}"\n',
                encoding="utf-8",
            )
            town.services[service] = profile
        return town

    def start(self) -> DemoFederation:
        """Create CAs, certificates, configs; start broker, nodes, gateways; wait for the catalog."""
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        cas = self._certificates()
        self.broker = EmbeddedBroker(log_path=self.workdir / "broker.log").start()
        self.say(f"broker (tansu, memory storage) on {self.broker.bootstrap}")
        ports = {member: free_port() for member, *_ in TOWNS}
        for member, cluster, datasets, services in TOWNS:
            self.towns[member] = self._write_town(
                member, cluster, datasets, services, cas[cluster], ports
            )
        self.cas = cas
        self.publish_trust(cas)
        for town in self.towns.values():
            town.node = Node(town.config.node)
            town.node.start()
            town.gateway = GatewayThread(town.config.gateway).start()
            self.say(
                f"{town.member:<15} node + gateway on {town.gateway.address}  ({town.cluster})"
            )
        self.wait_for_trust()
        self.wait_for_catalog()

    def publish_trust(self, cas: dict[str, CertificateAuthority]) -> None:
        """Each cluster's CA publishes its member registry on its cluster's trust topic, so
        every node knows its peers' keys before it reads their first message."""
        for cluster, ca in cas.items():
            town = next(t for t in self.towns.values() if t.cluster == cluster)
            backbone = town.config.node.backbone
            members = publish_registry(ca, backbone)
            self.say(
                f"CA of {cluster} published {len(members)} member record(s) on "
                f"{backbone.topic_prefix}.trust"
            )

    def wait_for_trust(self, timeout_s: float = 30.0) -> None:
        """Until every town's trust table holds every member of its cluster."""
        want: dict[str, set[str]] = {}
        for member, cluster, *_ in TOWNS:
            want.setdefault(cluster, set()).add(member)
        deadline = time.monotonic() + timeout_s
        for town in self.towns.values():
            reader = StoreReader(town.config.node.store_path)
            try:
                while not want[town.cluster] <= set(reader.trusted_members()):
                    if time.monotonic() > deadline:
                        missing = want[town.cluster] - set(reader.trusted_members())
                        raise AllmendeError(
                            f"{town.member} has no trust statement of {', '.join(sorted(missing))}"
                        )
                    time.sleep(0.05)
            finally:
                reader.close()

    def wait_for_catalog(self, timeout_s: float = 30.0) -> None:
        """Until every town's federated catalog holds every dataset of its cluster."""
        want: dict[str, set[tuple[str, str]]] = {}
        for member, cluster, datasets, _ in TOWNS:
            want.setdefault(cluster, set()).update((member, d["id"]) for d in datasets)
        deadline = time.monotonic() + timeout_s
        for town in self.towns.values():
            reader = StoreReader(town.config.node.store_path)
            try:
                while True:
                    have = {(d.owner, d.id) for d in reader.catalog()}
                    if want[town.cluster] <= have:
                        break
                    if time.monotonic() > deadline:
                        missing = sorted(f"{o}/{d}" for o, d in want[town.cluster] - have)
                        raise AllmendeError(
                            f"{town.member}'s catalog still lacks {', '.join(missing)}"
                        )
                    time.sleep(0.1)
            finally:
                reader.close()

    def client(self, member: str, service: str) -> GatewayClient:
        profile = load_client_config(self.towns[member].profile(service))
        return GatewayClient(profile.gateway, profile.tls, server_name=profile.server_name)

    def stop(self) -> None:
        for town in self.towns.values():
            if town.gateway is not None:
                town.gateway.stop()
            if town.node is not None:
                town.node.stop()
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> DemoFederation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
