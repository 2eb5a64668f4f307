"""A town's TOML file is parsed once, with every problem reported together."""

from __future__ import annotations

from pathlib import Path

import pytest

from allmende.config import load_town_config
from allmende.errors import ConfigError

GOOD = """
[town]
member = "pirmasens"
cluster = "suedwest"
data_dir = "var"

[backbone]
bootstrap_servers = ["127.0.0.1:9092"]

[tls]
ca = "certs/ca.pem"
cert = "certs/pirmasens.pem"
key = "certs/pirmasens-key.pem"

[keys]
signing_key = "certs/pirmasens-signing-key.pem"
encryption_key = "certs/pirmasens-encryption-key.pem"
cluster_ca = "certs/ca.pem"

[gateway]
listen = "127.0.0.1:0"

[gateway.peers]
kaiserslautern = "127.0.0.1:7001"
luzern = { address = "127.0.0.1:7004", cluster = "zentralschweiz" }

[[node.datasets]]
id = "parking-sites"
file = "data/parking.geojson"
title = "Parkplätze"
classification = "open"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "town.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_good_file_parses_with_paths_relative_to_it(tmp_path: Path) -> None:
    cfg = load_town_config(write(tmp_path, GOOD), env={})
    assert cfg.node.member == "pirmasens"
    assert cfg.node.store_path == tmp_path / "var" / "store.sqlite"
    assert cfg.gateway.tls.cert == tmp_path / "certs" / "pirmasens.pem"
    assert cfg.gateway.peers["kaiserslautern"].cluster == "suedwest"
    assert cfg.gateway.peers["luzern"].cluster == "zentralschweiz"
    assert cfg.node.datasets[0].file == tmp_path / "data" / "parking.geojson"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "ALLMENDE_BACKBONE_BOOTSTRAP_SERVERS": "a:1, b:2",
        "ALLMENDE_GATEWAY_MAX_PAGE_SIZE": "50",
    }
    cfg = load_town_config(write(tmp_path, GOOD), env=env)
    assert cfg.node.backbone.bootstrap_servers == ("a:1", "b:2")
    assert cfg.gateway.max_page_size == 50


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = (
        GOOD.replace('member = "pirmasens"', 'member = "Pirmasens"')
        .replace('classification = "open"', 'classification = "public"\ncolour = "red"')
        .replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nmax_page_size = "many"')
    )
    with pytest.raises(ConfigError) as err:
        load_town_config(write(tmp_path, bad), env={"ALLMENDE_GATEWAY_DEFAULT_MAX_ROWS": "lots"})
    text = str(err.value)
    assert "[town] member 'Pirmasens'" in text
    assert "classification must be one of" in text
    assert "unknown key 'colour'" in text
    assert "max_page_size must be a int" in text
    assert "ALLMENDE_GATEWAY_DEFAULT_MAX_ROWS" in text
    assert len(err.value.problems) == 5


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"(?s)town.toml.*not valid TOML.*line 1"):
        load_town_config(write(tmp_path, "[town\nmember="), env={})


def test_audit_log_keys_and_policy_engine_defaults(tmp_path: Path) -> None:
    cfg = load_town_config(write(tmp_path, GOOD), env={})
    assert cfg.gateway.audit_log == tmp_path / "var" / "audit.log"
    assert cfg.node.audit_log == cfg.gateway.audit_log
    assert cfg.gateway.keys is not None
    assert cfg.gateway.keys.signing_key == tmp_path / "certs" / "pirmasens-signing-key.pem"
    assert (cfg.gateway.policy_engine, cfg.gateway.opa_url) == ("embedded", "")
    assert cfg.gateway.policy_poll_s == 1.0


def test_opa_engine_needs_a_url_and_unknown_engines_are_refused(tmp_path: Path) -> None:
    opa = GOOD.replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\npolicy_engine = "opa"')
    with pytest.raises(ConfigError, match=r'policy_engine = "opa" needs opa_url'):
        load_town_config(write(tmp_path, opa), env={})
    cfg = load_town_config(
        write(tmp_path, opa), env={"ALLMENDE_GATEWAY_OPA_URL": "http://127.0.0.1:8181"}
    )
    assert (cfg.gateway.policy_engine, cfg.gateway.opa_url) == ("opa", "http://127.0.0.1:8181")
    wrong = GOOD.replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\npolicy_engine = "x"')
    with pytest.raises(ConfigError, match="policy_engine must be one of embedded, opa"):
        load_town_config(write(tmp_path, wrong), env={})


def test_the_gateway_serves_on_uvloop_unless_the_town_chooses_asyncio(tmp_path: Path) -> None:
    assert load_town_config(write(tmp_path, GOOD), env={}).gateway.event_loop == "uvloop"
    chosen = GOOD.replace(
        'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nevent_loop = "asyncio"'
    )
    assert load_town_config(write(tmp_path, chosen), env={}).gateway.event_loop == "asyncio"
    env = {"ALLMENDE_GATEWAY_EVENT_LOOP": "asyncio"}
    assert load_town_config(write(tmp_path, GOOD), env=env).gateway.event_loop == "asyncio"
    wrong = GOOD.replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nevent_loop = "trio"')
    with pytest.raises(
        ConfigError, match=r"\[gateway\] event_loop must be one of uvloop, asyncio, not 'trio'"
    ):
        load_town_config(write(tmp_path, wrong), env={})


def test_metrics_endpoints_are_off_unless_set_and_checked(tmp_path: Path) -> None:
    cfg = load_town_config(write(tmp_path, GOOD), env={})
    assert (cfg.gateway.metrics_listen, cfg.node.metrics_listen) == ("", "")
    env = {"ALLMENDE_GATEWAY_METRICS_LISTEN": "127.0.0.1:9464"}
    cfg = load_town_config(write(tmp_path, GOOD + '\n[node]\nmetrics_listen = "0.0.0.0:0"\n'), env)
    assert (cfg.gateway.metrics_listen, cfg.node.metrics_listen) == ("127.0.0.1:9464", "0.0.0.0:0")
    with pytest.raises(ConfigError, match=r"\[node\] metrics_listen '9465' is not host:port"):
        load_town_config(write(tmp_path, GOOD + '\n[node]\nmetrics_listen = "9465"\n'), env={})
