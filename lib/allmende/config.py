"""Town configuration: one TOML file plus ALLMENDE_* variables, parsed once into frozen dataclasses.

Every problem is collected and reported at once as a ConfigError. Environment variables
override the file: ``ALLMENDE_<SECTION>_<KEY>`` (``ALLMENDE_BACKBONE_BOOTSTRAP_SERVERS``,
``ALLMENDE_GATEWAY_LISTEN``); lists are comma-separated. Nothing else reads the environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allmende.errors import ConfigError
from allmende.identity import NAME_PATTERN, TlsFiles

__all__ = [
    "BackboneConfig",
    "ClientConfig",
    "DatasetSource",
    "GatewayConfig",
    "KeyFiles",
    "NodeConfig",
    "Peer",
    "TownConfig",
    "load_client_config",
    "load_town_config",
]

CLASSIFICATIONS = ("open", "internal", "restricted")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
POLICY_ENGINES = ("embedded", "opa")
# The gateway's event loop: uvloop answers a call 50-100 µs sooner than asyncio's own loop
# on this project's bench machine (README, Speed); "asyncio" is the standard library's.
EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(frozen=True)
class BackboneConfig:
    """How to reach the Kafka backbone."""

    bootstrap_servers: tuple[str, ...]
    topic_prefix: str = "allmende"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""

    def kafka_options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python clients."""
        opts: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            opts.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.ssl_cafile:
            opts["ssl_cafile"] = self.ssl_cafile
        return opts


@dataclass(frozen=True)
class DatasetSource:
    """One dataset a node imports from a file and publishes."""

    id: str
    file: Path
    title: str
    classification: str
    description: str = ""
    keywords: tuple[str, ...] = ()
    license: str = ""
    source: str = ""
    id_field: str = ""
    format: str = ""
    schema: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyFiles:
    """A member's own keys and the CA certificate its cluster's trust statements verify with."""

    signing_key: Path
    encryption_key: Path
    cluster_ca: Path


@dataclass(frozen=True)
class NodeConfig:
    """What the node needs: who it is, its store, the backbone and its datasets."""

    member: str
    cluster: str
    store_path: Path
    backbone: BackboneConfig
    gateway_address: str
    datasets: tuple[DatasetSource, ...] = ()
    keys: KeyFiles | None = None
    agreements_dir: Path | None = None
    # Other members' datasets this node keeps a verified copy of: (owner, dataset).
    replicas: tuple[tuple[str, str], ...] = ()
    publish_interval_s: float = 0.2
    announce_interval_s: float = 30.0
    rescan_interval_s: float = 2.0
    # The gateway's audit log, whose entries the node signs onto <prefix>.decisions.
    audit_log: Path | None = None
    # host:port for Prometheus' GET /metrics ("" = no metrics endpoint; port 0 = any free).
    metrics_listen: str = ""


@dataclass(frozen=True)
class Peer:
    """Where another member's gateway answers, and the cluster whose CA vouches for it."""

    address: str
    cluster: str


@dataclass(frozen=True)
class GatewayConfig:
    """What the gateway needs: who it is, its TLS files, the store, its policy and its peers."""

    member: str
    cluster: str
    store_path: Path
    tls: TlsFiles
    listen: str
    advertise: str
    policy_dir: Path | None = None
    agreements_dir: Path | None = None
    peers: Mapping[str, Peer] = field(default_factory=dict)
    default_max_rows: int = 10000
    max_page_size: int = 1000
    subscribe_poll_s: float = 0.1
    trust_poll_s: float = 1.0
    # The member's own keys: the Ed25519 key signs audit checkpoints, and masks that hash
    # derive their per-agreement salt from it. None only for gateways built in tests.
    keys: KeyFiles | None = None
    # Hash-chained audit log of every decision; the gateway refuses to serve when it cannot
    # write it. None: <data_dir>/audit.log when read from a town file.
    audit_log: Path | None = None
    # "embedded" (regorus in process) or "opa" (an OPA server at opa_url, e.g. a sidecar).
    policy_engine: str = "embedded"
    opa_url: str = ""
    # How often the gateway looks for a newer verified policy bundle in its store.
    policy_poll_s: float = 1.0
    # host:port for Prometheus' GET /metrics ("" = no metrics endpoint; port 0 = any free).
    metrics_listen: str = ""
    # The event loop the gateway serves on: "uvloop" or "asyncio" (EVENT_LOOPS).
    event_loop: str = "uvloop"


@dataclass(frozen=True)
class TownConfig:
    """The whole town file; ``node`` and ``gateway`` are what each deployable receives."""

    path: Path
    node: NodeConfig
    gateway: GatewayConfig


