"""Query pages spliced from stored bytes: each row is masked once per grant and kept as the
wire bytes of its ``Record``, so a page is a concatenation, not a protobuf built row by row.

DESIGN: "store each record's canonical bytes once and splice them into responses". A row's
masked form depends only on the Grant (decided per request, as always) and the row's stored
JSON, and both are the cache key: a changed row or another decision is a miss, never a stale
hit. The cache is bounded by bytes; the oldest rows leave first.
"""

from __future__ import annotations

import threading

from allmende.v1 import query_pb2
from allmende_gateway.enforcement import Grant

__all__ = ["RowCache", "field_bytes", "page_response", "page_wire"]

# QueryResponse: records = 1, next_page_token = 2, decision = 3 (length-delimited),
# truncated = 4 (varint); Record: id = 1, json = 2 (length-delimited).
_RECORDS, _NEXT_PAGE_TOKEN, _DECISION = 0x0A, 0x12, 0x1A
_TRUNCATED = b"\x20\x01"
_RECORD_ID, _RECORD_JSON = 0x0A, 0x12
_SMALL = tuple(bytes((n,)) for n in range(128))
# What one cached row costs beyond its bytes: the key tuple, the dict slot, the objects.
_ENTRY_OVERHEAD = 200
DEFAULT_CACHE_BYTES = 8 * 1024 * 1024


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(tag: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (``tag`` is the one-byte key)."""
    return _SMALL[tag] + _varint(len(data)) + data


class RowCache:
    """Record bytes (masked by a Grant) per (grant, id, stored JSON); thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._rows: dict[tuple[int, str, str], bytes] = {}
        self._summaries: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, grant: Grant, rid: str, stored_json: str) -> bytes:
        """The ``records`` field of a QueryResponse holding this row as ``grant`` shapes it."""
        key = (grant.serial, rid, stored_json)
        hit = self._rows.get(key)
        if hit is not None:
            return hit
        body = field_bytes(_RECORD_ID, rid.encode()) + field_bytes(
            _RECORD_JSON, grant.shape(stored_json).encode()
        )
        wire = field_bytes(_RECORDS, body)
        cost = len(wire) + len(stored_json) + len(rid) + _ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return wire
        with self._lock:
            while self.bytes + cost > self.max_bytes and self._rows:
                oldest = next(iter(self._rows))
                old = self._rows.pop(oldest)
                self.bytes -= len(old) + len(oldest[2]) + len(oldest[1]) + _ENTRY_OVERHEAD
            if key not in self._rows:
                self._rows[key] = wire
                self.bytes += cost
        return wire

    def summary(self, grant: Grant) -> bytes:
        """The ``decision`` field of a QueryResponse for ``grant``."""
        hit = self._summaries.get(grant.serial)
        if hit is None:
            hit = field_bytes(_DECISION, grant.summary.SerializeToString())
            with self._lock:
                if len(self._summaries) >= 1024:
                    self._summaries.clear()
                self._summaries[grant.serial] = hit
        return hit


def page_wire(
    cache: RowCache,
    grant: Grant,
    rows: list[tuple[str, str]],
    next_page_token: str = "",
    truncated: bool = False,
) -> bytes:
    """A serialized QueryResponse: ``rows`` as ``grant`` shapes them, the page token, the
    decision summary and the truncated flag, in field order (as protobuf writes them)."""
    parts = [cache.record(grant, rid, js) for rid, js in rows]
    if next_page_token:
        parts.append(field_bytes(_NEXT_PAGE_TOKEN, next_page_token.encode()))
    parts.append(cache.summary(grant))
    if truncated:
        parts.append(_TRUNCATED)
    return b"".join(parts)


def page_response(
    cache: RowCache,
    grant: Grant,
    rows: list[tuple[str, str]],
    next_page_token: str = "",
    truncated: bool = False,
) -> query_pb2.QueryResponse:
    """``page_wire`` as a QueryResponse."""
    wire = page_wire(cache, grant, rows, next_page_token, truncated)
    return query_pb2.QueryResponse.FromString(wire)
