"""A throw-away town for the benchmarks: a CA, certificates, town.toml, an agreement and a
SQLite store filled by the real importer (as tests/integration/towns.py does)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from allmende.broker import free_port
from allmende.ca import CertificateAuthority
from allmende.config import TownConfig, load_town_config
from allmende.identity import TlsFiles, gateway_server_name
from allmende_node.importer import import_configured

__all__ = ["BenchTown", "make_bench_town"]

OWNER = "kaiserslautern"
CONSUMER = "pirmasens"
DATASET = "parking-permits"
PURPOSE = "traffic-planning"

AGREEMENT = f"""\
agreement: ka-ps-permits-bench
provider: {OWNER}
datasets: [{DATASET}]
consumers: [{CONSUMER}]
purposes: [{PURPOSE}]
mask:
  holder: redact
  plate: redact
valid_from: 2020-01-01
valid_until: 2099-01-01
max_rows: 10000000
"""


@dataclass(frozen=True)
class BenchTown:
    dir: Path
    config: TownConfig
    owner_tls: TlsFiles  # the gateway's own certificate (bare servers reuse it)
    consumer_tls: TlsFiles  # a consuming service of the partner town
    server_name: str
    rows: int


def make_bench_town(root: Path, rows: int) -> BenchTown:
    """The owner town with ``rows`` internal permit records and an agreement with the consumer."""
    ca = CertificateAuthority.init(root / "ca", "suedwest")
    tdir = root / OWNER
    (tdir / "data").mkdir(parents=True, exist_ok=True)
    (tdir / "agreements").mkdir()
    (tdir / "agreements" / "bench.yaml").write_text(AGREEMENT, encoding="utf-8")
    issued = ca.issue(tdir / "certs", OWNER)
    consumer = ca.issue(root / CONSUMER / "certs", CONSUMER, "bench")
    lines = ["permit_id,holder,plate,district,zone"]
    lines += [
        f"KL-{i:06d},Holder {i},KL-AB {i},{'Innenstadt' if i % 3 == 0 else 'Betzenberg'},Z{i % 4}"
        for i in range(1, rows + 1)
    ]
    (tdir / "data" / "permits.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    toml = [
        "[town]",
        f'member = "{OWNER}"',
        f'cluster = "{ca.cluster}"',
        'data_dir = "var"',
        "[backbone]",
        'bootstrap_servers = ["127.0.0.1:1"]',
        "[tls]",
        f'ca = "{ca.cert_path}"',
        f'cert = "{issued.tls.cert}"',
        f'key = "{issued.tls.key}"',
        "[keys]",
        f'signing_key = "{issued.signing_key}"',
        f'encryption_key = "{issued.encryption_key}"',
        f'cluster_ca = "{ca.cert_path}"',
        "[gateway]",
        f'listen = "127.0.0.1:{free_port()}"',
        "subscribe_poll_s = 0.02",
        f'agreements_dir = "{tdir / "agreements"}"',
        f"max_page_size = {min(max(rows, 1000), 10_000)}",
        f"default_max_rows = {max(rows, 10_000)}",
        "[[node.datasets]]",
        f'id = "{DATASET}"',
        'file = "data/permits.csv"',
        'title = "Permits"',
        'classification = "internal"',
        'id_field = "permit_id"',
    ]
    (tdir / "town.toml").write_text("\n".join(toml) + "\n", encoding="utf-8")
    config = load_town_config(tdir / "town.toml", env={})
    list(import_configured(config.node))
    return BenchTown(
        dir=tdir,
        config=config,
        owner_tls=TlsFiles(ca=ca.cert_path, cert=issued.tls.cert, key=issued.tls.key),
        consumer_tls=TlsFiles(ca=ca.cert_path, cert=consumer.tls.cert, key=consumer.tls.key),
        server_name=gateway_server_name(ca.cluster, OWNER),
        rows=rows,
    )
