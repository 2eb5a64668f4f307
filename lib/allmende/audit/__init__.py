"""The audit trail: the owner's hash-chained decision log, its verification and reports."""

from allmende.audit.chain import (
    CHECKPOINT_PAYLOAD_TYPE,
    GENESIS,
    AuditError,
    EntryTemplate,
    LogLine,
    TemplatedRecord,
    canonical_json,
    chain_hash,
    checkpoint_envelope,
    iter_lines,
    read_entries,
    recomputed_hash,
)
from allmende.audit.log import AuditEntry, AuditLog, AuditSigner
from allmende.audit.report import ReportRow, parse_since, render_csv, render_json, summarize
from allmende.audit.verify import KeySource, Problem, VerifyReport, verify

__all__ = [
    "CHECKPOINT_PAYLOAD_TYPE",
    "GENESIS",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditSigner",
    "EntryTemplate",
    "KeySource",
    "LogLine",
    "Problem",
    "ReportRow",
    "TemplatedRecord",
    "VerifyReport",
    "canonical_json",
    "chain_hash",
    "checkpoint_envelope",
    "iter_lines",
    "parse_since",
    "read_entries",
    "recomputed_hash",
    "render_csv",
    "render_json",
    "summarize",
    "verify",
]
