"""Reading a subscription in a test: events arrive on a thread, the test waits with a timeout."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

from allmende.client import GatewayClient
from allmende.errors import AllmendeError
from allmende.v1 import query_pb2

__all__ = ["first_event_or_error_from", "subscribe_all_from"]


def _collect(stream: Any, out: queue.Queue) -> None:
    try:
        for event in stream:
            out.put(event)
    except AllmendeError as err:
        out.put(err)


def subscribe_all_from(
    client: GatewayClient, owner: str, dataset: str, purpose: str, n: int, **kw: Any
) -> list:
    """The first ``n`` change events after the greeting, from the beginning; asserts that no
    more arrive within 0.2 s."""
    stream = client.subscribe(owner, dataset, purpose, start=query_pb2.START_FROM_BEGINNING, **kw)
    events: queue.Queue = queue.Queue()
    threading.Thread(target=_collect, args=(stream, events), daemon=True).start()
    try:
        got = []
        for _ in range(n + 1):
            item = events.get(timeout=10)
            if isinstance(item, Exception):
                raise item
            got.append(item)
        with pytest.raises(queue.Empty):
            events.get(timeout=0.2)
    finally:
        stream.cancel()
    assert got[0].kind == query_pb2.CHANGE_KIND_UNSPECIFIED
    return got


def first_event_or_error_from(
    client: GatewayClient, owner: str, dataset: str, purpose: str, **kw: Any
) -> Any:
    """The first event of a subscription from the beginning, or the error it ended with."""
    stream = client.subscribe(owner, dataset, purpose, start=query_pb2.START_FROM_BEGINNING, **kw)
    events: queue.Queue = queue.Queue()
    threading.Thread(target=_collect, args=(stream, events), daemon=True).start()
    try:
        return events.get(timeout=10)
    finally:
        stream.cancel()