class _Reader:
    """Walks the TOML tables, collecting problems instead of stopping at the first."""

    def __init__(self, data: Mapping[str, Any], env: Mapping[str, str], base: Path) -> None:
        self.data = data
        self.env = env
        self.base = base
        self.problems: list[str] = []

    def get(
        self, section: str, key: str, kind: type, default: Any = None, *, required: bool = False
    ) -> Any:
        env_name = f"ALLMENDE_{section.upper()}_{key.upper()}"
        table = self.data.get(section, {})
        if env_name in self.env:
            raw: Any = self.env[env_name]
            where = f"environment variable {env_name}"
            if kind is tuple:
                raw = [part.strip() for part in raw.split(",") if part.strip()]
            elif kind is int or kind is float:
                try:
                    raw = kind(raw)
                except ValueError:
                    self.problems.append(f"{where}: {raw!r} is not a {kind.__name__}")
                    return default
        elif key in table:
            raw, where = table[key], f"[{section}] {key}"
        else:
            if required:
                self.problems.append(f"[{section}] {key} is required")
            return default
        if kind is tuple:
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                self.problems.append(f"{where} must be a list of strings")
                return default
            return tuple(raw)
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw)
        if not isinstance(raw, kind) or (kind is int and isinstance(raw, bool)):
            self.problems.append(f"{where} must be a {kind.__name__}, got {raw!r}")
            return default
        return raw

    def path(
        self, section: str, key: str, default: str | None = None, *, required: bool = False
    ) -> Path | None:
        raw = self.get(section, key, str, default, required=required)
        if raw is None:
            return None
        p = Path(raw)
        return p if p.is_absolute() else (self.base / p)

    def name(self, section: str, key: str) -> str:
        value = self.get(section, key, str, "", required=True)
        if value and not NAME_PATTERN.fullmatch(value):
            self.problems.append(
                f"[{section}] {key} {value!r}: use lowercase letters, digits, hyphens"
            )
        return value

    def unknown_keys(self, section: str, known: set[str]) -> None:
        for key in self.data.get(section, {}):
            if key not in known:
                self.problems.append(f"[{section}] unknown key {key!r}")


def _datasets(r: _Reader) -> tuple[DatasetSource, ...]:
    out = []
    known = {
        "id",
        "file",
        "title",
        "classification",
        "description",
        "keywords",
        "license",
        "source",
        "id_field",
        "format",
        "schema",
    }
    seen: set[str] = set()
    for i, raw in enumerate(r.data.get("node", {}).get("datasets", []), start=1):
        where = f"[[node.datasets]] #{i}"
        if not isinstance(raw, dict):
            r.problems.append(f"{where} must be a table")
            continue
        for key in raw:
            if key not in known:
                r.problems.append(f"{where}: unknown key {key!r}")
        for key in ("id", "file", "title", "classification"):
            if not isinstance(raw.get(key), str) or not raw.get(key):
                r.problems.append(f"{where}: {key} is required (a string)")
        ds_id = raw.get("id", "")
        if isinstance(ds_id, str) and ds_id and not NAME_PATTERN.fullmatch(ds_id):
            r.problems.append(f"{where}: id {ds_id!r}: use lowercase letters, digits, hyphens")
        if ds_id in seen:
            r.problems.append(f"{where}: dataset id {ds_id!r} appears twice")
        seen.add(ds_id)
        if raw.get("classification") not in CLASSIFICATIONS:
            r.problems.append(
                f"{where}: classification must be one of {', '.join(CLASSIFICATIONS)}"
            )
        schema = raw.get("schema", {})
        if not isinstance(schema, dict) or not all(isinstance(v, str) for v in schema.values()):
            r.problems.append(f"{where}: schema must map field names to type names")
            schema = {}
        keywords = raw.get("keywords", [])
        if not isinstance(keywords, list):
            r.problems.append(f"{where}: keywords must be a list of strings")
            keywords = []
        file = Path(str(raw.get("file", "")))
        out.append(
            DatasetSource(
                id=str(ds_id),
                file=file if file.is_absolute() else r.base / file,
                title=str(raw.get("title", "")),
                classification=str(raw.get("classification", "")),
                description=str(raw.get("description", "")),
                keywords=tuple(map(str, keywords)),
                license=str(raw.get("license", "")),
                source=str(raw.get("source", "")),
                id_field=str(raw.get("id_field", "")),
                format=str(raw.get("format", "")),
                schema=dict(schema),
            )
        )
    return tuple(out)


