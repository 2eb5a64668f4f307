"""Builds real towns for tests: CA, certificates, a town TOML, a store filled by the real importer."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from allmende.broker import free_port
from allmende.ca import CertificateAuthority, publish_registry
from allmende.client import GatewayClient
from allmende.config import BackboneConfig, TownConfig, load_town_config
from allmende.identity import TlsFiles, gateway_server_name
from allmende.store import connect
from allmende_node.importer import import_configured

REPO = Path(__file__).resolve().parents[2]
AGREEMENTS = REPO / "policies" / "examples" / "agreements"

PARKING = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [7.76 + i / 100, 49.44]},
            "properties": {
                "id": f"p-{i:02d}",
                "name": f"Parkhaus {i}",
                "capacity": 100 * i,
                "district": "Innenstadt" if i % 2 else "West",
            },
        }
        for i in range(1, 13)
    ],
}
PERMITS = "permit_id,holder,plate,district,zone\n" + "".join(
    f"KL-{i:03d},Holder {i},KL-AB {i},{'Innenstadt' if i % 3 == 0 else 'Betzenberg'},Z{i % 4}\n"
    for i in range(1, 31)
)


@dataclass
class Town:
    member: str
    cluster: str
    dir: Path
    config: TownConfig
    bundle: Path

    def service_tls(self, ca: CertificateAuthority, service: str) -> TlsFiles:
        issued = ca.issue(self.dir / "certs", self.member, service)
        return TlsFiles(ca=self.bundle, cert=issued.tls.cert, key=issued.tls.key)

    def client(self, ca: CertificateAuthority, service: str) -> GatewayClient:
        return GatewayClient(
            self.config.gateway.listen,
            self.service_tls(ca, service),
            server_name=gateway_server_name(self.cluster, self.member),
        )


def make_town(
    root: Path,
    ca: CertificateAuthority,
    bundle: Path,
    member: str,
    *,
    bootstrap: str = "127.0.0.1:1",
    topic_prefix: str = "allmende",
    peers: dict[str, tuple[str, str]] | None = None,
    datasets: bool = False,
    agreements: bool | Path = False,
) -> Town:
    """A town folder with town.toml; with ``datasets``, parking (open) and permits (internal)."""
    tdir = root / member
    (tdir / "data").mkdir(parents=True, exist_ok=True)
    issued = ca.issue(tdir / "certs", member)
    port = free_port()
    lines = [
        "[town]",
        f'member = "{member}"',
        f'cluster = "{ca.cluster}"',
        'data_dir = "var"',
        "[backbone]",
        f'bootstrap_servers = ["{bootstrap}"]',
        f'topic_prefix = "{topic_prefix}"',
        "[tls]",
        f'ca = "{bundle}"',
        f'cert = "{issued.tls.cert}"',
        f'key = "{issued.tls.key}"',
        "[keys]",
        f'signing_key = "{issued.signing_key}"',
        f'encryption_key = "{issued.encryption_key}"',
        f'cluster_ca = "{ca.cert_path}"',
        "[node]",
        "publish_interval_s = 0.05",
        "rescan_interval_s = 0.2",
        "[gateway]",
        f'listen = "127.0.0.1:{port}"',
        "subscribe_poll_s = 0.02",
    ]
    if agreements:
        folder = AGREEMENTS if agreements is True else agreements
        lines.append(f'agreements_dir = "{folder}"')
    if peers:
        lines.append("[gateway.peers]")
        lines += [f'{m} = {{ address = "{a}", cluster = "{c}" }}' for m, (a, c) in peers.items()]
    if datasets:
        (tdir / "data" / "parking.geojson").write_text(json.dumps(PARKING), encoding="utf-8")
        (tdir / "data" / "permits.csv").write_text(PERMITS, encoding="utf-8")
        lines += [
            "[[node.datasets]]",
            'id = "parking-sites"',
            'file = "data/parking.geojson"',
            'title = "Parking"',
            'classification = "open"',
            "[[node.datasets]]",
            'id = "parking-permits"',
            'file = "data/permits.csv"',
            'title = "Permits"',
            'classification = "internal"',
            'id_field = "permit_id"',
        ]
    (tdir / "town.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = load_town_config(tdir / "town.toml", env={})
    list(import_configured(config.node))
    return Town(member, ca.cluster, tdir, config, bundle)


def reimport(town: Town) -> None:
    list(import_configured(town.config.node))


def publish_trust(
    ca: CertificateAuthority, backbone: BackboneConfig, members: list[str] | None = None
) -> list[str]:
    """The CA publishes its registry (every member, or ``members``) on ``<prefix>.trust``,
    signed, as ``allmende ca publish`` does; a node's trust follower applies it."""
    return publish_registry(ca, backbone, members)


def trust_versions(town: Town) -> dict[str, tuple[int, bool]]:
    """The town's trust table: member -> (version, revoked)."""
    conn = connect(town.config.node.store_path, readonly=True)
    try:
        rows = conn.execute("SELECT member, version, revoked FROM trust").fetchall()
    finally:
        conn.close()
    return {r[0]: (int(r[1]), bool(r[2])) for r in rows}


def wait_for_trust(
    town: Town, ca: CertificateAuthority, members: list[str] | None = None, timeout_s: float = 15.0
) -> None:
    """Until the town's trust table holds the CA's current version of every (or each named)
    member; raises AssertionError at the deadline."""
    registry = ca.registry()
    want = {
        m: (registry[m]["version"], registry[m]["revoked"]) for m in members or sorted(registry)
    }
    deadline = time.monotonic() + timeout_s
    while True:
        have = trust_versions(town)
        if all(have.get(m) == v for m, v in want.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{town.member}'s trust table is {have}, expected {want}")
        time.sleep(0.05)
