"""Sharing agreements: read the stewards' YAML files, check every field, compile them to data.

One agreement per file (``policies/agreements.schema.json``; every key is explained in
``policies/README.md``)::

    agreement: ka-ps-permits-2026
    provider: kaiserslautern
    datasets: [parking-permits]
    consumers: [pirmasens, group:suedwest-partners]   # groups: groups.yaml in the folder
    purposes: [traffic-planning]
    mask: {holder: redact, plate: hash, location: {coarsen: 2}, capacity: {bucket: 50}}
    row_filter: {district: {in: [Innenstadt]}, capacity: {ge: 10}}
    valid_from: 2026-01-01
    valid_until: 2027-01-01
    max_rows: 500
    requests_per_minute: 60
    aggregate_only: {min_group_size: 5}

The result is the list the Rego library ``allmende.agreements`` reads from
``data.allmende.sharing.agreements``: plain JSON values; times as RFC 3339 UTC ending in
``+00:00`` (regorus and regopy both read that) and as ``valid_from_ns``/``valid_until_ns``
(``NO_END_NS`` without an end) so the policy parses no time per request; masks as the
gateway's specs (``redact``, ``hash:<agreement id>``, ``coarsen:<N>``, ``bucket:<W>``);
``members`` the consumers with groups expanded; ``min_group_size`` and
``requests_per_minute`` 0 when not set. Every problem in every file is collected before
anything is raised, each one named by file and line, so a steward fixes them all in one go.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from allmende.errors import PolicyError
from allmende.identity import NAME_PATTERN

__all__ = [
    "AGREEMENT_KEYS",
    "GROUPS_FILE",
    "MASK_KINDS",
    "NO_END_NS",
    "ROW_FILTER_OPERATORS",
    "AgreementError",
    "load_agreements",
    "load_groups",
    "parse_agreement",
]

AGREEMENT_KEYS = (
    "agreement",
    "provider",
    "datasets",
    "consumers",
    "purposes",
    "mask",
    "row_filter",
    "valid_from",
    "valid_until",
    "max_rows",
    "requests_per_minute",
    "aggregate_only",
    "replicate",
)
REQUIRED_KEYS = ("agreement", "provider", "datasets", "consumers", "purposes", "valid_from")
MASK_KINDS = ("redact", "hash", "coarsen", "bucket")
ROW_FILTER_OPERATORS = ("eq", "ne", "lt", "le", "gt", "ge", "in")
GROUPS_FILE = "groups.yaml"
GROUP_PREFIX = "group:"
MAX_COARSEN_DECIMALS = 10

# time.parse_rfc3339_ns counts nanoseconds in a signed 64-bit integer: 1677..2262.
_EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LATEST = dt.datetime(2262, 1, 1, tzinfo=dt.UTC)
# valid_until_ns of an agreement that does not expire: the latest time an agreement may name.
NO_END_NS = 9_214_646_400_000_000_000
_NAME_RULE = "lowercase letters, digits and inner hyphens"
_TIME_EXAMPLE = "a date (2026-01-01) or an RFC 3339 time with a zone (2026-01-01T08:00:00Z)"
_MASK_USAGE = "redact, hash, {coarsen: N} (N = 0..10 decimals) or {bucket: W} (W > 0)"
_FILTER_USAGE = (
    "one condition {op: value}, op one of eq, ne, lt, le, gt, ge, in "
    "(e.g. {in: [a, b]} or {ge: 10})"
)


class AgreementError(PolicyError):
    """One or more agreement files are wrong; ``problems`` lists every one ("file, line n: …")."""

    reason = "BAD_AGREEMENT"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in sharing agreements\n{lines}")


def load_agreements(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Load one agreement file, or every ``*.yaml``/``*.yml`` file of a directory (by name).

    ``groups.yaml`` in the directory (or beside the one file) defines the groups that
    ``consumers`` may name as ``group:<name>``; it is not an agreement. Returns the
    agreements as ``data.allmende.sharing.agreements`` expects them. An empty directory
    gives an empty list. Raises AgreementError listing every problem in every file,
    including agreement ids used twice, unknown groups, and a missing or unreadable path.
    """
    root = Path(path)
    if root.is_dir():
        folder = root
        files = sorted(
            p
            for p in root.iterdir()
            if p.suffix in (".yaml", ".yml") and p.is_file() and p.name != GROUPS_FILE
        )
    elif root.is_file():
        folder = root.parent
        files = [root]
    else:
        raise AgreementError([f"{root}: no such file or directory"])

    problems: list[str] = []
    groups: dict[str, list[str]] | None = None
    if (folder / GROUPS_FILE).is_file():
        try:
            groups = load_groups(folder / GROUPS_FILE)
        except AgreementError as exc:
            problems.extend(exc.problems)
            groups = {}
    agreements: list[dict[str, Any]] = []
    first_use: dict[str, str] = {}
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{file}: cannot be read: {exc}")
            continue
        checker = _Checker(str(file), groups, folder / GROUPS_FILE)
        agreement = checker.agreement(text)
        problems.extend(checker.problems)
        if agreement is None:
            continue
        ident = agreement["agreement"]
        where = f"{file}, line {checker.id_line}"
        if ident in first_use:
            problems.append(
                f"{where}: agreement id '{ident}' is already used in {first_use[ident]}"
            )
            continue
        first_use[ident] = where
        agreements.append(agreement)
    if problems:
        raise AgreementError(problems)
    return agreements


