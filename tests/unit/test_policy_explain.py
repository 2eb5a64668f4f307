"""`allmende policy explain`: the gateway's policy input, the decision, the rule, and the CLI."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from allmende.errors import InvalidRequest, PolicyDenied
from allmende.identity import Identity
from allmende.policy import BUNDLED_POLICY_DIR, PolicyEngine
from allmende.policy.explain import (
    DatasetFacts,
    Subject,
    agreement_files,
    describe_mask,
    explain,
    format_explanation,
    parse_time,
    policy_input,
)
from allmende.v1 import catalog_pb2
from allmende_cli.main import main
from allmende_gateway.authentication import Caller
from allmende_gateway.enforcement import Enforcer

KL, SW = "kaiserslautern", "suedwest"
AT = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
FIELDS = ("permit_id", "holder", "plate", "district", "zone")
PERMITS = DatasetFacts(KL, "parking-permits", "internal", FIELDS)
SITES = DatasetFacts(KL, "parking-sites", "open", ("id", "name", "capacity"))

AGREEMENTS = {
    "ka-ps.yaml": """
agreement: ka-ps-permits
provider: kaiserslautern
datasets: [parking-permits]
consumers: [pirmasens]
purposes: [traffic-planning]
mask: {holder: redact, plate: hash, zone: {bucket: 5}}
valid_from: 2026-01-01
valid_until: 2099-01-01
max_rows: 20
requests_per_minute: 60
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


