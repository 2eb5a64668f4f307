"""Reading a CSV file with a header row into a raw table of cell strings."""

from __future__ import annotations

import csv
import io

from allmende.errors import ImportFileError

from .json_source import decode_text
from .model import RawTable

__all__ = ["detect_delimiter", "parse_csv"]


def detect_delimiter(header_line: str) -> str:
    """Return ``;`` if the header line holds more semicolons than commas, else ``,``.

    Counting on the header alone is enough (and, unlike csv.Sniffer, never guesses a
    letter): header names rarely contain either character.
    """
    return ";" if header_line.count(";") > header_line.count(",") else ","


def _header(path: str, line: int, cells: list[str]) -> list[str]:
    names = [cell.strip() for cell in cells]
    first_column: dict[str, int] = {}
    for column, name in enumerate(names, start=1):
        if not name:
            raise ImportFileError(path, f"line {line}", f"column {column} has no name")
        if name in first_column:
            raise ImportFileError(
                path,
                f"line {line}",
                f"duplicate column name '{name}' (columns {first_column[name]} and {column})",
            )
        first_column[name] = column
    return names


def parse_csv(path: str, data: bytes) -> RawTable:
    """Read CSV bytes (UTF-8, with or without BOM; ``,`` or ``;`` separated).

    The first non-blank record is the header; blank lines are skipped; an empty cell is
    null. Raises ImportFileError naming the physical ``line N`` (header = line 1) for
    text that is not UTF-8, broken quoting, an empty or duplicate column name, or a
    record whose number of cells differs from the header's; and "no records" for a file
    without data rows.
    """
    text = decode_text(path, data)
    delimiter = detect_delimiter(text.lstrip("\r\n").split("\n", 1)[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    names: list[str] | None = None
    header_line = width = previous = 0
    positions: list[int] = []
    rows: list[list[str]] = []
    try:
        for cells in reader:
            # A record may span lines (quoted newlines): it starts after the previous one.
            line, previous = previous + 1, reader.line_num
            if not cells:
                continue  # a blank line
            if names is None:
                header_line, names = line, _header(path, line, cells)
                width = len(names)
            elif len(cells) == width:
                positions.append(line)
                rows.append(cells)
            else:
                raise ImportFileError(
                    path,
                    f"line {line}",
                    f"expected {width} cells like the header, got {len(cells)} "
                    f"(separator '{delimiter}')",
                )
    except csv.Error as exc:
        line = max(reader.line_num, previous + 1)
        raise ImportFileError(path, f"line {line}", f"not valid CSV: {exc}") from None
    if names is None:
        raise ImportFileError(path, "", "no records (the file is empty)")
    if not rows:
        raise ImportFileError(path, "", "no records (the file has only a header)")
    columns = [[cell or None for cell in column] for column in zip(*rows, strict=True)]
    return RawTable(
        format="csv",
        names=names,
        columns=columns,
        positions=positions,
        label="line",
        text=True,
        header_line=header_line,
    )
