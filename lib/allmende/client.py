"""A Python client for a town's gateway: what a consuming service (or the CLI) uses.

A service talks only to its own town's gateway, with its own certificate; for another
town's dataset that gateway forwards to the owner. Errors arrive as allmende errors with
the owner's reasons (``PolicyDenied.reasons``), never as bare gRPC errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from allmende.errors import (
    AllmendeError,
    AuditUnavailable,
    IdentityError,
    InvalidRequest,
    NotOwner,
    PeerUnavailable,
    PolicyDenied,
    QuotaExceeded,
)
from allmende.identity import TlsFiles
from allmende.v1 import catalog_pb2, catalog_pb2_grpc, errors_pb2, query_pb2, query_pb2_grpc
from allmende.where import order

__all__ = ["GatewayClient", "GatewayError", "Subscription", "parse_condition", "parse_measure"]

_Message = TypeVar("_Message", query_pb2.ChangeEvent, query_pb2.ChangeBatch)

_OPERATORS = {
    "=": query_pb2.OPERATOR_EQ,
    "==": query_pb2.OPERATOR_EQ,
    "!=": query_pb2.OPERATOR_NE,
    "<": query_pb2.OPERATOR_LT,
    "<=": query_pb2.OPERATOR_LE,
    ">": query_pb2.OPERATOR_GT,
    ">=": query_pb2.OPERATOR_GE,
    "in": query_pb2.OPERATOR_IN,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(<=|>=|!=|==|=|<|>|\s+in\s+)\s*(.*?)\s*$")


class GatewayError(AllmendeError):
    """The gateway answered with an error that has no more specific allmende class."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        self.grpc_code = code.name
        self.reason = reason or code.name
        super().__init__(f"{code.name}: {message}")


def _value(text: str) -> struct_pb2.Value:
    v = struct_pb2.Value()
    if text in ("true", "false"):
        v.bool_value = text == "true"
    else:
        try:
            v.number_value = float(text)
        except ValueError:
            v.string_value = text.strip('"')
    return v


def parse_condition(text: str) -> query_pb2.Comparison:
    """``capacity>=100``, ``district=Innenstadt``, ``type in garage,lot`` → a Comparison.

    Raises InvalidRequest naming the text when it is not ``field op value``.
    """
    m = _CONDITION.match(text)
    if not m:
        raise InvalidRequest(
            f"cannot read condition {text!r}: write field<op>value, e.g. capacity>=100"
        )
    name, op, raw = m.group(1), m.group(2).strip(), m.group(3)
    cmp = query_pb2.Comparison(field=name, op=_OPERATORS[op])
    if op == "in":
        cmp.value.list_value.values.extend(_value(part.strip()) for part in raw.split(","))
    else:
        cmp.value.CopyFrom(_value(raw))
    return cmp


_FUNCTIONS = {
    "count": query_pb2.AGGREGATE_FUNCTION_COUNT,
    "sum": query_pb2.AGGREGATE_FUNCTION_SUM,
    "min": query_pb2.AGGREGATE_FUNCTION_MIN,
    "max": query_pb2.AGGREGATE_FUNCTION_MAX,
    "avg": query_pb2.AGGREGATE_FUNCTION_AVG,
}


def parse_measure(text: str) -> query_pb2.Measure:
    """``count``, ``sum:capacity``, ``avg:capacity`` (``<function>[:<field>]``) → a Measure.

    Raises InvalidRequest naming the text when the function is not one of count, sum, min,
    max, avg.
    """
    name, _, field = text.strip().partition(":")
    function = _FUNCTIONS.get(name.strip().lower())
    if function is None:
        raise InvalidRequest(
            f"cannot read measure {text!r}: write count or <function>:<field> with function "
            "one of sum, min, max, avg (e.g. avg:capacity)"
        )
    return query_pb2.Measure(function=function, field=field.strip())


def _quota(info: error_details_pb2.ErrorInfo, status: Any) -> QuotaExceeded:
    retry_after = 0.0
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    meta = info.metadata
    per_minute = meta.get("requests_per_minute", "0")
    return QuotaExceeded(
        meta.get("member", ""),
        [a for a in meta.get("agreements", "").split(",") if a],
        int(per_minute) if per_minute.isdigit() else 0,
        retry_after,
    )


