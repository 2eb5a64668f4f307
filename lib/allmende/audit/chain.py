"""The audit log's file format: canonical JSON, the hash chain, checkpoint signatures, reading.

PROTOCOL.md, "Audit trail". An entry line is a JSON object with ``seq`` (from 1), ``prev`` (the
previous entry's hash, 64 zeros for the first) and ``hash`` = hex SHA-256 over ``prev`` + "\\n"
+ the canonical JSON of the entry without ``hash``. A checkpoint line is
``{"checkpoint": {"hash", "seq", "signature", "signer", "time"}}``: the owner's Ed25519
signature over the chain head at ``seq``, with the signing input of ``checkpoint_envelope``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from allmende.errors import AllmendeError
from allmende.v1 import backbone_pb2

__all__ = [
    "CHECKPOINT_PAYLOAD_TYPE",
    "GENESIS",
    "AuditError",
    "EntryTemplate",
    "LogLine",
    "TemplatedRecord",
    "canonical_json",
    "chain_hash",
    "checkpoint_envelope",
    "iter_lines",
    "parse_line",
    "read_entries",
    "recomputed_hash",
    "seal",
    "sealed_text",
]

GENESIS = "0" * 64
CHECKPOINT_PAYLOAD_TYPE = "allmende.audit.v1.Checkpoint"


class AuditError(AllmendeError):
    """An audit log cannot be read, or a record cannot be logged (not a JSON object)."""

    reason = "AUDIT_ERROR"


# The reference encoder (PROTOCOL.md "Audit trail"): what every entry's bytes must equal.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode

# orjson writes the same bytes ~8x faster for plain values (tests/unit/test_audit_canonical.py
# proves it over every shape an entry holds), but not for floats (1e+16 is 1e16 to orjson,
# NaN is null), ints beyond 64 bits, subclasses or other types: those go to _CANONICAL.
# Subclasses, dates and dataclasses are passed to ``default``, which only splices sealed text.
_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
_LEAVES = frozenset({str, int, bool, type(None)})


def _plain(value: Any) -> bool:
    """True when ``value`` holds only dicts, lists, tuples, str, int, bool and None (exact
    types): the values orjson writes exactly as _CANONICAL does."""
    kind = type(value)
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return kind in _LEAVES
    for item in items:  # noqa: SIM110 -- a loop is much cheaper than all() over a generator
        if type(item) not in _LEAVES and not _plain(item):
            return False
    return True


class _Sealed:
    """Read-only documents and their canonical JSON, by identity (the document is held, so
    its id stays unique); bounded by clearing."""

    size = 512

    def __init__(self) -> None:
        self.texts: dict[int, tuple[dict[str, Any], orjson.Fragment, str | None]] = {}
        self.lock = threading.Lock()


_SEALED = _Sealed()


def seal(document: dict[str, Any]) -> dict[str, Any]:
    """Encode ``document`` once, so an entry holding it (as a top-level value) splices the
    text instead of encoding it again; returns ``document``, which must not change afterwards
    (the gateway's policy inputs: shared, read-only, cached per second). A document that is
    not JSON is returned unsealed: the entry holding it is refused as before."""
    try:
        text = canonical_json(document)
    except (TypeError, ValueError):
        return document
    # Only a document of plain values (exact dict, list, str, int, bool, None) gives its
    # text to other readers (sealed_text): the policy engine takes that text as its input.
    plain = text if _plain(document) else None
    with _SEALED.lock:
        if len(_SEALED.texts) >= _SEALED.size:
            _SEALED.texts.clear()
        _SEALED.texts[id(document)] = (document, orjson.Fragment(text), plain)
    return document


def sealed_text(document: dict[str, Any]) -> str | None:
    """The canonical JSON of a sealed ``document`` of plain values (dicts, lists, str, int,
    bool, None, exact types); None when it was not sealed (or the seal was dropped) or
    holds anything else."""
    known = _SEALED.texts.get(id(document))
    if known is not None and known[0] is document:
        return known[2]
    return None


def _spliced(value: dict[str, Any]) -> dict[str, Any] | None:
    """``value`` with its sealed top-level documents as Fragments; None when anything in it is
    not plain (a float, a subclass, another type)."""
    texts = _SEALED.texts
    out: dict[str, Any] | None = None
    for key, item in value.items():
        if type(item) in _LEAVES:
            continue
        known = texts.get(id(item))
        if known is not None and known[0] is item:
            if out is None:
                out = dict(value)
            out[key] = known[1]
        elif not _plain(item):
            return None
    return value if out is None else out


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is left to the json encoder")


def canonical_json(value: Any) -> str:
    """Keys sorted, no spaces, UTF-8 characters as they are; raises TypeError/ValueError."""
    if type(value) is dict:
        ready = _spliced(value)
        if ready is not None:
            try:
                return orjson.dumps(ready, default=_refuse, option=_ORJSON_OPTIONS).decode()
            except orjson.JSONEncodeError:  # ints beyond 64 bits, lone surrogates, other keys
                pass
    return _CANONICAL(value)


class EntryTemplate:
    """The canonical JSON of entries that share all values but a few, written once.

    ``static`` holds the shared values, ``variable`` names the keys each entry fills in
    (str or int values; the log fills in ``seq`` and ``prev``). The text between the
    variable values is encoded when the template is made, so ``render`` only joins strings:
    the gateway's entries repeat everything (caller, decision, policy input) but the time,
    the request's hash and the row count. ``render`` gives exactly ``canonical_json`` of the
    whole entry (tests/unit/test_audit_canonical.py), or None when a value is not a plain
    str or int, which the log then encodes the usual way. Raises TypeError/ValueError when a
    static value is not JSON, ValueError when a key is both static and variable.
    """

    __slots__ = ("_names", "_parts", "static")

    def __init__(self, static: Mapping[str, Any], variable: Sequence[str]) -> None:
        both = set(static) & set(variable)
        if both:
            raise ValueError(f"keys both static and variable: {', '.join(sorted(both))}")
        self.static = dict(static)
        names: list[str] = []
        parts: list[str] = []
        text = "{"
        for i, key in enumerate(sorted({*static, *variable})):
            text += ("," if i else "") + _CANONICAL(key) + ":"
            if key in static:
                text += canonical_json(static[key])
            else:
                parts.append(text)
                names.append(key)
                text = ""
        parts.append(text + "}")
        self._names = tuple(names)
        self._parts = tuple(parts)

    @property
    def variable(self) -> tuple[str, ...]:
        """The keys each entry fills in, sorted."""
        return self._names

    def render(self, values: Mapping[str, Any]) -> str | None:
        """The canonical JSON of ``static`` with ``values`` (one per variable key)."""
        parts = self._parts
        out = [parts[0]]
        for i, name in enumerate(self._names):
            value = values[name]
            kind = type(value)
            if kind is int:
                out.append(str(value))
            elif kind is str:
                try:
                    out.append(orjson.dumps(value).decode())
                except orjson.JSONEncodeError:  # a lone surrogate: the usual way refuses it
                    return None
            else:
                return None
            out.append(parts[i + 1])
        return "".join(out)


class TemplatedRecord(dict[str, Any]):
    """An audit record (a dict, as any sink expects) made from an EntryTemplate and the
    values it varies in; AuditLog writes it by ``template.render``."""

    __slots__ = ("template",)

    def __init__(self, template: EntryTemplate, values: Mapping[str, Any]) -> None:
        super().__init__(template.static)
        self.update(values)
        self.template = template


def chain_hash(prev: str, body_json: str) -> str:
    """The hash of an entry: hex SHA-256 of ``prev`` + "\\n" + its canonical JSON without hash."""
    return hashlib.sha256(f"{prev}\n{body_json}".encode()).hexdigest()


def checkpoint_envelope(body: Mapping[str, Any]) -> backbone_pb2.Envelope:
    """The (unsigned) envelope whose signing input a checkpoint's signature covers.

    ``body`` is the checkpoint without ``signature``: ``{"hash", "seq", "signer", "time"}``.
    The envelope has author = signer, cluster = "", payload_type
    ``allmende.audit.v1.Checkpoint``, created_at = time, payload = the canonical JSON of
    ``body``; the signature is Ed25519 over ``allmende.signing.signing_input`` of it, so a
    checkpoint verifies with ``allmende.signing.verify_member``. Raises ValueError when
    ``time`` is not RFC 3339.
    """
    env = backbone_pb2.Envelope(
        author=str(body["signer"]),
        cluster="",
        payload_type=CHECKPOINT_PAYLOAD_TYPE,
        payload=canonical_json(dict(body)).encode(),
    )
    env.created_at.FromJsonString(str(body["time"]))
    return env


@dataclass(frozen=True)
class LogLine:
    """One line of a log file: ``kind`` "entry", "checkpoint", "bad" (``error`` says why) or
    "partial" (the file ends without a newline); ``end`` is the offset after its newline."""

    number: int
    offset: int
    end: int
    kind: str
    data: dict[str, Any]
    error: str = ""


def parse_line(number: int, offset: int, raw: bytes) -> LogLine:
    end = offset + len(raw)
    if not raw.endswith(b"\n"):
        return LogLine(number, offset, end, "partial", {}, "incomplete line (no newline)")
    try:
        data = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both are ValueErrors
        return LogLine(number, offset, end, "bad", {}, f"not JSON: {exc}")
    if not isinstance(data, dict):
        return LogLine(number, offset, end, "bad", {}, "not a JSON object")
    if "checkpoint" in data:
        body = data["checkpoint"]
        if len(data) != 1 or not isinstance(body, dict):
            return LogLine(number, offset, end, "bad", {}, "malformed checkpoint line")
        return LogLine(number, offset, end, "checkpoint", body)
    problem = _entry_shape_problem(data)
    if problem:
        return LogLine(number, offset, end, "bad", data, problem)
    return LogLine(number, offset, end, "entry", data)


def _entry_shape_problem(data: Mapping[str, Any]) -> str:
    seq = data.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "entry has no valid seq"
    for key in ("prev", "hash"):
        value = data.get(key)
        if not isinstance(value, str) or len(value) != 64:
            return f"entry has no valid {key}"
    return ""


def recomputed_hash(data: Mapping[str, Any]) -> str:
    """The hash an entry line should carry, from its content (``hash`` left out)."""
    body = {k: v for k, v in data.items() if k != "hash"}
    return chain_hash(str(data.get("prev", "")), canonical_json(body))


def iter_lines(path: Path, offset: int = 0, first_number: int = 1) -> Iterator[LogLine]:
    """Every line of the log at ``path`` from byte ``offset`` (numbered from ``first_number``).

    Raises AuditError naming the file when it cannot be opened or read.
    """
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                # a device such as /dev/full would be read for ever
                raise AuditError(f"audit log {path} is not a regular file")
            f.seek(offset)
            number = first_number
            for raw in f:
                yield parse_line(number, offset, raw)
                offset += len(raw)
                number += 1
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror or exc}") from exc


def read_entries(path: str | Path) -> Iterator[dict[str, Any]]:
    """The entries of an audit log in file order, checkpoints skipped (not verified).

    Raises AuditError naming the file and line when the file cannot be read or a line is
    not an entry or checkpoint (``allmende audit verify`` says more).
    """
    for line in iter_lines(Path(path)):
        if line.kind == "entry":
            yield line.data
        elif line.kind in ("bad", "partial"):
            raise AuditError(f"audit log {path} line {line.number}: {line.error}")
