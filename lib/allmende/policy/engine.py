"""The embedded policy engine: one regorus engine answering data.allmende.decision.decision."""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import orjson
import regorus

from allmende.errors import PolicyError
from allmende.policy.agreements import load_agreements

__all__ = [
    "DECISION_RULE",
    "DEFAULT_MAX_ROWS",
    "Decision",
    "Evaluator",
    "PolicyEngine",
    "read_policy_sources",
    "regorus_message",
]

DECISION_RULE = "data.allmende.decision.decision"
DEFAULT_MAX_ROWS = 10_000
NO_DECISION = "policy produced no decision"
NO_REASON = "no rule allows this request"
_SETTINGS = ("default_max_rows",)

Evaluator = Literal["compiled", "interpreter"]

# How many distinct decisions (by the VM's JSON answer) the compiled path keeps.
_DECISION_CACHE_SIZE = 1024

# How many inputs (by their JSON text) the compiled path remembers the decision of. `now`
# changes every second, so this holds about the last second's distinct requests.
_ANSWER_CACHE_SIZE = 4096

# regorus' objects are bound to the thread that made them: dropped on another, they raise
# (reported as an unraisable error) and leak. An engine that the garbage collector frees on
# another thread (its last reference was in a cycle) leaves them here, by the thread that
# made them, which drops them when it next builds an engine or decides. Those of a thread
# that has ended stay here: no thread may drop them.
_ORPHANS: dict[threading.Thread, list[object]] = {}
_ORPHANS_LOCK = threading.Lock()


def _drop_orphans() -> None:
    """Drop the regorus objects that engines freed on other threads left for this one."""
    with _ORPHANS_LOCK:
        left = _ORPHANS.pop(threading.current_thread(), None)
    del left  # here, on the thread that made them


def _ending(thread: threading.Thread) -> bool:
    """True on ``thread`` itself while it ends: Python frees its locals (a thread pool
    worker's own engine, say) after ``threading`` has let go of it, when
    ``current_thread()`` is a stand-in. Its ident may be reused only once it has ended."""
    return thread.ident == threading.get_ident() and thread.is_alive()


def orphans(thread: threading.Thread | None = None) -> int:
    """How many regorus objects wait for ``thread`` (None: any thread) to drop them."""
    with _ORPHANS_LOCK:
        if thread is not None:
            return len(_ORPHANS.get(thread, ()))
        return sum(len(kept) for kept in _ORPHANS.values())


# Stands for a missing ``now`` in the input.
_NO_NOW = object()

# A version label: printable, no spaces or colons (the digest follows after a colon).
_LABEL = re.compile(r"[A-Za-z0-9._+-]{1,100}", re.ASCII)

# The input as the VM reads it. orjson writes it in ~1 µs where json takes 5-10 µs. Dates,
# dataclasses and subclasses of str/int/dict/list go to the (absent) default and so raise
# TypeError, as json does; integers beyond 53 bits raise too (regorus' interpreter takes
# none beyond 64 bits), so those inputs are left to the interpreter.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_STRICT_INTEGER
)

# Refuses NaN and the infinities, which orjson writes as null.
_STRICT_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode

# What regorus' compiled VM (Rvm.execute) returns when the rule is undefined.
_RVM_UNDEFINED = '"<undefined>"'

# RFC 3339 times that both Python and regorus read the same way. regorus' interpreter fails
# the evaluation on a time it cannot parse, its VM leaves the value undefined and goes on;
# every time that does not fit here is therefore decided by the interpreter.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})", re.ASCII
)

# A request of every kind the policy must answer, evaluated once when the engine is built so
# that a policy that cannot evaluate fails at start-up, not at the first request.
_PROBE_INPUT: dict[str, Any] = {
    "subject": {"member": "probe-consumer", "cluster": "probe", "service": "probe"},
    "action": "query",
    "resource": {
        "owner": "probe-owner",
        "cluster": "probe",
        "dataset": "probe",
        "classification": "internal",
        "fields": ["id"],
    },
    "request": {"purpose": "probe", "fields": ["id"], "limit": 1},
    "now": "2026-01-01T00:00:00+00:00",
}