def _translate(exc: grpc.RpcError) -> AllmendeError:
    """Turn a gRPC error into an allmende error, keeping the reasons from the status details."""
    code, message = exc.code(), exc.details() or ""
    status = rpc_status.from_call(exc) if isinstance(exc, grpc.Call) else None
    reason, field, denial = "", "", None
    info = error_details_pb2.ErrorInfo()
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
            reason, field = info.reason, info.metadata.get("field", "")
        elif detail.Is(errors_pb2.Denial.DESCRIPTOR):
            denial = errors_pb2.Denial()
            detail.Unpack(denial)
    if denial is not None:
        return PolicyDenied(
            list(denial.reasons),
            denial.policy_version,
            subject_member=denial.subject_member,
            owner=denial.owner,
            dataset=denial.dataset,
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(message, field=field)
    if reason == "NOT_OWNER":
        return NotOwner(message)
    if reason == QuotaExceeded.reason:
        return _quota(info, status)
    if reason == AuditUnavailable.reason:
        return AuditUnavailable(message)
    if code == grpc.StatusCode.UNAVAILABLE:
        return PeerUnavailable(message or "the gateway is unreachable")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return IdentityError(message)
    return GatewayError(code, message, reason)


class GatewayClient:
    """A channel to one gateway with this service's (or member's) certificate. Reuse it."""

    def __init__(
        self, address: str, tls: TlsFiles, *, server_name: str = "", timeout_s: float = 30.0
    ) -> None:
        ca, cert, key = tls.read()
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self._channel = grpc.secure_channel(
            address, grpc.ssl_channel_credentials(ca, key, cert), options
        )
        self._catalog = catalog_pb2_grpc.CatalogServiceStub(self._channel)
        self._query = query_pb2_grpc.QueryServiceStub(self._channel)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _translate(exc) from exc

    def list_datasets(
        self, owner: str = "", keyword: str = ""
    ) -> list[catalog_pb2.DatasetDescriptor]:
        """The federated catalog as the gateway's town sees it; raises AllmendeError."""
        req = catalog_pb2.ListDatasetsRequest(owner=owner, keyword=keyword)
        return list(self._call(self._catalog.ListDatasets, req).datasets)

    def get_dataset(self, owner: str, dataset: str) -> catalog_pb2.DatasetDescriptor:
        return self._call(
            self._catalog.GetDataset, catalog_pb2.GetDatasetRequest(owner=owner, dataset=dataset)
        )

    @staticmethod
    def _filter(
        where: Iterable[str | query_pb2.Comparison],
        expression: query_pb2.Expression | None = None,
    ) -> query_pb2.Filter:
        """``where``'s comparisons AND ``expression`` (see allmende.where)."""
        flt = query_pb2.Filter(
            all=[w if isinstance(w, query_pb2.Comparison) else parse_condition(w) for w in where]
        )
        if expression is not None:
            flt.where.CopyFrom(expression)
        return flt

    def query(
        self,
        owner: str,
        dataset: str,
        purpose: str,
        *,
        fields: Sequence[str] = (),
        where: Iterable[str | query_pb2.Comparison] = (),
        expression: query_pb2.Expression | None = None,
        order_by: Sequence[str | query_pb2.OrderBy] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> query_pb2.QueryResponse:
        """One page of records: ``where`` comparisons AND ``expression`` (allmende.where),
        in ``order_by`` order ("-capacity" descending; default by record id). Raises
        PolicyDenied, InvalidRequest, QuotaExceeded, PeerUnavailable, …"""
        req = query_pb2.QueryRequest(
            owner=owner,
            dataset=dataset,
            purpose=purpose,
            fields=fields,
            filter=self._filter(where, expression),
            order_by=[o if isinstance(o, query_pb2.OrderBy) else order(o) for o in order_by],
            page_size=page_size,
            page_token=page_token,
        )
        return self._call(self._query.Query, req)

    def query_all(
        self, owner: str, dataset: str, purpose: str, **kwargs: Any
    ) -> Iterator[query_pb2.Record]:
        """Every record over all pages."""
        token = ""
        while True:
            page = self.query(owner, dataset, purpose, page_token=token, **kwargs)
            yield from page.records
            token = page.next_page_token
            if not token:
                return

    def aggregate(
        self,
        owner: str,
        dataset: str,
        purpose: str,
        *,
        group_by: Sequence[str] = (),
        measures: Iterable[str | query_pb2.Measure] = ("count",),
        where: Iterable[str | query_pb2.Comparison] = (),
        expression: query_pb2.Expression | None = None,
    ) -> query_pb2.AggregateResponse:
        """Counts, sums, minima, maxima, averages per group; ``measures`` as Measures or text
        (``count``, ``sum:capacity``, see ``parse_measure``). Each group is a JSON object in
        ``response.groups``. Raises PolicyDenied, InvalidRequest, QuotaExceeded, …"""
        req = query_pb2.AggregateRequest(
            owner=owner,
            dataset=dataset,
            purpose=purpose,
            filter=self._filter(where, expression),
            group_by=group_by,
            measures=[
                m if isinstance(m, query_pb2.Measure) else parse_measure(m) for m in measures
            ],
        )
        return self._call(self._query.Aggregate, req)

    def _subscribe_request(
        self,
        owner: str,
        dataset: str,
        purpose: str,
        *,
        fields: Sequence[str] = (),
        where: Iterable[str | query_pb2.Comparison] = (),
        expression: query_pb2.Expression | None = None,
        start: query_pb2.StartFrom = query_pb2.START_FROM_UNSPECIFIED,
        resume_token: str = "",
        max_batch: int = 0,
    ) -> query_pb2.SubscribeRequest:
        return query_pb2.SubscribeRequest(
            owner=owner,
            dataset=dataset,
            purpose=purpose,
            fields=fields,
            filter=self._filter(where, expression),
            start=start,
            resume_token=resume_token,
            max_batch=max_batch,
        )

    def subscribe(
        self,
        owner: str,
        dataset: str,
        purpose: str,
        *,
        fields: Sequence[str] = (),
        where: Iterable[str | query_pb2.Comparison] = (),
        expression: query_pb2.Expression | None = None,
        start: query_pb2.StartFrom = query_pb2.START_FROM_UNSPECIFIED,
        resume_token: str = "",
    ) -> Subscription[query_pb2.ChangeEvent]:
        """Open a change stream, one event per change; iterate it, and ``cancel()`` it when done.

        ``fields``, ``where``, ``expression`` as for ``query``; ``start`` START_FROM_LIVE for
        only the changes from now on; ``resume_token`` of the last event processed (from either
        kind of stream). Iterating raises PolicyDenied, InvalidRequest, QuotaExceeded, …
        """
        req = self._subscribe_request(
            owner,
            dataset,
            purpose,
            fields=fields,
            where=where,
            expression=expression,
            start=start,
            resume_token=resume_token,
        )
        return Subscription(self._query.Subscribe(req))

    def subscribe_batches(
        self,
        owner: str,
        dataset: str,
        purpose: str,
        *,
        max_batch: int = 0,
        fields: Sequence[str] = (),
        where: Iterable[str | query_pb2.Comparison] = (),
        expression: query_pb2.Expression | None = None,
        start: query_pb2.StartFrom = query_pb2.START_FROM_UNSPECIFIED,
        resume_token: str = "",
    ) -> Subscription[query_pb2.ChangeBatch]:
        """Open a change stream in batches of at most ``max_batch`` events (0: the gateway's
        default, 500; at most 5000); the other arguments as for ``subscribe``.

        Each batch's ``resume_token`` continues after its last event, in either kind of
        stream; the first batch carries the decision and may hold no events. Iterating raises
        as ``subscribe`` (InvalidRequest naming ``max_batch`` above 5000).
        """
        req = self._subscribe_request(
            owner,
            dataset,
            purpose,
            fields=fields,
            where=where,
            expression=expression,
            start=start,
            resume_token=resume_token,
            max_batch=max_batch,
        )
        return Subscription(self._query.SubscribeBatches(req))


class Subscription(Generic[_Message]):
    """An open change stream. Iterating raises allmende errors; ``cancel`` ends it."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[_Message]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise _translate(exc) from exc

    def cancel(self) -> None:
        self._call.cancel()
