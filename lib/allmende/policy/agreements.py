"""Sharing agreements: read the stewards' YAML files, check every field, compile them to data.

One agreement per file (see ``policies/agreements.schema.json``)::

    agreement: ka-ps-permits-2026
    provider: kaiserslautern
    datasets: [parking-permits]
    consumers: [pirmasens]
    purposes: [traffic-planning]
    mask: {holder: redact}
    row_filter: {district: {in: [Innenstadt]}}
    valid_from: 2026-01-01
    valid_until: 2027-01-01
    max_rows: 500

The result is the list the Rego library ``allmende.agreements`` reads from
``data.allmende.sharing.agreements``: plain JSON values, times as RFC 3339 UTC strings.
Every problem in every file is collected before anything is raised, each one named by file
and line, so a steward fixes them all in one go.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from allmende.errors import PolicyError
from allmende.identity import NAME_PATTERN

__all__ = [
    "AGREEMENT_KEYS",
    "MASK_KINDS",
    "ROW_FILTER_OPERATORS",
    "AgreementError",
    "load_agreements",
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
    "replicate",
)
REQUIRED_KEYS = ("agreement", "provider", "datasets", "consumers", "purposes", "valid_from")
MASK_KINDS = ("redact",)
ROW_FILTER_OPERATORS = ("eq", "in")

# time.parse_rfc3339_ns counts nanoseconds in a signed 64-bit integer: 1677..2262.
_EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_LATEST = dt.datetime(2262, 1, 1, tzinfo=dt.UTC)
_NAME_RULE = "lowercase letters, digits and inner hyphens"
_TIME_EXAMPLE = "a date (2026-01-01) or an RFC 3339 time with a zone (2026-01-01T08:00:00Z)"


class AgreementError(PolicyError):
    """One or more agreement files are wrong; ``problems`` lists every one ("file, line n: …")."""

    reason = "BAD_AGREEMENT"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in sharing agreements\n{lines}")


def load_agreements(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Load one agreement file, or every ``*.yaml``/``*.yml`` file of a directory (by name).

    Returns the agreements as ``data.allmende.sharing.agreements`` expects them. An empty
    directory gives an empty list. Raises AgreementError listing every problem in every
    file, including agreement ids used twice, and a missing or unreadable path.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    elif root.is_file():
        files = [root]
    else:
        raise AgreementError([f"{root}: no such file or directory"])

    problems: list[str] = []
    agreements: list[dict[str, Any]] = []
    first_use: dict[str, str] = {}
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{file}: cannot be read: {exc}")
            continue
        checker = _Checker(str(file))
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


def parse_agreement(text: str, source: str = "<agreement>") -> dict[str, Any]:
    """Check one agreement's YAML text and return it as policy data.

    ``source`` names the text in messages (usually its file). Raises AgreementError listing
    every problem with its line, or the place where malformed YAML stops making sense.
    """
    checker = _Checker(source)
    agreement = checker.agreement(text)
    if agreement is None:
        raise AgreementError(checker.problems)
    return agreement


class _Checker:
    """Checks the text of one file, collecting problems instead of stopping at the first."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.id_line = 1
        # Only its constructor is used: it turns one scalar node into a Python value.
        self._constructor = yaml.SafeLoader("")

    def problem(self, node: yaml.Node | None, message: str) -> None:
        if node is None:
            self.problems.append(f"{self.source}: {message}")
        else:
            self.problems.append(f"{self.source}, line {node.start_mark.line + 1}: {message}")

    def agreement(self, text: str) -> dict[str, Any] | None:
        """The checked agreement, or None when there were problems (see ``problems``)."""
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
            self.problem(None, "is empty; an agreement needs the keys " + ", ".join(REQUIRED_KEYS))
            return None
        if not isinstance(root, yaml.MappingNode):
            self.problem(root, f"expected a mapping of keys ({', '.join(REQUIRED_KEYS)}, …)")
            return None
        result = self._fields(root)
        return None if self.problems else result

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
        for key in ("datasets", "consumers", "purposes"):
            if key in seen:
                result[key] = self._names(seen[key], key)
        result["mask"] = self._mask(seen["mask"]) if "mask" in seen else {}
        result["row_filter"] = self._row_filter(seen["row_filter"]) if "row_filter" in seen else {}
        start = self._time(seen["valid_from"], "valid_from") if "valid_from" in seen else None
        if start is not None:
            result["valid_from"] = _rfc3339(start)
        if "valid_until" in seen:
            end = self._time(seen["valid_until"], "valid_until")
            if end is not None:
                result["valid_until"] = _rfc3339(end)
                if start is not None and end <= start:
                    self.problem(
                        seen["valid_until"],
                        f"valid_until {_rfc3339(end)} is not after valid_from {_rfc3339(start)}",
                    )
        if "max_rows" in seen:
            result["max_rows"] = self._max_rows(seen["max_rows"])
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

    def _name(self, node: yaml.Node, what: str) -> str:
        # An id is text whatever YAML would make of it (2026, no, 1e3), so read it as written.
        ok, _ = self._scalar(node, what)
        if not ok:
            return ""
        if not NAME_PATTERN.fullmatch(node.value):
            self.problem(node, f"{what} {node.value!r} is not a valid id: use {_NAME_RULE}")
            return ""
        return str(node.value)

    def _names(self, node: yaml.Node, what: str) -> list[str]:
        if not isinstance(node, yaml.SequenceNode):
            example = node.value if isinstance(node, yaml.ScalarNode) else "…"
            self.problem(node, f"{what} must be a list, e.g. [{example}]")
            return []
        if not node.value:
            self.problem(node, f"{what} must name at least one entry")
        names: list[str] = []
        for item in node.value:
            name = self._name(item, f"entry of {what}")
            if name and name in names:
                self.problem(item, f"{what} lists '{name}' twice")
            names.append(name)
        return names

    def _mapping(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping of field names")
            return []
        pairs: list[tuple[str, yaml.Node]] = []
        for key_node, value_node in node.value:
            ok, key = self._scalar(key_node, f"a field name in {what}")
            if ok and not (isinstance(key, str) and key):
                self.problem(key_node, f"{what}: field name {key!r} must be a non-empty string")
            elif ok and key in dict(pairs):
                self.problem(key_node, f"{what}: field '{key}' appears twice")
            elif ok:
                pairs.append((key, value_node))
        return pairs

    def _mask(self, node: yaml.Node) -> dict[str, str]:
        mask: dict[str, str] = {}
        for field, kind_node in self._mapping(node, "mask"):
            ok, kind = self._scalar(kind_node, f"mask of field '{field}'")
            if ok and kind not in MASK_KINDS:
                known = ", ".join(MASK_KINDS)
                self.problem(
                    kind_node,
                    f"unknown mask kind {kind_node.value!r} for field '{field}' (known: {known})",
                )
            mask[field] = kind if isinstance(kind, str) else ""
        return mask

    def _row_filter(self, node: yaml.Node) -> dict[str, dict[str, Any]]:
        row_filter: dict[str, dict[str, Any]] = {}
        for field, cond in self._mapping(node, "row_filter"):
            usage = f"row_filter of field '{field}' must be {{in: [a, b]}} or {{eq: a}}"
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
            elif op == "eq":
                row_filter[field] = {"eq": self._filter_value(operand, field)}
            elif not isinstance(operand, yaml.SequenceNode) or not operand.value:
                self.problem(operand, f"{usage}; 'in' needs a non-empty list")
            else:
                row_filter[field] = {"in": [self._filter_value(v, field) for v in operand.value]}
        return row_filter

    def _filter_value(self, node: yaml.Node, field: str) -> Any:
        ok, value = self._scalar(node, f"row_filter value of field '{field}'")
        if isinstance(value, dt.datetime):
            return _rfc3339(value) if value.tzinfo else value.isoformat()
        if isinstance(value, dt.date):
            return value.isoformat()
        if ok and (value is None or not isinstance(value, str | int | float | bool)):
            self.problem(node, f"row_filter value of field '{field}' must be text or a number")
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

    def _max_rows(self, node: yaml.Node) -> int:
        ok, value = self._scalar(node, "max_rows")
        if ok and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            self.problem(node, f"max_rows must be a positive whole number, not {node.value}")
        return value if isinstance(value, int) else 0


def _replicate_problem(result: dict[str, Any]) -> str:
    """Why an agreement cannot hand out whole records, or "" when it can."""
    limits = [k for k in ("mask", "row_filter") if result.get(k)]
    limits += ["max_rows"] if "max_rows" in result else []
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


def _rfc3339(when: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, as the gateway writes ``now``: 2026-01-01T00:00:00Z."""
    utc = when.astimezone(dt.UTC)
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"
