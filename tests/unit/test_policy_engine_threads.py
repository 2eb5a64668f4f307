"""regorus' objects may only be dropped on the thread that made them. A PolicyEngine that the
garbage collector frees on another thread (its last reference was in a reference cycle, as
an exception's traceback makes one) leaves them for their own thread, which drops them the
next time it builds an engine or decides; nothing is reported as an unraisable error."""

from __future__ import annotations

import gc
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from allmende.errors import PolicyError
from allmende.policy import BUNDLED_POLICY_DIR, PolicyEngine
from allmende.policy import engine as engine_module

REQUEST = {
    "subject": {"member": "kaiserslautern", "cluster": "suedwest", "service": ""},
    "action": "query",
    "resource": {
        "owner": "kaiserslautern",
        "cluster": "suedwest",
        "dataset": "parking-sites",
        "classification": "open",
        "fields": ["name"],
    },
    "request": {"purpose": "planning", "fields": [], "limit": 10},
    "now": "2026-12-02T05:00:00+00:00",
}


class Worker:
    """A thread that runs what it is given, in order, as the gateway's event loop does."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, out = job
            out.put(fn())

    def run(self, fn: Callable[[], Any]) -> Any:
        out: queue.Queue[Any] = queue.Queue()
        self._jobs.put((fn, out))
        return out.get(timeout=60)

    def stop(self) -> None:
        self._jobs.put(None)
        self.thread.join(timeout=60)


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(repr(u.exc_value)))
    return seen


def build() -> PolicyEngine:
    return PolicyEngine.from_paths(BUNDLED_POLICY_DIR)


def test_an_engine_freed_on_another_thread_is_dropped_on_its_own(
    worker: Worker, unraisable: list[str]
) -> None:
    made: list[Any] = worker.run(lambda: [build()])
    made.append(made)  # a reference cycle: only the garbage collector frees it
    del made
    gc.collect()  # on this thread, not the worker's
    assert unraisable == []
    assert engine_module.orphans(worker.thread) == 2  # its interpreter and its VM
    # The worker drops them as it builds its next engine, and decides with that one.
    assert worker.run(lambda: build().decide(REQUEST).allow) is True
    assert engine_module.orphans(worker.thread) == 0
    assert unraisable == []


def test_a_thread_that_decides_drops_what_was_left_for_it(
    worker: Worker, unraisable: list[str]
) -> None:
    made: list[Any] = worker.run(lambda: [build(), build()])
    kept = made.pop()
    made.append(made)
    del made
    gc.collect()
    assert engine_module.orphans(worker.thread) == 2
    assert worker.run(lambda: kept.decide(REQUEST).allow) is True
    assert engine_module.orphans(worker.thread) == 0
    assert unraisable == []
    worker.run(lambda: kept.__dict__.clear())  # dropped on its own thread


def test_an_engine_dropped_on_its_own_thread_leaves_nothing_behind(worker: Worker) -> None:
    assert worker.run(lambda: build().decide(REQUEST).allow) is True
    assert engine_module.orphans(worker.thread) == 0


def test_an_engine_that_failed_to_build_is_dropped_on_its_own_thread(
    worker: Worker, unraisable: list[str]
) -> None:
    def fail() -> PolicyError:
        try:
            PolicyEngine({"broken.rego": "package allmende.decision\nthis is not rego"})
        except PolicyError as err:
            return err  # its traceback holds the half-built engine
        raise AssertionError("a broken policy was accepted")

    err = worker.run(fail)
    assert "broken.rego" in str(err)
    del err
    gc.collect()
    assert unraisable == []
    assert engine_module.orphans(worker.thread) == 1  # its interpreter, before any VM
    assert worker.run(lambda: build().evaluator) == "compiled"
    assert engine_module.orphans(worker.thread) == 0


def test_an_engine_kept_per_thread_goes_with_its_thread(unraisable: list[str]) -> None:
    # A thread pool's worker keeps its own engine in a threading.local; when the worker
    # ends, Python frees its locals on that thread, after ``threading`` has let go of the
    # thread (``current_thread()`` is then a stand-in). The engine is dropped there, not
    # left behind for a thread that will never come back.
    here = threading.local()
    decided: list[bool] = []

    def work() -> None:
        here.engine = build()
        decided.append(here.engine.decide(REQUEST).allow)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    gc.collect()
    assert decided == [True]
    assert engine_module.orphans() == 0
    assert unraisable == []