@dataclass(frozen=True)
class Decision:
    """What the owner's policy decided for one request; the gateway enforces it as it is.

    ``mask`` maps field → how it is masked: "redact", "hash:<agreement id>" (HMAC with
    that agreement's salt), "coarsen:<decimals>" (numbers and coordinates rounded) or
    "bucket:<width>" (a number replaced by the lower edge of its bucket). ``row_filter``
    maps field → one condition ``{op: value}``, op one of eq, ne, lt, le, gt, ge, in; both
    are read-only views. ``way_in`` is "owner", "open" or "agreement" ("" for a denial) and
    ``agreements`` the sorted ids of the agreements that granted. ``min_group_size`` above 0
    makes the grant aggregate-only (groups of at least that many records);
    ``requests_per_minute`` above 0 is the consumer's quota under those agreements. A
    denial has no mask, no row filter and ``max_rows == 0``; ``reasons`` is sorted and
    never empty.
    """

    allow: bool
    reasons: tuple[str, ...]
    mask: Mapping[str, str]
    row_filter: Mapping[str, Mapping[str, Any]]
    max_rows: int
    policy_version: str
    way_in: str = ""
    agreements: tuple[str, ...] = ()
    min_group_size: int = 0
    requests_per_minute: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask", _freeze(self.mask))
        object.__setattr__(self, "row_filter", _freeze(self.row_filter))

    @classmethod
    def denied(cls, reasons: Sequence[str], policy_version: str) -> Decision:
        """A denial with these reasons (or "no rule allows this request")."""
        return cls(False, tuple(sorted(reasons)) or (NO_REASON,), {}, {}, 0, policy_version)

    def to_dict(self) -> dict[str, Any]:
        """The decision as plain JSON values, in the shape the Rego policy produces."""
        return {
            "allow": self.allow,
            "reasons": list(self.reasons),
            "mask": _thaw(self.mask),
            "row_filter": _thaw(self.row_filter),
            "max_rows": self.max_rows,
            "policy_version": self.policy_version,
            "way_in": self.way_in,
            "agreements": list(self.agreements),
            "min_group_size": self.min_group_size,
            "requests_per_minute": self.requests_per_minute,
        }


