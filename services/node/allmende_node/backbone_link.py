"""Staying connected to the backbone: fail-fast probes, topic checks, backoff and outage logging.

kafka-python clients bootstrap eagerly in their constructors and wait up to
``bootstrap_timeout_ms`` (30 s by default) when no broker answers, so the node first probes
the bootstrap servers over TCP and gives its own clients short bootstrap timeouts; a thread
that must stop within about two seconds cannot sit in a 30-second constructor.

A broker that restarts with memory storage forgets every topic. The node notices that by
the catalog topic's id changing (or the topic missing), because a restart can be faster than
any request that would have failed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from allmende.backbone import BackboneProducer
from allmende.config import BackboneConfig
from allmende.errors import BackboneError

__all__ = [
    "Backoff",
    "OutageLog",
    "TopicAdmin",
    "close_quietly",
    "open_producer",
    "pause",
    "probe",
]

log = logging.getLogger(__name__)


def probe(config: BackboneConfig, timeout_s: float = 0.5) -> None:
    """Return if any bootstrap server accepts a TCP connection; else raise BackboneError."""
    problems = []
    for server in config.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
                return
        except (OSError, ValueError) as exc:
            problems.append(f"{server}: {exc}")
    raise BackboneError("no bootstrap server of the backbone answers: " + "; ".join(problems))


def open_producer(config: BackboneConfig, timeout_s: float) -> BackboneProducer:
    """A BackboneProducer, after a probe so a dead backbone fails fast; raises BackboneError."""
    probe(config)
    return BackboneProducer(config, timeout_s=timeout_s)


class TopicAdmin:
    """A kafka-python admin client with short timeouts, opened on first use.

    Not thread-safe; each thread keeps its own. Every method raises BackboneError when the
    backbone cannot be reached or refuses; call ``close`` then, the next call reconnects.
    """

    def __init__(self, config: BackboneConfig, timeout_s: float = 2.0) -> None:
        self.config = config
        self.timeout_s = timeout_s
        self._admin = None

    def _client(self) -> Any:  # a kafka.KafkaAdminClient
        if self._admin is None:
            from kafka import KafkaAdminClient
            from kafka.errors import KafkaError

            probe(self.config)
            ms = int(self.timeout_s * 1000)
            try:
                self._admin = KafkaAdminClient(
                    **self.config.kafka_options(), request_timeout_ms=ms, bootstrap_timeout_ms=ms
                )
            except (KafkaError, OSError) as exc:
                raise BackboneError(f"cannot reach {self._where()}: {exc}") from exc
        return self._admin

    def _where(self) -> str:
        return "the backbone at " + ",".join(self.config.bootstrap_servers)

    def describe(self, names: Iterable[str]) -> dict[str, tuple[str, int] | None]:
        """For each topic its (topic id, partition count), or None when it does not exist."""
        from kafka.errors import KafkaError

        wanted = sorted(set(names))
        try:
            found = self._client().describe_topics(wanted)
        except (KafkaError, OSError) as exc:
            raise BackboneError(f"{self._where()} did not describe topics {wanted}: {exc}") from exc
        out: dict[str, tuple[str, int] | None] = dict.fromkeys(wanted)
        for topic in found:
            if topic.get("error_code", 0) == 0 and topic.get("name") in out:
                out[topic["name"]] = (str(topic.get("topic_id")), len(topic.get("partitions", [])))
        return out

    def ensure(self, names: Iterable[str]) -> dict[str, tuple[str, int]]:
        """Create the missing topics (one partition each); returns every topic's id and size."""
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        known = self.describe(names)
        missing = [name for name, info in known.items() if info is None]
        if missing:
            try:
                self._client().create_topics([NewTopic(t, 1, 1) for t in missing])
            except TopicAlreadyExistsError:
                pass  # another node created it between our describe and create
            except (KafkaError, OSError) as exc:
                raise BackboneError(f"{self._where()} did not create {missing}: {exc}") from exc
            known = self.describe(names)
        absent = [name for name, info in known.items() if info is None]
        if absent:
            raise BackboneError(f"topics {absent} still missing after creating them")
        return {name: info for name, info in known.items() if info is not None}

    def close(self) -> None:
        admin, self._admin = self._admin, None
        close_quietly(admin, "admin client")


def close_quietly(client: Any, what: str) -> None:
    """Close a kafka-python client (None: nothing to close); raises nothing."""
    if client is None:
        return
    try:
        client.close()
    except Exception as exc:  # closing a client of a dead broker may raise anything
        log.debug("closing %s: %s", what, exc)


def pause(
    stop: threading.Event, seconds: float, sleep: Callable[[float], object] | None = None
) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; True when stopped. An injected ``sleep``
    (a test's) waits instead, without being cut short. Raises nothing."""
    if sleep is not None:
        sleep(seconds)
        return stop.is_set()
    return stop.wait(seconds)


class Backoff:
    """Delays for retrying: ``initial_s`` doubling up to ``max_s``; ``reset`` after a success."""

    def __init__(self, initial_s: float = 0.2, max_s: float = 5.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s


class OutageLog:
    """Logs an outage once when it starts and once when it ends, not once per retry."""

    def __init__(
        self, logger: logging.Logger, what: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.what = what
        self.clock = clock
        self.since: float | None = None
        self.outages = 0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException, detail: str = "") -> None:
        """Record a failure; logs a warning only for the first failure of an outage."""
        if self.since is None:
            self.since = self.clock()
            self.outages += 1
            self.logger.warning(
                "%s: the backbone is unreachable (%s)%s; retrying with backoff",
                self.what,
                exc,
                f"; {detail}" if detail else "",
            )
        else:
            self.logger.debug("%s: still unreachable: %s", self.what, exc)

    def recovered(self) -> bool:
        """Record a success; returns True (and logs) when it ends an outage."""
        if self.since is None:
            return False
        self.logger.info(
            "%s: the backbone is reachable again after %.1f s", self.what, self.clock() - self.since
        )
        self.since = None
        return True