def _replicas(r: _Reader, member: str) -> tuple[tuple[str, str], ...]:
    """``[node] replicas = ["kaiserslautern/parking-permits", …]``: other members' datasets."""
    out: list[tuple[str, str]] = []
    for item in r.get("node", "replicas", tuple, ()):
        owner, _, dataset = item.partition("/")
        if not (NAME_PATTERN.fullmatch(owner) and NAME_PATTERN.fullmatch(dataset)):
            r.problems.append(f"[node] replicas: {item!r} is not owner/dataset")
        elif owner == member:
            r.problems.append(f"[node] replicas: {item!r} is our own dataset")
        elif (owner, dataset) in out:
            r.problems.append(f"[node] replicas: {item!r} appears twice")
        else:
            out.append((owner, dataset))
    return tuple(out)


def _listen(r: _Reader, section: str, key: str) -> str:
    """An optional "host:port" (port 0 = any free one); "" when not set."""
    value = r.get(section, key, str, "")
    host, _, port = value.rpartition(":")
    if value and not (host and port.isdigit() and int(port) < 65536):
        r.problems.append(f"[{section}] {key} {value!r} is not host:port")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc


def _peers(r: _Reader, raw: Any, cluster: str) -> dict[str, Peer]:
    """``member = "host:port"`` or ``member = {address = "host:port", cluster = "other"}``."""
    out: dict[str, Peer] = {}
    if not isinstance(raw, dict):
        r.problems.append("[gateway.peers] must be a table of member = address")
        return out
    for member, value in raw.items():
        where = f"[gateway.peers] {member}"
        if not NAME_PATTERN.fullmatch(member):
            r.problems.append(f"{where}: not a valid member name")
        if isinstance(value, str):
            value = {"address": value}
        if not isinstance(value, dict) or not isinstance(value.get("address"), str):
            r.problems.append(f'{where} must be "host:port" or {{address = ..., cluster = ...}}')
            continue
        unknown = set(value) - {"address", "cluster"}
        if unknown:
            r.problems.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        host, _, port = value["address"].rpartition(":")
        if not host or not port.isdigit():
            r.problems.append(f"{where}: address {value['address']!r} is not host:port")
        out[member] = Peer(address=value["address"], cluster=str(value.get("cluster", cluster)))
    return out


