"""The one place where allmende errors become gRPC status codes with machine-readable details."""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from allmende.errors import AllmendeError, InvalidRequest, PolicyDenied, QuotaExceeded
from allmende.v1 import errors_pb2

__all__ = ["DOMAIN", "abort", "relay_upstream_error"]

log = logging.getLogger(__name__)

DOMAIN = "allmende.eu"
_DETAILS_KEY = "grpc-status-details-bin"


def to_rpc_status(err: AllmendeError) -> status_pb2.Status:
    """google.rpc.Status for ``err``: code, message, ErrorInfo, + Denial for policy denials and
    RetryInfo for an exceeded quota (ErrorInfo metadata: member, agreements, requests_per_minute).
    """
    code = grpc.StatusCode[err.grpc_code]
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN)
    if isinstance(err, InvalidRequest) and err.field:
        info.metadata["field"] = err.field
    details: list[Message] = [info]
    if isinstance(err, QuotaExceeded):
        info.metadata["member"] = err.member
        info.metadata["agreements"] = ",".join(err.agreements)
        info.metadata["requests_per_minute"] = str(err.per_minute)
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(int(err.retry_after_s * 1e9), 1_000_000))
        details.append(retry)
    if isinstance(err, PolicyDenied):
        denial = errors_pb2.Denial(
            reasons=err.reasons,
            policy_version=err.policy_version,
            subject_member=err.subject_member,
            owner=err.owner,
            dataset=err.dataset,
        )
        details.append(denial)
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=str(err), details=packed)


async def abort(context: grpc.aio.ServicerContext, err: AllmendeError) -> None:
    """End the call with ``err`` mapped to its status; never returns (raises AbortError)."""
    if err.grpc_code == "INTERNAL":
        log.error("internal error: %s", err)
    status = rpc_status.to_status(to_rpc_status(err))
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)


async def relay_upstream_error(
    context: grpc.aio.ServicerContext, exc: grpc.aio.AioRpcError
) -> None:
    """Pass the owner gateway's error on to our caller unchanged, details included."""
    trailing = tuple((k, v) for k, v in (exc.trailing_metadata() or ()) if k == _DETAILS_KEY)
    await context.abort(exc.code(), exc.details() or "", trailing_metadata=trailing)