class PolicyEngine:
    """Rego policies, sharing agreements and settings compiled once, asked once per request.

    Two evaluators are built once and reused: regorus' interpreter (``regorus.Engine``, the
    reference) and, unless ``evaluator="interpreter"``, the policy compiled for regorus' VM
    (``regorus.Program`` run by a ``regorus.Rvm``), which decides in some 30-40 µs where the
    interpreter takes 90-200 µs. The compiled path hands every request it cannot answer
    exactly like the interpreter to the interpreter: a ``now`` (or an agreement time) that
    is not a plain RFC 3339 time, an input that is not plain JSON values, and an undefined
    decision. The policy is a pure function of the input and the engine's data, and the
    input holds ``now`` to the second, so the decision of each input the VM decided is kept
    (the last few thousand) and a repeated input is answered from there in a few µs. ``decide`` holds a lock while it sets the input and
    evaluates (the regorus calls must not interleave), so the engine may be shared by
    threads, though they take turns; regorus objects must be dropped on the thread that
    made them (see the gateway). To change policies or agreements, build a new engine and
    swap it in.
    """

    def __init__(
        self,
        policies: Mapping[str, str],
        agreements: Sequence[Mapping[str, Any]] = (),
        settings: Mapping[str, Any] | None = None,
        *,
        origin: str = "",
        evaluator: Evaluator = "compiled",
        version_label: str = "",
    ) -> None:
        """Compile ``policies`` (name → Rego source, test files left out) with the data.

        ``agreements`` are as ``load_agreements`` returns them; ``settings`` may set
        ``default_max_rows`` (a positive int). ``origin`` names where the policies came
        from, in messages. ``evaluator="interpreter"`` leaves the compiled path out (the
        ``evaluator`` property says which one decides). ``version_label`` (e.g.
        "cluster-v3+kaiserslautern-v5" for a policy bundle) is put before the digest:
        ``policy_version`` is then "<label>:sha256:…". Raises PolicyError when a policy
        does not compile, defines no package allmende.decision, cannot evaluate, or when
        the settings or the label are wrong, or an agreement lacks what ``load_agreements``
        adds (``members``, ``valid_from_ns``, ``valid_until_ns``).
        """
        self._thread = threading.current_thread()
        if _ORPHANS:
            _drop_orphans()
        where = f" (from {origin})" if origin else ""
        if not policies:
            raise PolicyError(f"no Rego policies to load{where}")
        max_rows = _check_settings(settings or {})
        self._sources = dict(sorted(policies.items()))
        self._agreements = [dict(a) for a in agreements]
        _check_compiled(self._agreements)
        data: dict[str, Any] = {
            "allmende": {
                "sharing": {"agreements": self._agreements},
                "settings": {"default_max_rows": max_rows},
            }
        }
        try:
            canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"agreements or settings are not plain JSON values: {exc}") from exc
        digest = hashlib.sha256()
        for name, source in self._sources.items():
            digest.update(f"{name}\0{source}\0".encode())
        digest.update(canonical.encode())
        if version_label and not _LABEL.fullmatch(version_label):
            raise PolicyError(
                f"policy version label {version_label!r} must be letters, digits and . _ + -"
            )
        prefix = f"{version_label}:" if version_label else ""
        self._version = prefix + "sha256:" + digest.hexdigest()[:12]
        data["allmende"]["settings"]["policy_version"] = self._version

        # Kept on self from the start, not in a local: if building fails and the raised
        # exception's frames end up in a reference cycle, __del__ hands it back to this
        # thread (_ORPHANS) wherever the cycle is freed.
        self._engine = regorus.Engine()
        for name, source in self._sources.items():
            try:
                self._engine.add_policy(name, source)
            except RuntimeError as exc:
                raise PolicyError(
                    f"policy {name}{where} does not compile: {regorus_message(exc)}"
                ) from exc
        try:
            self._engine.add_data_json(json.dumps(data))
        except RuntimeError as exc:
            raise PolicyError(f"regorus refused the agreements: {regorus_message(exc)}") from exc
        if "data.allmende.decision" not in self._engine.get_packages():
            raise PolicyError(f"the policies{where} define no package allmende.decision")
        self._lock = threading.Lock()
        self._rvm: Any = None
        self._decisions: dict[str, Decision] = {}
        self._answers: dict[str, Decision] = {}
        self._plain_now: object = None  # the last `now` found plain
        if evaluator not in ("compiled", "interpreter"):
            raise PolicyError(f"unknown policy evaluator {evaluator!r}")
        if evaluator == "compiled" and _plain_times(self._agreements):
            self._rvm = _compile(self._sources, json.dumps(data))
        try:
            reference = self.decide_interpreted(_PROBE_INPUT)
            if self._rvm is not None and self.decide(_PROBE_INPUT) != reference:
                self._rvm = None  # the VM disagrees with the reference: leave it out
        except PolicyError as exc:
            raise PolicyError(f"the policies{where} cannot decide a sample request: {exc}") from exc

    @classmethod
    def from_paths(
        cls,
        policy_dir: str | os.PathLike[str],
        agreements_dir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> PolicyEngine:
        """Build an engine from every ``*.rego`` under ``policy_dir`` except ``*_test.rego``.

        ``agreements_dir`` is a directory of agreement YAML files (or one file); None means
        no agreements. Raises PolicyError (AgreementError for the agreements) naming every
        problem.
        """
        agreements = load_agreements(agreements_dir) if agreements_dir is not None else []
        sources = read_policy_sources(policy_dir, include_tests=False)
        return cls(sources, agreements, settings, origin=str(policy_dir))

    @property
    def policy_version(self) -> str:
        """``sha256:`` and 12 hex digits over the Rego sources, the agreements and settings.

        With a ``version_label`` the label comes first: "cluster-v3+kaiserslautern-v5:sha256:…".
        """
        return self._version

    @property
    def evaluator(self) -> Evaluator:
        """ "compiled" when regorus' VM decides (the interpreter only for odd requests)."""
        return "interpreter" if self._rvm is None else "compiled"

    @property
    def policy_names(self) -> tuple[str, ...]:
        """The names of the loaded Rego files, sorted."""
        return tuple(self._sources)

    def __del__(self) -> None:
        # Also for an engine whose __init__ raised: what it had built goes the same way.
        thread = self.__dict__.get("_thread")
        if thread is None or thread is threading.current_thread() or _ending(thread):
            return
        kept = [self.__dict__.pop(name, None) for name in ("_rvm", "_engine")]
        with _ORPHANS_LOCK:
            _ORPHANS.setdefault(thread, []).extend(k for k in kept if k is not None)

    @property
    def agreement_ids(self) -> tuple[str, ...]:
        """The ids of the loaded agreements, in load order."""
        return tuple(str(a.get("agreement", "")) for a in self._agreements)

    def decide(self, input: Mapping[str, Any], *, input_json: str | None = None) -> Decision:
        """Evaluate data.allmende.decision.decision for ``input`` (see input.schema.json).

        ``input_json`` is ``input`` as JSON text, when the caller has it and built
        ``input`` of plain JSON values only (dict, list, str, bool, None and whole numbers
        within ±2**53), as the gateway's Enforcer does (its inputs are sealed for the audit
        log, allmende.audit.chain.sealed_text): the engine then neither encodes nor checks
        ``input`` itself. A policy that produces nothing denies ("policy produced no
        decision"). Raises PolicyError when the input holds values Rego has no type for
        (dates, objects, NaN), when regorus fails, or when the decision is malformed.
        """
        if _ORPHANS:
            _drop_orphans()
        document = input if isinstance(input, dict) else dict(input)
        if self._rvm is not None:
            text = _input_json(document) if input_json is None else input_json
            if text is not None:
                # The policy is a pure function of the input and the engine's data, and
                # `now` is part of the input: an input seen before is decided as it was.
                decision = self._answers.get(text)
                if decision is None:
                    decision = self._decide_compiled(document, text)
                    if decision is not None:
                        if len(self._answers) >= _ANSWER_CACHE_SIZE:
                            self._answers.clear()
                        self._answers[text] = decision
                if decision is not None:
                    return decision
        return self.decide_interpreted(document)

    def _decide_compiled(self, document: dict[str, Any], text: str) -> Decision | None:
        """The VM's decision; None when the interpreter must answer instead."""
        now = document.get("now", _NO_NOW)
        # Requests come many to a second, all with the same `now`: check it once.
        if not (
            now is _NO_NOW or (type(now) is str and (now == self._plain_now or _plain_time(now)))
        ):
            return None
        self._plain_now = now
        out = self._execute(document, text)
        if out is None or out == _RVM_UNDEFINED:
            return None
        # Requests repeat their decisions: keep the Decision for each answer.
        decision = self._decisions.get(out)
        if decision is None:
            decision = _decision(json.loads(out))
            if len(self._decisions) >= _DECISION_CACHE_SIZE:
                self._decisions.clear()
            self._decisions[out] = decision
        return decision

    def _execute(self, document: dict[str, Any], text: str | None = None) -> str | None:
        """The VM's answer as JSON text; None when the interpreter must answer instead.

        ``text`` is ``document`` as ``_input_json`` writes it, when the caller has it.
        """
        if text is None and (text := _input_json(document)) is None:
            return None
        with self._lock:
            try:
                self._rvm.set_input_json(text)
                return str(self._rvm.execute())
            except (RuntimeError, TypeError, ValueError):
                return None  # the interpreter reports the failure in its own words

    def decide_interpreted(self, input: Mapping[str, Any]) -> Decision:
        """``decide`` by regorus' interpreter alone: the reference the compiled path matches."""
        # set_input converts the Python values directly; json.dumps + set_input_json cost
        # some 25 µs more per decision here.
        document = input if isinstance(input, dict) else dict(input)
        with self._lock:
            try:
                self._engine.set_input(document)
            except (RuntimeError, TypeError, ValueError) as exc:
                raise PolicyError(
                    f"policy input is not plain JSON: {regorus_message(exc)}"
                ) from exc
            try:
                result = self._engine.eval_rule(DECISION_RULE)
            except (RuntimeError, TypeError, ValueError) as exc:
                raise PolicyError(f"policy evaluation failed: {regorus_message(exc)}") from exc
        if result is None:
            return Decision.denied([NO_DECISION], self._version)
        return _decision(result)


def read_policy_sources(
    policy_dir: str | os.PathLike[str], *, include_tests: bool
) -> dict[str, str]:
    """Every ``*.rego`` under ``policy_dir`` as relative POSIX path → source, sorted.

    ``*_test.rego`` files only when ``include_tests``. Raises PolicyError when the
    directory is missing, holds no policy, or a file cannot be read.
    """
    root = Path(policy_dir)
    if not root.is_dir():
        raise PolicyError(f"policy directory {root} does not exist")
    sources: dict[str, str] = {}
    for path in sorted(root.rglob("*.rego")):
        if not include_tests and path.name.endswith("_test.rego"):
            continue
        try:
            sources[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"policy {path} cannot be read: {exc}") from exc
    if not sources:
        raise PolicyError(f"policy directory {root} holds no .rego files")
    return sources


def regorus_message(exc: BaseException) -> str:
    """regorus' message without the Rust stack trace that RUST_BACKTRACE adds to it."""
    text = str(exc).split("Stack backtrace:", 1)[0].strip()
    return re.sub(r"\n\s*\n", "\n", text) or type(exc).__name__


def _input_json(document: dict[str, Any]) -> str | None:
    """``document`` as JSON text; None when it holds anything but plain JSON values.

    The interpreter then decides, or names what it refuses, exactly as without the VM.
    """
    try:
        # marshal takes only the built-in types: it refuses what orjson writes but regorus'
        # interpreter does not take (UUIDs, enums, orjson.Fragment) and str/int subclasses.
        marshal.dumps(document)
        text = orjson.dumps(document, option=_ORJSON_OPTIONS)
    except (TypeError, ValueError, RecursionError):
        return None
    if b"null" in text:
        # orjson writes NaN and the infinities as null; they are no JSON at all.
        try:
            _STRICT_JSON(document)
        except (TypeError, ValueError):
            return None
    return text.decode()


def _plain_time(value: str) -> bool:
    """True when ``value`` is an RFC 3339 time that regorus' interpreter and VM both read."""
    if _RFC3339.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _plain_times(agreements: Sequence[Mapping[str, Any]]) -> bool:
    """True when every agreement's times are plain, so the VM never meets a bad one."""
    for a in agreements:
        start, end = a.get("valid_from"), a.get("valid_until")
        if not (isinstance(start, str) and _plain_time(start)):
            return False
        if isinstance(end, str) and not _plain_time(end):
            return False
    return True


def _compile(sources: Mapping[str, str], data_json: str) -> Any:
    """The policies compiled for regorus' VM with the data loaded; None when it cannot be."""
    try:
        program = regorus.Program.compile_from_modules(
            data_json, list(sources.items()), [DECISION_RULE]
        )
        vm = regorus.Rvm()
        vm.load_program(program)
        vm.set_data_json(data_json)
    except RuntimeError:
        return None  # a construct the VM lacks: the interpreter decides everything
    return vm


# What load_agreements adds to what stewards write; the Rego library matches on these.
_COMPILED_KEYS = ("members", "valid_from_ns", "valid_until_ns")


def _check_compiled(agreements: Sequence[Mapping[str, Any]]) -> None:
    """Raise PolicyError naming agreements that did not come from ``load_agreements``."""
    stale = [
        f"{a.get('agreement', '(no id)')} (missing {', '.join(k for k in _COMPILED_KEYS if k not in a)})"
        for a in agreements
        if any(k not in a for k in _COMPILED_KEYS)
    ]
    if stale:
        raise PolicyError(
            "agreements must be passed as allmende.policy.load_agreements compiles them: "
            + "; ".join(stale)
        )


def _check_settings(settings: Mapping[str, Any]) -> int:
    problems = [f"unknown policy setting '{key}'" for key in settings if key not in _SETTINGS]
    max_rows = settings.get("default_max_rows", DEFAULT_MAX_ROWS)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        problems.append(f"default_max_rows must be a positive whole number, not {max_rows!r}")
    if problems:
        raise PolicyError("policy settings: " + "; ".join(problems))
    return int(max_rows)


def _decision(result: Any) -> Decision:
    """Check the policy's document and turn it into a Decision; fail closed on anything odd."""
    try:
        allow = result["allow"]
        reasons = result["reasons"]
        version = result["policy_version"]
        mask, row_filter, max_rows = result["mask"], result["row_filter"], result["max_rows"]
        if not (isinstance(allow, bool) and isinstance(version, str)):
            raise TypeError("allow must be a boolean and policy_version a string")
        if not (isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)):
            raise TypeError("reasons must be a list of strings")
        if not allow:
            return Decision.denied(reasons, version)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in mask.items()):
            raise TypeError("mask must map field names to strings")
        if not all(isinstance(k, str) and isinstance(v, dict) for k, v in row_filter.items()):
            raise TypeError("row_filter must map field names to conditions")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0:
            raise TypeError("max_rows must be a whole number >= 0")
        way_in = result.get("way_in", "")
        agreements = result.get("agreements", [])
        min_group_size = result.get("min_group_size", 0)
        per_minute = result.get("requests_per_minute", 0)
        if not isinstance(way_in, str):
            raise TypeError("way_in must be a string")
        if not (isinstance(agreements, list) and all(isinstance(a, str) for a in agreements)):
            raise TypeError("agreements must be a list of strings")
        for name, n in (("min_group_size", min_group_size), ("requests_per_minute", per_minute)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise TypeError(f"{name} must be a whole number >= 0")
    except (KeyError, TypeError, AttributeError) as exc:
        raise PolicyError(f"policy decision is malformed: {exc}: {result!r}") from exc
    return Decision(
        True,
        tuple(sorted(reasons)),
        mask,
        row_filter,
        max_rows,
        version,
        way_in,
        tuple(sorted(agreements)),
        min_group_size,
        per_minute,
    )


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value
