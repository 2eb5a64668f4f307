"""Shared fixtures: the real embedded broker, unique topic prefixes, a demo CA."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from allmende.broker import EmbeddedBroker
from allmende.config import BackboneConfig

REPO = Path(__file__).resolve().parents[1]
_counter = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One real tansu broker for the session, on a free loopback port."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    b = EmbeddedBroker(log_path=log)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses, so tests never see each other's messages."""
    return f"t{os.getpid()}x{next(_counter)}"


@pytest.fixture
def backbone(broker: EmbeddedBroker, topic_prefix: str) -> BackboneConfig:
    return BackboneConfig(bootstrap_servers=(broker.bootstrap,), topic_prefix=topic_prefix)
