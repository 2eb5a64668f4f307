"""The event loop a server runs on: ``[gateway] event_loop`` (and the bench's bare servers,
which run on the gateway's loop so that the two are compared on equal terms)."""

from __future__ import annotations

import asyncio

from allmende.config import EVENT_LOOPS
from allmende.errors import ConfigError

__all__ = ["EVENT_LOOPS", "loop_name", "new_event_loop"]


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new loop of ``kind`` ("uvloop" or "asyncio"); raises ConfigError naming another."""
    if kind == "uvloop":
        import uvloop  # a dependency; imported here so that only its users load it

        return uvloop.new_event_loop()
    if kind == "asyncio":
        return asyncio.new_event_loop()
    raise ConfigError(
        "event_loop", [f"event_loop must be one of {', '.join(EVENT_LOOPS)}, not {kind!r}"]
    )


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """ "uvloop" or "asyncio": which kind ``loop`` is."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