def write_agreements(folder: Path, texts: dict[str, str] = AGREEMENTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def agreements_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_agreements(tmp_path_factory.mktemp("agreements"))


@pytest.fixture(scope="module")
def engine(agreements_dir: Path) -> PolicyEngine:
    return PolicyEngine.from_paths(BUNDLED_POLICY_DIR, agreements_dir, {"default_max_rows": 1000})


def descriptor(facts: DatasetFacts) -> catalog_pb2.DatasetDescriptor:
    classes = {v: k for k, v in {1: "open", 2: "internal", 3: "restricted"}.items()}
    return catalog_pb2.DatasetDescriptor(
        owner=facts.owner,
        id=facts.dataset,
        classification=classes[facts.classification],  # type: ignore[arg-type]
        fields=[catalog_pb2.Field(name=f) for f in facts.fields],
    )


def test_classification_numbers_are_the_protos() -> None:
    assert catalog_pb2.CLASSIFICATION_OPEN == 1
    assert catalog_pb2.CLASSIFICATION_INTERNAL == 2
    assert catalog_pb2.CLASSIFICATION_RESTRICTED == 3


def test_policy_input_is_exactly_the_gateways() -> None:
    enforcer = Enforcer(None, owner=KL, cluster=SW, clock=lambda: AT)  # type: ignore[arg-type]
    caller = Caller(Identity(SW, "pirmasens", "dashboard"), via_gateway=True)
    for facts in (PERMITS, SITES):
        for action in ("query", "subscribe", "aggregate"):
            gateway = enforcer.policy_input(
                caller, action, descriptor(facts), "traffic-planning", ["holder"], 50
            )
            ours = policy_input(
                Subject("pirmasens", SW, "dashboard"),
                action,
                DatasetFacts.from_descriptor(descriptor(facts)),
                SW,
                "traffic-planning",
                ["holder"],
                50,
                AT,
            )
            assert ours == gateway


CASES = [
    # member, dataset, purpose, action, used, functions, allow, rule (start), reasons (part)
    (KL, PERMITS, "anything", "query", (), (), True, "baseline: owner reads", "owner reads"),
    ("pirmasens", SITES, "x", "query", (), (), True, "baseline: open dataset", "open dataset"),
    (
        "pirmasens",
        PERMITS,
        "traffic-planning",
        "query",
        (),
        (),
        True,
        "baseline → agreements: agreement ka-ps-permits",
        "agreement ka-ps-permits grants pirmasens",
    ),
    (
        "sankt-wendel",
        PERMITS,
        "research",
        "subscribe",
        (),
        (),
        True,
        "baseline → agreements: agreement ka-wnd-permits",
        "ka-wnd-permits grants",
    ),
    (
        "pirmasens",
        PERMITS,
        "marketing",
        "query",
        (),
        (),
        False,
        "baseline → agreements: no agreement grants",
        "purpose marketing is not among the purposes of agreement ka-ps-permits",
    ),
    (
        "kusel",
        PERMITS,
        "research",
        "query",
        (),
        (),
        False,
        "baseline → agreements: no agreement grants",
        "agreement ka-kus-old expired at 2021-01-01",
    ),
    (
        "zweibruecken",
        PERMITS,
        "statistics",
        "query",
        (),
        (),
        False,
        "gateway: the grant is aggregate-only",
        "grants zweibruecken aggregates only (groups of at least 5 records): use Aggregate",
    ),
    (
        "zweibruecken",
        PERMITS,
        "statistics",
        "aggregate",
        (),
        ("COUNT", "MAX"),
        False,
        "gateway: the aggregate-only grant allows COUNT, SUM and AVG only",
        "counts, sums and averages only (MAX would reveal single records)",
    ),
    (
        "zweibruecken",
        PERMITS,
        "statistics",
        "aggregate",
        (),
        ("COUNT", "SUM"),
        True,
        "baseline → agreements: agreement ka-zw-statistics",
        "ka-zw-statistics grants",
    ),
    (
        "pirmasens",
        PERMITS,
        "traffic-planning",
        "query",
        ("holder",),
        (),
        False,
        "gateway: a masked field",
        "field 'holder' is masked for pirmasens and cannot be used in a filter",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}-{c[6]}")
def test_explain_matches_the_gateways_enforcer(engine: PolicyEngine, case: tuple) -> None:
    """Every case is decided twice: by explain, and by the gateway's Enforcer (decide, then
    grant); allowed or denied, reasons, masks and limits must be the same."""
    member, facts, purpose, action, used, functions, allow, rule, reason = case
    desc = descriptor(facts)
    got = explain(
        engine,
        Subject(member, SW, "svc"),
        DatasetFacts.from_descriptor(desc),
        purpose,
        cluster=SW,
        action=action,
        filter_fields=used,
        functions=functions,
        at=AT,
        known_agreements=engine.agreement_ids,
    )
    assert got.allow is allow
    assert got.rule.startswith(rule), got.rule
    assert any(reason in r for r in got.reasons), got.reasons

    enforcer = Enforcer(engine, owner=KL, cluster=SW, clock=lambda: AT, mask_key=b"k" * 32)
    caller = Caller(Identity(SW, member, "svc"), via_gateway=False)
    document, decision = enforcer.decide(caller, action, desc, purpose, [], 100)
    assert document == got.input
    try:
        grant = enforcer.grant(
            caller, action, desc, decision, [], dict.fromkeys(used, "filter"), functions
        )
    except PolicyDenied as exc:
        assert not got.allow
        assert tuple(exc.reasons) == got.reasons
        assert exc.policy_version == got.policy_version
        return
    assert got.allow
    assert dict(grant.summary.masked_fields) == dict(got.masked)
    assert grant.max_rows == got.max_rows
    assert json.loads(grant.summary.row_filter_json or "{}") == dict(got.to_dict()["row_filter"])
    assert list(grant.summary.reasons) == list(got.reasons)
    assert grant.summary.way_in == got.way_in
    assert tuple(grant.summary.agreements) == got.agreements
    assert grant.summary.min_group_size == got.min_group_size
    assert grant.summary.requests_per_minute == got.requests_per_minute


def test_obligations_of_the_granting_agreement_are_explained(
    engine: PolicyEngine, agreements_dir: Path
) -> None:
    got = explain(
        engine,
        Subject("pirmasens", SW),
        PERMITS,
        "traffic-planning",
        cluster=SW,
        at=AT,
        files=agreement_files(agreements_dir),
    )
    assert got.allow and got.way_in == "agreement"
    assert got.agreements == ("ka-ps-permits",)
    assert got.masked == {"holder": "redact", "plate": "hash:ka-ps-permits", "zone": "bucket:5"}
    assert got.decision["mask"] == got.masked  # no field types known: the policy's specs
    assert got.max_rows == 20 and got.requests_per_minute == 60
    text = format_explanation(got)
    assert "ALLOWED: pirmasens (suedwest) query kaiserslautern/parking-permits" in text
    assert f"ka-ps-permits ({agreements_dir / 'ka-ps.yaml'})" in text
    assert "holder: redacted (null)" in text
    assert "plate: hashed (HMAC-SHA256 with the salt of agreement ka-ps-permits)" in text
    assert "zone: bucketed in steps of 5" in text
    typed = DatasetFacts.from_descriptor(descriptor(PERMITS))  # every field a string
    string_zone = explain(
        engine, Subject("pirmasens", SW), typed, "traffic-planning", cluster=SW, at=AT
    )
    assert string_zone.masked["zone"] == "redact"  # as the gateway applies it
    assert "the policy says bucket:5, which this field's type cannot take" in (
        format_explanation(string_zone)
    )
    assert "max rows:    20" in text and "60 request(s) per minute" in text
    assert got.policy_version in text

    only = explain(
        engine,
        Subject("pirmasens", SW),
        PERMITS,
        "traffic-planning",
        cluster=SW,
        at=AT,
        fields=["permit_id", "holder"],
    )
    assert only.masked == {"holder": "redact"}  # masks of fields not sent are not shown

    filtered = explain(engine, Subject("sankt-wendel", SW), PERMITS, "research", cluster=SW, at=AT)
    assert filtered.row_filter == {"district": {"in": ("Innenstadt",)}}
    assert "row filter:  district in [Innenstadt]" in format_explanation(filtered)


def test_denials_name_the_agreements_they_concern(
    engine: PolicyEngine, agreements_dir: Path
) -> None:
    files = agreement_files(agreements_dir)
    expired = explain(
        engine,
        Subject("kusel", SW),
        PERMITS,
        "research",
        cluster=SW,
        at=AT,
        files=files,
        known_agreements=engine.agreement_ids,
    )
    assert not expired.allow and expired.agreements == ("ka-kus-old",)
    assert expired.max_rows == 0 and not expired.masked
    text = format_explanation(expired)
    assert text.startswith("DENIED: kusel (suedwest) query kaiserslautern/parking-permits")
    assert "concerning:  ka-kus-old" in text and "ka-kus.yaml" in text
    # The same agreement in force at its time: the explanation follows --at.
    then = dt.datetime(2020, 6, 1, tzinfo=dt.UTC)
    assert explain(engine, Subject("kusel", SW), PERMITS, "research", cluster=SW, at=then).allow

    stranger = explain(engine, Subject("luzern", "zentral"), PERMITS, "x", cluster=SW, at=AT)
    assert not stranger.allow
    assert stranger.rule == "baseline: only members of cluster suedwest get in"
    assert stranger.reasons == ("luzern is not a member of cluster suedwest",)


def test_bad_requests_are_named(engine: PolicyEngine) -> None:
    ask = Subject("pirmasens", SW)
    with pytest.raises(InvalidRequest, match="action 'delete'"):
        explain(engine, ask, PERMITS, "p", cluster=SW, action="delete")
    with pytest.raises(InvalidRequest, match="purpose is required"):
        explain(engine, ask, PERMITS, "", cluster=SW)
    with pytest.raises(InvalidRequest, match=r"unknown field.*colour.*has: permit_id"):
        explain(engine, ask, PERMITS, "p", cluster=SW, fields=["colour"])
    with pytest.raises(InvalidRequest, match="no zone"):
        parse_time("2026-06-01T08:00:00")
    with pytest.raises(InvalidRequest, match="is not a date"):
        parse_time("tomorrow")
    assert parse_time("2026-06-01") == dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    assert describe_mask("coarsen:2") == "coarsened to 2 decimal(s)"
    assert "redacted" in describe_mask("scramble")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_explains_from_flags(capsys: pytest.CaptureFixture[str], agreements_dir: Path) -> None:
    base = [
        "policy",
        "explain",
        "--dataset",
        "kaiserslautern/parking-permits",
        "--agreements",
        str(agreements_dir),
        "--classification",
        "internal",
        "--fields",
        ",".join(FIELDS),
        "--cluster",
        SW,
        "--at",
        "2026-06-01T12:00:00Z",
    ]
    code, out, _ = cli(capsys, *base, "--as", "pirmasens", "--purpose", "traffic-planning")
    assert code == 0
    assert out.startswith("ALLOWED: pirmasens (suedwest) query kaiserslautern/parking-permits")
    assert "baseline → agreements: agreement ka-ps-permits" in out
    code, out, _ = cli(
        capsys, *base, "--as", "kusel", "--purpose", "research", "--json", "--action", "subscribe"
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["allow"] is False and doc["input"]["action"] == "subscribe"
    assert doc["agreements"] == [{"id": "ka-kus-old", "file": str(agreements_dir / "ka-kus.yaml")}]
    assert doc["input"]["now"] == "2026-06-01T12:00:00+00:00"

    code, _, err = cli(capsys, *base, "--as", "pirmasens", "--purpose", "p", "--at", "soon")
    assert code == 2 and "time 'soon' is not a date" in err
    code, _, err = cli(
        capsys, "policy", "explain", "--as", "x", "--dataset", "nodataset", "--purpose", "p"
    )
    assert code == 2 and "must be OWNER/DATASET" in err
    code, _, err = cli(
        capsys, "policy", "explain", "--as", "x", "--dataset", "a/b", "--purpose", "p"
    )
    assert code == 2 and "--classification" in err
