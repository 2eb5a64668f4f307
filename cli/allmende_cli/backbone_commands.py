"""`allmende backbone quarantine`: what a town's node refused from the backbone, and why."""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

from allmende.config import load_town_config
from allmende.store import connect
from allmende.v1 import backbone_pb2
from allmende_cli import replica_commands
from allmende_node.quarantine import Quarantine, QuarantinedMessage

__all__ = ["describe", "register", "summary"]

_MAX_PAYLOAD_TEXT = 4000


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", errors="replace")


def summary(msg: QuarantinedMessage) -> dict[str, Any]:
    """One quarantined message as a line of the listing (JSON-ready)."""
    return {
        "id": msg.id,
        "received_at": msg.received_at,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "key": _text(msg.key),
        "author": msg.author,
        "reason": msg.reason,
    }


def _payload_text(env: backbone_pb2.Envelope) -> str | None:
    """The payload in protobuf text format, if its type is a backbone message and it parses."""
    package, _, name = env.payload_type.rpartition(".")
    cls = getattr(backbone_pb2, name, None) if package == "allmende.v1" else None
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        return None
    payload = cls()
    try:
        payload.ParseFromString(env.payload)
    except DecodeError:
        return None
    text = text_format.MessageToString(payload, as_utf8=True)
    if len(text) > _MAX_PAYLOAD_TEXT:
        text = text[:_MAX_PAYLOAD_TEXT] + f"\n… ({len(text) - _MAX_PAYLOAD_TEXT} more characters)"
    return text


def describe(msg: QuarantinedMessage) -> dict[str, Any]:
    """Everything about one quarantined message: where, why, its envelope and its payload."""
    out = summary(msg)
    value = msg.value or b""
    out["value_size"] = len(value)
    env = msg.envelope() if value else None
    if env is None or not env.payload_type:
        out["envelope"] = None
        out["value_hex"] = value[:64].hex()
        out["payload"] = None
        return out
    out["envelope"] = {
        "author": env.author,
        "cluster": env.cluster,
        "payload_type": env.payload_type,
        "created_at": env.created_at.ToJsonString() if env.HasField("created_at") else "",
        "payload_size": len(env.payload),
        "payload_sha256": hashlib.sha256(env.payload).hexdigest(),
        "signature": env.signature.hex(),
    }
    out["payload"] = _payload_text(env)
    return out


def _render_detail(d: dict[str, Any]) -> str:
    lines = [
        f"quarantined message {d['id']}",
        f"  received   {d['received_at']}",
        f"  where      {d['topic']}@{d['partition']}:{d['offset']}",
        f"  key        {d['key'] or '(none)'}",
        f"  author     {d['author'] or '(none)'}",
        f"  reason     {d['reason']}",
    ]
    env = d["envelope"]
    if env is None:
        lines.append(
            f"  value      {d['value_size']} bytes, not an allmende envelope; "
            f"first bytes {d['value_hex'] or '(none)'}"
        )
        return "\n".join(lines)
    signature = (
        f"{len(env['signature']) // 2} bytes {env['signature']}" if env["signature"] else "(none)"
    )
    lines += [
        "  envelope",
        f"    author        {env['author']}",
        f"    cluster       {env['cluster']}",
        f"    payload_type  {env['payload_type']}",
        f"    created_at    {env['created_at'] or '(not set)'}",
        f"    payload       {env['payload_size']} bytes, sha256 {env['payload_sha256']}",
        f"    signature     {signature}",
    ]
    if d["payload"] is None:
        lines.append("  payload    (not a decodable allmende.v1 message)")
    else:
        lines.append(f"  payload ({env['payload_type']})")
        lines += [f"    {line}" for line in d["payload"].rstrip("\n").splitlines()]
    return "\n".join(lines)


def _render_list(rows: list[dict[str, Any]], total: int) -> str:
    if not rows:
        return "the quarantine is empty: the node has refused no backbone message"
    headers = ("ID", "RECEIVED", "WHERE", "AUTHOR", "REASON")
    cells = [
        (
            str(r["id"]),
            r["received_at"],
            f"{r['topic']}@{r['partition']}:{r['offset']}",
            r["author"] or "-",
            r["reason"],
        )
        for r in rows
    ]
    # Every column but the last padded; the reason is never cut (the operator needs it whole).
    widths = [max(len(c[i]) for c in [headers, *cells]) for i in range(len(headers) - 1)]
    lines = [
        f"{len(rows)} of {total} quarantined message(s), newest first (--show ID for one in detail)"
    ]
    for row in [headers, *cells]:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        lines.append("  " + "  ".join([*padded, row[-1]]))
    return "\n".join(lines)


def _quarantine(args: argparse.Namespace) -> int:
    config = load_town_config(args.config).node
    conn = connect(config.store_path, readonly=True)
    try:
        quarantine = Quarantine(conn)
        if args.show is not None:
            detail = describe(quarantine.get(args.show))
            print(json.dumps(detail, indent=2) if args.json else _render_detail(detail))
            return 0
        rows = [summary(m) for m in quarantine.newest(args.limit)]
        total = quarantine.count()
    finally:
        conn.close()
    print(json.dumps(rows, indent=2) if args.json else _render_list(rows, total))
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    backbone = sub.add_parser(
        "backbone", help="what this town's node received from the backbone"
    ).add_subparsers(dest="action", required=True)
    p = backbone.add_parser(
        "quarantine",
        help="list the backbone messages the node refused (unsigned, forged, replayed, …)",
    )
    p.add_argument("--config", required=True, help="the town's TOML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--limit", type=_positive, default=50, help="newest N messages (default 50)")
    p.add_argument("--show", type=int, metavar="ID", help="print one message in detail")
    p.set_defaults(run=_quarantine)
    replica_commands.register(backbone)  # `allmende backbone replicas`
