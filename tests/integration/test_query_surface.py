"""The query surface through a real owner gateway (mutual TLS, Rego, SQLite): and/or/not,
prefix, is_null, a box, a distance, a time range, order by with keyset pages, tokens bound
to the query and the caller, and a policy row filter no caller expression can widen.

Expected results are computed here in plain Python over the same records; the compiler's
exhaustive check against a reference evaluator is tests/unit/test_expressions_hypothesis.py.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from allmende.ca import CertificateAuthority
from allmende.client import GatewayClient
from allmende.errors import InvalidRequest, PolicyDenied
from allmende.identity import gateway_server_name
from allmende.v1 import query_pb2
from allmende.where import (
    all_of,
    any_of,
    between,
    compare,
    is_null,
    near,
    not_,
    within_box,
)
from allmende_gateway import GatewayThread

from .towns import PARKING, Town, make_town, reimport

pytestmark = pytest.mark.integration

KL, SITES, PERMITS = "kaiserslautern", "parking-sites", "parking-permits"
UTC = dt.UTC


def opened(i: int) -> str | None:
    """A timestamp per site, in several zones; site 5 has none."""
    if i == 5:
        return None
    zone = "+02:00" if i % 3 == 0 else "Z"
    hour = 8 + i if zone == "Z" else 10 + i  # +02:00: two hours later on the clock
    return f"2026-03-{i:02d}T{hour:02d}:00:00{zone}"


def sites() -> list[dict[str, Any]]:
    out = []
    for f in PARKING["features"]:
        props = dict(f["properties"])
        i = int(props["id"].split("-")[1])
        props["opened"] = opened(i)
        props["geom"] = f["geometry"]
        out.append(props)
    return out


@dataclass
class Setup:
    ca: CertificateAuthority
    kl: Town
    sw: Town
    gateway: GatewayThread

    def owner(self) -> GatewayClient:
        return self.kl.client(self.ca, "dashboard")

    def partner(self) -> GatewayClient:
        """Sankt Wendel's research service, straight to Kaiserslautern's gateway."""
        return GatewayClient(
            self.kl.config.gateway.listen,
            self.sw.service_tls(self.ca, "research"),
            server_name=gateway_server_name(self.ca.cluster, KL),
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("surface")
    ca = CertificateAuthority.init(root / "ca", "suedwest")
    kl = make_town(root, ca, ca.cert_path, KL, datasets=True, agreements=True)
    features = json.loads(json.dumps(PARKING))
    for f in features["features"]:
        i = int(f["properties"]["id"].split("-")[1])
        f["properties"]["opened"] = opened(i)
    (kl.dir / "data" / "parking.geojson").write_text(json.dumps(features), encoding="utf-8")
    reimport(kl)
    sw = make_town(root, ca, ca.cert_path, "sankt-wendel")
    gateway = GatewayThread(kl.config.gateway).start()
    try:
        yield Setup(ca, kl, sw, gateway)
    finally:
        gateway.stop()


def ids(records: Any) -> list[str]:
    return [json.loads(r.json)["id"] for r in records]


def metres(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def instant(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


START, UNTIL = dt.datetime(2026, 3, 3, 0, tzinfo=UTC), dt.datetime(2026, 3, 9, 14, tzinfo=UTC)

CASES: list[tuple[str, query_pb2.Expression, Callable[[dict[str, Any]], bool]]] = [
    (
        "or of comparisons",
        any_of(compare("capacity", "<", 300), compare("capacity", ">=", 1100)),
        lambda r: r["capacity"] < 300 or r["capacity"] >= 1100,
    ),
    (
        "not and in",
        all_of(
            not_(compare("district", "=", "West")),
            compare("capacity", "in", [100, 300, 400, 500]),
        ),
        lambda r: r["district"] != "West" and r["capacity"] in (100, 300, 400, 500),
    ),
    (
        "prefix",
        compare("name", "prefix", "Parkhaus 1"),
        lambda r: r["name"].startswith("Parkhaus 1"),
    ),
    ("is null", is_null("opened"), lambda r: r["opened"] is None),
    ("is not null", is_null("opened", False), lambda r: r["opened"] is not None),
    (
        "a comparison with a null is false, its negation true",
        not_(compare("opened", ">", "2026-03-06T00:00:00Z")),
        lambda r: (
            not (
                r["opened"] is not None
                and instant(r["opened"]) > dt.datetime(2026, 3, 6, tzinfo=UTC)
            )
        ),  # type: ignore[operator]
    ),
    (
        "box",
        within_box("geom", 7.79, 49.0, 7.825, 50.0),
        lambda r: 7.79 <= r["geom"]["coordinates"][0] <= 7.825,
    ),
    (
        "within a distance",
        near("geom", 7.80, 49.44, meters=2_500),
        lambda r: metres(7.80, 49.44, *r["geom"]["coordinates"]) <= 2_500,
    ),
    (
        "time range across zones",
        between("opened", START, UNTIL),
        lambda r: r["opened"] is not None and START <= instant(r["opened"]) < UNTIL,  # type: ignore[operator]
    ),
    (
        "nested",
        all_of(
            any_of(compare("district", "=", "Innenstadt"), near("geom", 7.87, 49.44, meters=800)),
            not_(between("opened", None, START)),
        ),
        lambda r: (
            (r["district"] == "Innenstadt" or metres(7.87, 49.44, *r["geom"]["coordinates"]) <= 800)
            and not (r["opened"] is not None and instant(r["opened"]) < START)
        ),  # type: ignore[operator]
    ),
]


@pytest.mark.parametrize(("what", "expr", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_operator_against_python(
    setup: Setup, what: str, expr: query_pb2.Expression, expected: Callable[[dict[str, Any]], bool]
) -> None:
    want = sorted(r["id"] for r in sites() if expected(r))
    with setup.owner() as c:
        got = ids(c.query_all(KL, SITES, "planning", expression=expr, page_size=5))
    assert got == want, what
    assert 0 < len(want) < len(sites()) or what.startswith(("is null", "is not null"))


def test_order_by_pages_have_no_gap_and_no_repeat(setup: Setup) -> None:
    rows = sites()
    want = [r["id"] for r in sorted(rows, key=lambda r: r["id"])]
    want = [r["id"] for r in sorted(rows, key=lambda r: -r["capacity"])]
    with setup.owner() as c:
        assert ids(c.query_all(KL, SITES, "planning", order_by=["-capacity"], page_size=5)) == want
        # Ties on district are broken by id; nulls of `opened` come first ascending.
        by_district = sorted(rows, key=lambda r: (r["district"], -r["capacity"], r["id"]))
        got = ids(
            c.query_all(KL, SITES, "planning", order_by=["district", "-capacity"], page_size=4)
        )
        assert got == [r["id"] for r in by_district]
        by_opened = sorted(rows, key=lambda r: (r["opened"] is not None, instant(r["opened"]) or 0))
        got = ids(c.query_all(KL, SITES, "planning", order_by=["opened"], page_size=3))
        assert got == [r["id"] for r in by_opened]


def test_page_tokens_are_bound_to_the_query_and_the_caller(setup: Setup) -> None:
    with setup.owner() as c:
        first = c.query(KL, SITES, "planning", order_by=["-capacity"], page_size=5)
        token = first.next_page_token
        assert token
        with pytest.raises(InvalidRequest, match="page_token"):
            c.query(KL, SITES, "planning", order_by=["capacity"], page_size=5, page_token=token)
        with pytest.raises(InvalidRequest, match="page_token"):
            c.query(
                KL,
                SITES,
                "planning",
                order_by=["-capacity"],
                expression=compare("capacity", ">", 0),
                page_size=5,
                page_token=token,
            )
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        with pytest.raises(InvalidRequest, match="page_token"):
            c.query(KL, SITES, "planning", order_by=["-capacity"], page_size=5, page_token=forged)
        second = c.query(
            KL, SITES, "planning", order_by=["-capacity"], page_size=5, page_token=token
        )
        assert not set(ids(first.records)) & set(ids(second.records))
    with setup.partner() as p, pytest.raises(InvalidRequest, match="page_token"):
        p.query(KL, SITES, "planning", order_by=["-capacity"], page_size=5, page_token=token)


def test_a_caller_expression_cannot_widen_the_policy_row_filter(setup: Setup) -> None:
    """ka-wnd-permits-2026: Sankt Wendel sees only Innenstadt permits, plates redacted."""
    widening = [
        any_of(
            compare("district", "=", "Betzenberg"), not_(compare("district", "=", "Innenstadt"))
        ),
        any_of(compare("zone", "prefix", "Z"), is_null("district")),
        not_(compare("district", "=", "Innenstadt")),
    ]
    with setup.partner() as p:
        everything = [json.loads(r.json) for r in p.query_all(KL, PERMITS, "research")]
        assert everything and {r["district"] for r in everything} == {"Innenstadt"}
        for expr in widening:
            got = [
                json.loads(r.json) for r in p.query_all(KL, PERMITS, "research", expression=expr)
            ]
            assert {r["district"] for r in got} <= {"Innenstadt"}
            assert all(r["plate"] is None for r in got)


def test_masked_fields_cannot_be_filtered_or_ordered_anywhere_in_an_expression(
    setup: Setup,
) -> None:
    with setup.partner() as p:
        nested = any_of(compare("zone", "=", "Z1"), not_(compare("plate", "prefix", "KL-AB 1")))
        with pytest.raises(PolicyDenied, match=r"'plate' is masked .* filter"):
            p.query(KL, PERMITS, "research", expression=nested)
        with pytest.raises(PolicyDenied, match=r"'plate' is masked .* sort order"):
            p.query(KL, PERMITS, "research", order_by=["plate"])


def test_a_bad_expression_names_its_place_and_field(setup: Setup) -> None:
    with setup.owner() as c:
        bad = any_of(compare("capacity", ">", 1), compare("capcity", "<", 5))
        with pytest.raises(InvalidRequest, match=r"filter\.where\.or\[1\].*'capcity'") as err:
            c.query(KL, SITES, "planning", expression=bad)
        assert err.value.field == "capcity"
        with pytest.raises(InvalidRequest, match="prefix"):
            c.query(KL, SITES, "planning", expression=compare("capacity", "prefix", "1"))
        with pytest.raises(InvalidRequest, match="geom"):
            c.query(KL, SITES, "planning", expression=near("geom", 7.8, 95.0, meters=10))
        with pytest.raises(InvalidRequest, match=r"order_by\[0\].*geometry"):
            c.query(KL, SITES, "planning", order_by=["geom"])


def test_subscribe_and_aggregate_take_the_same_expressions(setup: Setup) -> None:
    box = within_box("geom", 7.79, 49.0, 7.825, 50.0)
    want = sorted(r["id"] for r in sites() if 7.79 <= r["geom"]["coordinates"][0] <= 7.825)
    with setup.owner() as c:
        sub = c.subscribe(
            KL, SITES, "planning", expression=box, start=query_pb2.START_FROM_BEGINNING
        )
        got: list[str] = []
        try:
            for event in sub:
                if event.HasField("record") and event.record.json:
                    got.append(json.loads(event.record.json)["id"])
                if len(got) == len(want):
                    break
        finally:
            sub.cancel()
        assert sorted(got) == want
        result = c.aggregate(KL, SITES, "planning", measures=["count"], expression=box)
        assert [json.loads(g)["count"] for g in result.groups] == [len(want)]


def test_the_stored_data_is_untouched_by_bad_requests(setup: Setup, tmp_path: Path) -> None:
    store = setup.kl.config.node.store_path
    before = store.read_bytes()
    with setup.owner() as c:
        for expr in (compare("nope", "=", 1), near("geom", 0, 0, meters=-1)):
            with pytest.raises(InvalidRequest):
                c.query(KL, SITES, "planning", expression=expr)
    assert store.read_bytes() == before


def test_the_query_command_takes_the_same_filters(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from allmende_cli.main import main

    tls = setup.kl.service_tls(setup.ca, "dashboard")
    profile = tmp_path / "client.toml"
    profile.write_text(
        "[client]\n"
        f'gateway = "{setup.kl.config.gateway.listen}"\n'
        f'ca = "{tls.ca}"\ncert = "{tls.cert}"\nkey = "{tls.key}"\n'
        f'server_name = "{gateway_server_name(setup.ca.cluster, KL)}"\n'
    )
    base = ["query", "--profile", str(profile), f"{KL}/{SITES}", "--purpose", "planning"]
    opts = ["--near", "geom=7.80,49.44,2500", "--order-by=-capacity", "--json"]
    assert main([*base, *opts]) == 0
    got = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    near_by = [r for r in sites() if metres(7.80, 49.44, *r["geom"]["coordinates"]) <= 2_500]
    assert got == [r["id"] for r in sorted(near_by, key=lambda r: -r["capacity"])]
    either = ["--where", "capacity<200", "--where", "capacity>1100", "--any", "--json"]
    assert main([*base, *either]) == 0
    got = sorted(json.loads(line)["id"] for line in capsys.readouterr().out.splitlines())
    assert got == ["p-01", "p-12"]
    assert main([*base, "--box", "geom=1,2,3"]) == 2
    assert "--box 'geom=1,2,3': write FIELD=N,N,N,N" in capsys.readouterr().err
