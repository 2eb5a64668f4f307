"""Query pages spliced from cached Record bytes: byte for byte what protobuf would build,
a changed row or another grant never served from the cache, and the cache bounded."""

from __future__ import annotations

import json

import pytest

from allmende.v1 import query_pb2
from allmende_gateway.enforcement import Grant
from allmende_gateway.masks import redact
from allmende_gateway.pages import RowCache, page_response, page_wire

FIELDS = ("district", "holder", "note", "permit_id")


def grant(masked: tuple[str, ...] = ("holder",)) -> Grant:
    return Grant(
        fields=FIELDS,
        schema_fields=FIELDS,
        mask=dict.fromkeys(masked, "redact"),
        row_conditions=(),
        max_rows=100,
        summary=query_pb2.DecisionSummary(
            masked_fields=dict.fromkeys(masked, "redact"), policy_version="v1", max_rows=100
        ),
        masks=tuple((name, redact if name in masked else None) for name in FIELDS),
    )


def row(i: int, note: str = "") -> tuple[str, str]:
    stored = {
        "permit_id": f"KL-{i:06d}",
        "holder": f"Holder {i}",
        "district": "Innenstadt",
        "note": note or "ä€😀" * (i % 50),  # multi-byte UTF-8, lengths past 127 and 16383
    }
    return f"KL-{i:06d}", json.dumps(stored, sort_keys=True, separators=(",", ":"))


def built(g: Grant, rows: list[tuple[str, str]]) -> query_pb2.QueryResponse:
    resp = query_pb2.QueryResponse(decision=g.summary)
    resp.records.extend(query_pb2.Record(id=rid, json=g.shape(js)) for rid, js in rows)
    return resp


def test_spliced_page_is_the_page_protobuf_builds() -> None:
    cache, g = RowCache(), grant()
    rows = [row(i) for i in range(60)] + [row(60, "x" * 20_000)]
    for _ in range(2):  # from a cold cache, then from the cached bytes
        spliced = page_response(cache, g, rows)
        assert spliced.SerializeToString() == built(g, rows).SerializeToString()
    assert json.loads(spliced.records[0].json)["holder"] is None
    assert page_response(cache, g, []) == query_pb2.QueryResponse(decision=g.summary)


@pytest.mark.parametrize(
    ("token", "truncated"), [("", False), ("tok-" + "x" * 200, False), ("", True)]
)
def test_the_wire_page_is_the_bytes_protobuf_writes(token: str, truncated: bool) -> None:
    """Query sends page_wire's bytes without building a message: they must be exactly what
    protobuf writes for the same page, token and flag (fields in number order)."""
    cache, g = RowCache(), grant()
    rows = [row(i) for i in range(20)] + [row(20, "y" * 300)]
    expected = built(g, rows)
    expected.next_page_token = token
    expected.truncated = truncated
    for _ in range(2):
        wire = page_wire(cache, g, rows, token, truncated)
        assert wire == expected.SerializeToString(deterministic=True)
    assert page_response(cache, g, rows, token, truncated) == expected


def test_a_changed_row_or_another_grant_is_shaped_afresh() -> None:
    cache, narrow, open_ = RowCache(), grant(("holder", "district")), grant(())
    rid, stored = row(1)
    assert json.loads(page_response(cache, narrow, [(rid, stored)]).records[0].json) == {
        "district": None,
        "holder": None,
        "note": "ä€😀",
        "permit_id": rid,
    }
    assert json.loads(page_response(cache, open_, [(rid, stored)]).records[0].json)["holder"]
    changed = stored.replace("Holder 1", "Holder 9")
    got = page_response(cache, open_, [(rid, changed)]).records[0]
    assert json.loads(got.json)["holder"] == "Holder 9"


def test_the_cache_stays_within_its_bytes() -> None:
    cache, g = RowCache(max_bytes=20_000), grant()
    rows = [row(i) for i in range(500)]
    assert page_response(cache, g, rows).SerializeToString() == built(g, rows).SerializeToString()
    assert 0 < cache.bytes <= 20_000 and 0 < len(cache) < 500
    big = [row(1, "y" * 50_000)]  # larger than the whole cache: served, not kept
    page_response(cache, g, big)
    assert cache.bytes <= 20_000
