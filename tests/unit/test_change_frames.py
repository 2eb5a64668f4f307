"""The change streams' hand-built wire bytes parse as the ChangeEvents protobuf would build,
and their resume tokens open only within the range they were signed for."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allmende.errors import InvalidRequest
from allmende.store import ChangeRow
from allmende.v1 import query_pb2
from allmende_gateway import streaming
from allmende_gateway.page_tokens import TokenSigner
from allmende_gateway.pages import RowCache


def Row(
    seq: int,
    kind: str,
    record_id: str,
    json: str | None,
    changed_at: str,
    new_visible: bool,
    old_visible: bool = True,
) -> ChangeRow:
    """A change-log row as the store hands it to the stream (``StoreReader.changes``)."""
    return (seq, kind, record_id, json, changed_at, int(new_visible), int(old_visible))


class Shaper:
    serial = 1

    def shape(self, stored: str) -> str:
        return stored.upper()  # stands in for the grant's projection and masks


def _read(rows: list[ChangeRow]) -> Any:
    store = SimpleNamespace(changes=lambda *a: (rows, rows[-1][0] if rows else 0))
    view = SimpleNamespace(new=None, old=None, decided=SimpleNamespace(grant=Shaper()))
    service = SimpleNamespace(store=store, rows=RowCache())
    return streaming._read(service, view, "ds", 0, 500, streaming._Stamps())


def _expected(row: ChangeRow) -> query_pb2.ChangeEvent:
    _, kind, record_id, json, changed_at, new_visible, _ = row
    event = query_pb2.ChangeEvent()
    event.record.id = record_id
    event.changed_at.FromJsonString(changed_at)
    if kind == "upsert" and new_visible and json is not None:
        event.kind = query_pb2.CHANGE_KIND_UPSERT
        event.record.json = json.upper()
    else:
        event.kind = query_pb2.CHANGE_KIND_DELETE
    return event


rows_strategy = st.lists(
    st.builds(
        Row,
        seq=st.integers(1, 2**40),
        kind=st.sampled_from(["upsert", "delete"]),
        record_id=st.text(min_size=1, max_size=150),
        json=st.none() | st.text(max_size=200),
        changed_at=st.sampled_from(
            ["2026-11-22T10:00:00.000Z", "2026-11-22T10:00:00.123Z", "1999-01-01T00:00:00Z"]
        ),
        new_visible=st.booleans(),
    ),
    max_size=8,
)


@settings(max_examples=100, deadline=None)
@given(rows_strategy)
def test_events_parse_as_protobuf_builds_them(rows: list[ChangeRow]) -> None:
    chunk = _read(rows)
    assert chunk.seqs == [r[0] for r in rows]
    for row, head, stamp in zip(rows, chunk.heads, chunk.stamps, strict=True):
        raw = head + stamp
        assert query_pb2.ChangeEvent.FromString(raw) == _expected(row)
        if row[3]:  # the JSON (protobuf leaves an empty string out; parsing it reads the same)
            assert raw == _expected(row).SerializeToString()  # the same bytes, in field order


def test_a_batch_parses_with_its_events_token_and_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [
        Row(3, "upsert", "a", '{"x":1}', "2026-11-22T10:00:00.000Z", True),
        Row(7, "delete", "b", None, "2026-11-22T10:00:01.000Z", False),
        Row(9, "upsert", "c" * 200, "y" * 20_000, "2026-11-22T10:00:01.000Z", True),
    ]
    chunk = _read(rows)
    chunk.decision = query_pb2.DecisionSummary(policy_version="v1", masked_fields={"p": "redact"})

    async def follow(*_: Any) -> Any:
        yield chunk, streaming._Tokens(TokenSigner(b"k" * 32), b"bound")

    monkeypatch.setattr(streaming, "_follow", follow)

    async def run() -> list[list[bytes]]:
        req = query_pb2.SubscribeRequest(max_batch=10)
        return [m async for m in streaming.batch_stream(None, None, req)]  # type: ignore[arg-type]

    ((raw,),) = asyncio.run(run())
    batch = query_pb2.ChangeBatch.FromString(raw)
    assert list(batch.events) == [_expected(r) for r in rows]
    assert batch.decision == chunk.decision
    assert batch.resume_token.endswith(".9")


def test_resume_tokens_open_only_inside_their_signed_range() -> None:
    tokens = streaming._Tokens(TokenSigner(b"k" * 32), b"bound")
    prefix = tokens.prefix(10, 20)
    assert [tokens.open(prefix + str(n)) for n in (10, 15, 20)] == [10, 15, 20]
    for bad in (prefix + "21", prefix + "9", prefix + "-1", prefix + "", prefix[:-1], "x.1"):
        with pytest.raises(InvalidRequest) as info:
            tokens.open(bad)
        assert info.value.field == "resume_token"
    other = streaming._Tokens(TokenSigner(b"k" * 32), b"another request")
    with pytest.raises(InvalidRequest):
        other.open(prefix + "15")


def test_max_batch_is_checked() -> None:
    assert streaming._check_batch(query_pb2.SubscribeRequest()) == 500
    assert streaming._check_batch(query_pb2.SubscribeRequest(max_batch=5000)) == 5000
    with pytest.raises(InvalidRequest) as info:
        streaming._check_batch(query_pb2.SubscribeRequest(max_batch=5001))
    assert info.value.field == "max_batch"
