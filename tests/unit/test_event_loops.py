"""The event loops a gateway can serve on: uvloop (the default) or asyncio's own loop."""

from __future__ import annotations

import asyncio

import pytest

from allmende.errors import ConfigError
from allmende.event_loops import loop_name, new_event_loop


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_a_loop_of_each_kind_runs_and_says_which_it_is(kind: str) -> None:
    loop = new_event_loop(kind)
    try:
        assert loop_name(loop) == kind
        assert loop.run_until_complete(asyncio.sleep(0, result="ran")) == "ran"
    finally:
        loop.close()


def test_an_unknown_kind_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="event_loop must be one of uvloop, asyncio, not 'trio'"):
        new_event_loop("trio")