def load_town_config(path: str | Path, env: Mapping[str, str] | None = None) -> TownConfig:
    """Read a town's TOML file; relative paths are taken from the file's folder.

    Raises ConfigError listing every problem (unreadable file, TOML syntax with its line,
    missing or mistyped keys, unknown keys, bad names).
    """
    path = Path(path)
    env = os.environ if env is None else env
    data = _read_toml(path)
    r = _Reader(data, env, path.resolve().parent)
    for section in data:
        if section not in ("town", "backbone", "tls", "keys", "node", "gateway"):
            r.problems.append(f"unknown section [{section}]")
    r.unknown_keys("town", {"member", "cluster", "data_dir"})
    r.unknown_keys(
        "backbone",
        {
            "bootstrap_servers",
            "topic_prefix",
            "security_protocol",
            "sasl_mechanism",
            "sasl_username",
            "sasl_password",
            "ssl_cafile",
        },
    )
    r.unknown_keys("tls", {"ca", "cert", "key"})
    r.unknown_keys("keys", {"signing_key", "encryption_key", "cluster_ca"})
    r.unknown_keys(
        "node",
        {
            "datasets",
            "replicas",
            "publish_interval_s",
            "announce_interval_s",
            "rescan_interval_s",
            "metrics_listen",
        },
    )
    r.unknown_keys(
        "gateway",
        {
            "listen",
            "advertise",
            "policy_dir",
            "agreements_dir",
            "peers",
            "default_max_rows",
            "max_page_size",
            "subscribe_poll_s",
            "trust_poll_s",
            "audit_log",
            "policy_engine",
            "opa_url",
            "policy_poll_s",
            "metrics_listen",
            "event_loop",
        },
    )

    member, cluster = r.name("town", "member"), r.name("town", "cluster")
    data_dir = r.path("town", "data_dir", "var") or Path("var")
    backbone = BackboneConfig(
        bootstrap_servers=r.get("backbone", "bootstrap_servers", tuple, (), required=True),
        topic_prefix=r.get("backbone", "topic_prefix", str, "allmende"),
        security_protocol=r.get("backbone", "security_protocol", str, "PLAINTEXT"),
        sasl_mechanism=r.get("backbone", "sasl_mechanism", str, ""),
        sasl_username=r.get("backbone", "sasl_username", str, ""),
        sasl_password=r.get("backbone", "sasl_password", str, ""),
        ssl_cafile=r.get("backbone", "ssl_cafile", str, ""),
    )
    if backbone.security_protocol not in SECURITY_PROTOCOLS:
        r.problems.append(
            f"[backbone] security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    tls = TlsFiles(
        ca=r.path("tls", "ca", required=True) or Path(),
        cert=r.path("tls", "cert", required=True) or Path(),
        key=r.path("tls", "key", required=True) or Path(),
    )
    listen = r.get("gateway", "listen", str, "127.0.0.1:7443")
    peers = _peers(r, data.get("gateway", {}).get("peers", {}), cluster)
    keys = KeyFiles(
        signing_key=r.path("keys", "signing_key", required=True) or Path(),
        encryption_key=r.path("keys", "encryption_key", required=True) or Path(),
        cluster_ca=r.path("keys", "cluster_ca", required=True) or Path(),
    )
    audit_log = r.path("gateway", "audit_log") or data_dir / "audit.log"
    policy_engine = r.get("gateway", "policy_engine", str, "embedded")
    opa_url = r.get("gateway", "opa_url", str, "")
    if policy_engine not in POLICY_ENGINES:
        r.problems.append(f"[gateway] policy_engine must be one of {', '.join(POLICY_ENGINES)}")
    elif policy_engine == "opa" and not opa_url:
        r.problems.append('[gateway] policy_engine = "opa" needs opa_url (http://host:port)')
    event_loop = r.get("gateway", "event_loop", str, "uvloop")
    if event_loop not in EVENT_LOOPS:
        r.problems.append(
            f"[gateway] event_loop must be one of {', '.join(EVENT_LOOPS)}, not {event_loop!r}"
        )
    gateway = GatewayConfig(
        member=member,
        cluster=cluster,
        store_path=data_dir / "store.sqlite",
        tls=tls,
        listen=listen,
        advertise=r.get("gateway", "advertise", str, listen),
        policy_dir=r.path("gateway", "policy_dir"),
        agreements_dir=r.path("gateway", "agreements_dir"),
        peers=peers,
        default_max_rows=r.get("gateway", "default_max_rows", int, 10000),
        max_page_size=r.get("gateway", "max_page_size", int, 1000),
        subscribe_poll_s=r.get("gateway", "subscribe_poll_s", float, 0.1),
        trust_poll_s=r.get("gateway", "trust_poll_s", float, 1.0),
        keys=keys,
        audit_log=audit_log,
        policy_engine=policy_engine,
        opa_url=opa_url,
        policy_poll_s=r.get("gateway", "policy_poll_s", float, 1.0),
        metrics_listen=_listen(r, "gateway", "metrics_listen"),
        event_loop=event_loop,
    )
    node = NodeConfig(
        member=member,
        cluster=cluster,
        store_path=data_dir / "store.sqlite",
        backbone=backbone,
        gateway_address=gateway.advertise,
        datasets=_datasets(r),
        keys=keys,
        agreements_dir=gateway.agreements_dir,
        publish_interval_s=r.get("node", "publish_interval_s", float, 0.2),
        announce_interval_s=r.get("node", "announce_interval_s", float, 30.0),
        rescan_interval_s=r.get("node", "rescan_interval_s", float, 2.0),
        replicas=_replicas(r, member),
        audit_log=audit_log,
        metrics_listen=_listen(r, "node", "metrics_listen"),
    )
    if r.problems:
        raise ConfigError(str(path), r.problems)
    return TownConfig(path=path, node=node, gateway=gateway)


@dataclass(frozen=True)
class ClientConfig:
    """A consuming service's profile: its town's gateway and its own certificate."""

    path: Path
    gateway: str
    tls: TlsFiles
    server_name: str = ""


def load_client_config(path: str | Path, env: Mapping[str, str] | None = None) -> ClientConfig:
    """Read a client profile (``[client] gateway, ca, cert, key, server_name``).

    Raises ConfigError listing every problem.
    """
    path = Path(path)
    env = os.environ if env is None else env
    data = _read_toml(path)
    r = _Reader(data, env, path.resolve().parent)
    for section in data:
        if section != "client":
            r.problems.append(f"unknown section [{section}]")
    r.unknown_keys("client", {"gateway", "ca", "cert", "key", "server_name"})
    gateway = r.get("client", "gateway", str, "", required=True)
    tls = TlsFiles(
        ca=r.path("client", "ca", required=True) or Path(),
        cert=r.path("client", "cert", required=True) or Path(),
        key=r.path("client", "key", required=True) or Path(),
    )
    server_name = r.get("client", "server_name", str, "")
    if r.problems:
        raise ConfigError(str(path), r.problems)
    return ClientConfig(path=path, gateway=gateway, tls=tls, server_name=server_name)