def parse_agreement(
    text: str,
    source: str = "<agreement>",
    groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Check one agreement's YAML text and return it as policy data.

    ``source`` names the text in messages (usually its file); ``groups`` maps group name →
    members for consumers written ``group:<name>``. Raises AgreementError listing every
    problem with its line, or the place where malformed YAML stops making sense.
    """
    known = {k: list(v) for k, v in groups.items()} if groups is not None else None
    checker = _Checker(source, known, None)
    agreement = checker.agreement(text)
    if agreement is None:
        raise AgreementError(checker.problems)
    return agreement


def load_groups(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a ``groups.yaml`` (``groups: {name: [member, …]}``): group name → sorted members.

    Raises AgreementError naming file and line of every problem (bad names, empty or
    repeated groups or members, unknown keys, malformed YAML, an unreadable file).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AgreementError([f"{file}: cannot be read: {exc}"]) from exc
    checker = _Checker(str(file), None, None)
    groups = checker.groups_file_text(text)
    if groups is None:
        raise AgreementError(checker.problems)
    return groups


class _Checker:
    """Checks the text of one file, collecting problems instead of stopping at the first."""

    def __init__(
        self, source: str, groups: dict[str, list[str]] | None, groups_file: Path | None
    ) -> None:
        self.source = source
        self.problems: list[str] = []
        self.id_line = 1
        self.groups = groups
        self.groups_file = groups_file
        # Only its constructor is used: it turns one scalar node into a Python value.
        self._constructor = yaml.SafeLoader("")

    def problem(self, node: yaml.Node | None, message: str) -> None:
        if node is None:
            self.problems.append(f"{self.source}: {message}")
        else:
            self.problems.append(f"{self.source}, line {node.start_mark.line + 1}: {message}")

    def _root(self, text: str, needs: str) -> yaml.MappingNode | None:
        """The document's top mapping, or None with the problem recorded."""
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f", line {mark.line + 1}" if mark else ""
            problem = exc.problem or "cannot be parsed"
            if exc.context and exc.problem:
                problem = f"{problem} ({exc.context})"
            self.problems.append(f"{self.source}{where}: malformed YAML: {problem}")
            return None
        except yaml.YAMLError as exc:
            self.problems.append(f"{self.source}: malformed YAML: {exc}")
            return None
        if root is None:
            self.problem(None, f"is empty; {needs}")
            return None
        if not isinstance(root, yaml.MappingNode):
            self.problem(root, f"expected a mapping of keys; {needs}")
            return None
        return root

    def agreement(self, text: str) -> dict[str, Any] | None:
        """The checked agreement, or None when there were problems (see ``problems``)."""
        root = self._root(text, "an agreement needs the keys " + ", ".join(REQUIRED_KEYS))
        if root is None:
            return None
        result = self._fields(root)
        return None if self.problems else result

    def groups_file_text(self, text: str) -> dict[str, list[str]] | None:
        """The checked groups file, or None when there were problems."""
        root = self._root(text, "a groups file holds groups: {name: [member, …]}")
        if root is None:
            return None
        groups: dict[str, list[str]] = {}
        found = False
        for key_node, value_node in root.value:
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.value == "groups"):
                self.problem(key_node, f"unknown key {key_node.value!r} (only 'groups')")
                continue
            found = True
            for name, members_node in self._mapping(value_node, "groups", "group names"):
                if not NAME_PATTERN.fullmatch(name):
                    self.problem(members_node, f"group name {name!r} is not valid: {_NAME_RULE}")
                    continue
                members = self._names(members_node, f"members of group '{name}'")
                groups[name] = sorted(set(members))
        if not found:
            self.problem(root, "missing key 'groups'")
        return None if self.problems else groups

    def _fields(self, root: yaml.MappingNode) -> dict[str, Any]:
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in root.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                self.problem(key_node, "keys must be plain words")
            elif key in seen:
                self.problem(key_node, f"key '{key}' appears twice")
            elif key not in AGREEMENT_KEYS:
                close = difflib.get_close_matches(key, AGREEMENT_KEYS, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.problem(key_node, f"unknown key '{key}'{hint}")
            else:
                seen[key] = value_node
        for key in REQUIRED_KEYS:
            if key not in seen:
                self.problem(root, f"missing key '{key}'")
        if "agreement" in seen:
            self.id_line = seen["agreement"].start_mark.line + 1

        result: dict[str, Any] = {}
        for key in ("agreement", "provider"):
            if key in seen:
                result[key] = self._name(seen[key], key)
        for key in ("datasets", "purposes"):
            if key in seen:
                result[key] = self._names(seen[key], key)
        if "consumers" in seen:
            result["consumers"] = self._names(seen["consumers"], "consumers", groups=True)
            result["members"] = self._members(seen["consumers"], result["consumers"])
        ident = result.get("agreement", "")
        result["mask"] = self._mask(seen["mask"], ident) if "mask" in seen else {}
        result["row_filter"] = self._row_filter(seen["row_filter"]) if "row_filter" in seen else {}
        start = self._time(seen["valid_from"], "valid_from") if "valid_from" in seen else None
        if start is not None:
            result["valid_from"] = _rfc3339(start)
            result["valid_from_ns"] = _ns(start)
        # Precomputed for the policy, which then parses no agreement time per request.
        result["valid_until_ns"] = NO_END_NS
        if "valid_until" in seen:
            end = self._time(seen["valid_until"], "valid_until")
            if end is not None:
                result["valid_until"] = _rfc3339(end)
                result["valid_until_ns"] = _ns(end)
                if start is not None and end <= start:
                    self.problem(
                        seen["valid_until"],
                        f"valid_until {_rfc3339(end)} is not after valid_from {_rfc3339(start)}",
                    )
        if "max_rows" in seen:
            result["max_rows"] = self._positive(seen["max_rows"], "max_rows")
        result["requests_per_minute"] = (
            self._positive(seen["requests_per_minute"], "requests_per_minute")
            if "requests_per_minute" in seen
            else 0
        )
        result["min_group_size"] = (
            self._aggregate_only(seen["aggregate_only"]) if "aggregate_only" in seen else 0
        )
        result["replicate"] = self._replicate(seen.get("replicate"), result)
        return result

    # --- one field each ---------------------------------------------------------------------

    def _scalar(self, node: yaml.Node, what: str) -> tuple[bool, Any]:
        if not isinstance(node, yaml.ScalarNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
            self.problem(node, f"{what} must be a single value, not {kind}")
            return False, None
        try:
            return True, self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            self.problem(node, f"{what} cannot be read: {exc}")
            return False, None

    def _name(self, node: yaml.Node, what: str, *, group: bool = False) -> str:
        # An id is text whatever YAML would make of it (2026, no, 1e3), so read it as written.
        ok, _ = self._scalar(node, what)
        if not ok:
            return ""
        text = str(node.value)
        name = text.removeprefix(GROUP_PREFIX) if group else text
        if not NAME_PATTERN.fullmatch(name):
            rule = f"use {_NAME_RULE}" + (" (or group:<name>)" if group else "")
            self.problem(node, f"{what} {text!r} is not a valid id: {rule}")
            return ""
        return text

    def _names(self, node: yaml.Node, what: str, *, groups: bool = False) -> list[str]:
        if not isinstance(node, yaml.SequenceNode):
            example = node.value if isinstance(node, yaml.ScalarNode) else "…"
            self.problem(node, f"{what} must be a list, e.g. [{example}]")
            return []
        if not node.value:
            self.problem(node, f"{what} must name at least one entry")
        names: list[str] = []
        for item in node.value:
            name = self._name(item, f"entry of {what}", group=groups)
            if name and name in names:
                self.problem(item, f"{what} lists '{name}' twice")
            names.append(name)
        return names

    def _members(self, node: yaml.Node, consumers: list[str]) -> list[str]:
        """The consumers with every ``group:<name>`` replaced by its members, sorted."""
        members: set[str] = set()
        items = node.value if isinstance(node, yaml.SequenceNode) else []
        for item, consumer in zip(items, consumers, strict=False):
            if not consumer.startswith(GROUP_PREFIX):
                members.add(consumer)
                continue
            name = consumer.removeprefix(GROUP_PREFIX)
            if self.groups is None:
                where = f" ({self.groups_file} does not exist)" if self.groups_file else ""
                self.problem(item, f"unknown group '{name}': no groups are defined{where}")
            elif name not in self.groups:
                known = ", ".join(sorted(self.groups)) or "none"
                self.problem(item, f"unknown group '{name}' (groups.yaml defines: {known})")
            else:
                members.update(self.groups[name])
        return sorted(members)

    def _mapping(
        self, node: yaml.Node, what: str, names: str = "field names"
    ) -> list[tuple[str, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping of {names}")
            return []
        pairs: list[tuple[str, yaml.Node]] = []
        for key_node, value_node in node.value:
            ok, key = self._scalar(key_node, f"a name in {what}")
            if ok and not (isinstance(key, str) and key):
                self.problem(key_node, f"{what}: name {key!r} must be a non-empty string")
            elif ok and key in dict(pairs):
                self.problem(key_node, f"{what}: '{key}' appears twice")
            elif ok:
                pairs.append((key, value_node))
        return pairs

    def _mask(self, node: yaml.Node, ident: str) -> dict[str, str]:
        return {f: self._mask_spec(f, kind, ident) for f, kind in self._mapping(node, "mask")}

    def _mask_spec(self, field: str, node: yaml.Node, ident: str) -> str:
        """``redact``, ``hash:<id>``, ``coarsen:<N>`` or ``bucket:<W>``; "" after a problem."""
        if isinstance(node, yaml.ScalarNode):
            kind = node.value
            if kind == "redact":
                return "redact"
            if kind == "hash":
                return f"hash:{ident}"
            if kind in ("coarsen", "bucket"):
                self.problem(node, f"mask '{kind}' of field '{field}' needs a value: {_MASK_USAGE}")
                return ""
            self.problem(
                node, f"unknown mask kind {kind!r} for field '{field}' (known: {_MASK_USAGE})"
            )
            return ""
        if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
            self.problem(node, f"mask of field '{field}' must be one of {_MASK_USAGE}")
            return ""
        kind_node, value_node = node.value[0]
        kind = kind_node.value if isinstance(kind_node, yaml.ScalarNode) else None
        if kind not in ("coarsen", "bucket"):
            hint = " (redact and hash take no value)" if kind in ("redact", "hash") else ""
            self.problem(
                kind_node, f"unknown mask kind {kind!r} for field '{field}'{hint}: {_MASK_USAGE}"
            )
            return ""
        ok, value = self._scalar(value_node, f"mask {kind} of field '{field}'")
        if not ok:
            return ""
        if kind == "coarsen":
            if type(value) is int and 0 <= value <= MAX_COARSEN_DECIMALS:
                return f"coarsen:{value}"
            self.problem(
                value_node,
                f"coarsen of field '{field}' must be a whole number of decimals from 0 "
                f"to {MAX_COARSEN_DECIMALS}, not {value_node.value}",
            )
            return ""
        if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
            self.problem(
                value_node,
                f"bucket of field '{field}' must be a positive number (the bucket width), "
                f"not {value_node.value}",
            )
            return ""
        return f"bucket:{value!r}"

    def _row_filter(self, node: yaml.Node) -> dict[str, dict[str, Any]]:
        row_filter: dict[str, dict[str, Any]] = {}
        for field, cond in self._mapping(node, "row_filter"):
            usage = f"row_filter of field '{field}' must be {_FILTER_USAGE}"
            if not isinstance(cond, yaml.MappingNode) or len(cond.value) != 1:
                self.problem(cond, usage)
                continue
            op_node, operand = cond.value[0]
            op = op_node.value if isinstance(op_node, yaml.ScalarNode) else None
            if op not in ROW_FILTER_OPERATORS:
                known = ", ".join(ROW_FILTER_OPERATORS)
                self.problem(
                    op_node, f"unknown row_filter operator {op!r} for field '{field}' ({known})"
                )
            elif op != "in":
                row_filter[field] = {op: self._filter_value(operand, field, op)}
            elif not isinstance(operand, yaml.SequenceNode) or not operand.value:
                self.problem(operand, f"{usage}; 'in' needs a non-empty list")
            else:
                row_filter[field] = {
                    "in": [self._filter_value(v, field, op) for v in operand.value]
                }
        return row_filter

    def _filter_value(self, node: yaml.Node, field: str, op: str) -> Any:
        ok, value = self._scalar(node, f"row_filter value of field '{field}'")
        if isinstance(value, dt.datetime):
            return _rfc3339(value) if value.tzinfo else value.isoformat()
        if isinstance(value, dt.date):
            return value.isoformat()
        if not ok:
            return value
        if value is None or not isinstance(value, str | int | float | bool):
            self.problem(node, f"row_filter value of field '{field}' must be text or a number")
        elif isinstance(value, float) and not math.isfinite(value):
            self.problem(node, f"row_filter value of field '{field}' must be a finite number")
        elif isinstance(value, bool) and op in ("lt", "le", "gt", "ge"):
            self.problem(node, f"row_filter {op} of field '{field}' needs text or a number")
        return value

    def _time(self, node: yaml.Node, what: str) -> dt.datetime | None:
        ok, value = self._scalar(node, what)
        if not ok:
            return None
        when = _as_datetime(value)
        if when is None:
            self.problem(node, f"{what} {value!r} is not {_TIME_EXAMPLE}")
        elif when.tzinfo is None:
            self.problem(node, f"{what} {value!s} has no time zone: add Z for UTC or +01:00")
            return None
        elif not _EARLIEST <= when < _LATEST:
            self.problem(node, f"{what} {_rfc3339(when)} is outside the years 1970 to 2261")
            return None
        return when

    def _aggregate_only(self, node: yaml.Node) -> int:
        """``aggregate_only: {min_group_size: k}`` (k >= 2): the k; 0 after a problem."""
        usage = "aggregate_only must be {min_group_size: k} with a whole number k >= 2"
        if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
            self.problem(node, usage)
            return 0
        key_node, value_node = node.value[0]
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.value == "min_group_size"):
            self.problem(key_node, f"{usage}; unknown key {getattr(key_node, 'value', '?')!r}")
            return 0
        ok, value = self._scalar(value_node, "min_group_size")
        if ok and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
            self.problem(
                value_node,
                f"min_group_size must be a whole number of at least 2, not {value_node.value}",
            )
            return 0
        return value if isinstance(value, int) else 0

    def _replicate(self, node: yaml.Node | None, result: dict[str, Any]) -> bool:
        """``replicate: true`` entitles the consumers to the dataset's data key (replicas)."""
        if node is None:
            return False
        ok, value = self._scalar(node, "replicate")
        if ok and not isinstance(value, bool):
            self.problem(node, f"replicate must be true or false, not {node.value}")
            return False
        problem = _replicate_problem(result) if value else ""
        if problem:
            self.problem(node, problem)
        return bool(value)

    def _positive(self, node: yaml.Node, what: str) -> int:
        ok, value = self._scalar(node, what)
        if ok and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            self.problem(node, f"{what} must be a positive whole number, not {node.value}")
            return 0
        return value if isinstance(value, int) else 0


def _replicate_problem(result: dict[str, Any]) -> str:
    """Why an agreement cannot hand out whole records, or "" when it can."""
    limits = [k for k in ("mask", "row_filter") if result.get(k)]
    limits += ["max_rows"] if "max_rows" in result else []
    limits += ["aggregate_only"] if result.get("min_group_size") else []
    if not limits:
        return ""
    return (
        "replicate: true gives the consumers the data key, and so every field of every "
        f"record on the backbone; it cannot be combined with {', '.join(limits)}"
    )


def _as_datetime(value: Any) -> dt.datetime | None:
    """A date (midnight UTC) or a datetime from YAML's value or a quoted string; else None."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                day = dt.date.fromisoformat(text)
                return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return dt.datetime.fromisoformat(text)
        except ValueError:
            return None
    return None


def _ns(when: dt.datetime) -> int:
    """Nanoseconds since 1970 (UTC), as Rego's time.parse_rfc3339_ns counts them."""
    return (when - _EARLIEST) // dt.timedelta(microseconds=1) * 1000


def _rfc3339(when: dt.datetime) -> str:
    """RFC 3339 in UTC as the gateway writes ``now``: 2026-01-01T00:00:00+00:00.

    Not "Z": regopy (rego-cpp) cannot parse a Z in time.parse_rfc3339_ns, and the
    policies must decide alike in both engines.
    """
    utc = when.astimezone(dt.UTC)
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "+00:00"
