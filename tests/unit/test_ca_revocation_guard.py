"""A revocation ends a member's calls and its open streams, however quiet the stream is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from google.rpc import code_pb2, error_details_pb2

from allmende_gateway.authentication import MemberRevoked, Revocations
from allmende_gateway.status import to_rpc_status


async def quiet_stream(first: int, forever: asyncio.Event) -> AsyncIterator[int]:
    """Yields ``first`` events, then waits (like a subscription without changes)."""
    for i in range(first):
        yield i
    await forever.wait()
    yield -1


def test_revoked_member_is_refused_with_its_own_status() -> None:
    revocations = Revocations()
    revocations.check("pirmasens")
    assert revocations.update({"pirmasens": "key lost"}) == ["pirmasens"]
    assert revocations.update({"pirmasens": "key lost"}) == []
    with pytest.raises(MemberRevoked, match="pirmasens is revoked by the cluster CA: key lost"):
        revocations.check("kaiserslautern", "pirmasens")
    status = to_rpc_status(MemberRevoked("pirmasens", "key lost"))
    assert status.code == code_pb2.PERMISSION_DENIED
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.reason == "MEMBER_REVOKED"
    revocations.update({})  # re-admitted by the CA
    revocations.check("pirmasens")


def test_a_waiting_stream_ends_as_soon_as_its_member_is_revoked() -> None:
    async def scenario() -> tuple[list[int], BaseException | None, float]:
        revocations = Revocations()
        forever = asyncio.Event()
        got: list[int] = []
        ended: list[BaseException] = []

        async def consume(members: tuple[str, ...]) -> None:
            guard = revocations.guard(*members)
            try:
                async for event in guard.relay(quiet_stream(3, forever)):
                    got.append(event)
            except MemberRevoked as exc:
                ended.append(exc)

        cut = asyncio.create_task(consume(("pirmasens", "kaiserslautern")))
        untouched = asyncio.create_task(consume(("sankt-wendel",)))
        while len(got) < 6:
            await asyncio.sleep(0.001)
        assert revocations.open_streams == 2
        loop = asyncio.get_running_loop()
        start = loop.time()
        revocations.update({"kaiserslautern": "left the cluster"})
        await cut
        elapsed = loop.time() - start
        assert not untouched.done() and revocations.open_streams == 1
        untouched.cancel()  # a caller that goes away is a cancellation, not a revocation
        with pytest.raises(asyncio.CancelledError):
            await untouched
        assert revocations.open_streams == 0
        with pytest.raises(MemberRevoked):
            revocations.guard("kaiserslautern")
        return got, ended[0] if ended else None, elapsed

    got, ended, elapsed = asyncio.run(scenario())
    assert sorted(got) == [0, 0, 1, 1, 2, 2]
    assert isinstance(ended, MemberRevoked) and ended.member == "kaiserslautern"
    assert elapsed < 0.1


def test_a_stream_busy_writing_ends_before_its_next_event() -> None:
    async def scenario() -> list[int]:
        revocations = Revocations()
        guard = revocations.guard("pirmasens")
        got: list[int] = []
        with pytest.raises(MemberRevoked):
            async for event in guard.relay(quiet_stream(5, asyncio.Event())):
                got.append(event)
                if event == 1:  # revoked while the event is being handled, not awaited
                    revocations.update({"pirmasens": "key lost"})
        return got

    assert asyncio.run(scenario()) == [0, 1]
