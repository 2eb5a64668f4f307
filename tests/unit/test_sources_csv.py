"""CSV sources: delimiters, BOM, nulls, line numbers and every malformed case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from allmende.errors import ImportFileError
from allmende_node.sources import FieldSpec, read_source


def write(tmp_path: Path, text: str, name: str = "places.csv", bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def import_error(path: Path, **kwargs: Any) -> ImportFileError:
    with pytest.raises(ImportFileError) as caught:
        read_source(path, **kwargs)
    return caught.value


@pytest.mark.parametrize("separator", [",", ";"])
def test_comma_and_semicolon_separated(tmp_path: Path, separator: str) -> None:
    text = "id,name,capacity\np-1,Dom,120\np-2,Ring,80\n".replace(",", separator)

    source = read_source(write(tmp_path, text))

    assert source.format == "csv"
    assert source.extent is None
    assert source.fields == (
        FieldSpec("id", "string", nullable=False),
        FieldSpec("name", "string", nullable=False),
        FieldSpec("capacity", "integer", nullable=False),
    )
    assert source.records == {
        "p-1": {"id": "p-1", "name": "Dom", "capacity": 120},
        "p-2": {"id": "p-2", "name": "Ring", "capacity": 80},
    }


def test_semicolon_file_with_decimal_commas_in_quotes_stays_semicolon(tmp_path: Path) -> None:
    source = read_source(write(tmp_path, 'id;note\n1;"a, b, c"\n'))

    assert source.records["1"]["note"] == "a, b, c"


def test_bom_is_dropped(tmp_path: Path) -> None:
    source = read_source(write(tmp_path, "id;Größe\nä;1\n", bom=True))

    assert [spec.name for spec in source.fields] == ["id", "Größe"]
    assert source.records == {"ä": {"id": "ä", "Größe": 1}}


def test_crlf_blank_lines_and_quoted_newlines(tmp_path: Path) -> None:
    text = 'id,note\r\n\r\n1,"two\r\nlines"\r\n2,x\r\n\r\n'

    source = read_source(write(tmp_path, text))

    assert source.records["1"]["note"] == "two\r\nlines"
    assert list(source.records) == ["1", "2"]


def test_empty_cell_is_null_and_makes_the_field_nullable(tmp_path: Path) -> None:
    source = read_source(write(tmp_path, "id,capacity,note\n1,5,\n2,,\n"))

    assert source.field("capacity") == FieldSpec("capacity", "integer", nullable=True)
    assert source.field("note") == FieldSpec("note", "string", nullable=True)
    assert source.records["2"] == {"id": "2", "capacity": None, "note": None}


def test_header_names_are_stripped(tmp_path: Path) -> None:
    source = read_source(write(tmp_path, "id , name\n1,a\n"))

    assert [spec.name for spec in source.fields] == ["id", "name"]


def test_ragged_row_names_its_physical_line(tmp_path: Path) -> None:
    text = 'id,note\n1,"multi\nline"\n\n2,b,extra\n'

    error = import_error(write(tmp_path, text))

    assert error.where == "line 5"
    assert error.problem == "expected 2 cells like the header, got 3 (separator ',')"


def test_short_row_is_refused_too(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, "id,a,b\n1,2,3\n2,3\n"))

    assert (error.where, error.problem) == (
        "line 3",
        "expected 3 cells like the header, got 2 (separator ',')",
    )


def test_duplicate_header_name(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, "id;name;name\n1;a;b\n"))

    assert (error.where, error.problem) == (
        "line 1",
        "duplicate column name 'name' (columns 2 and 3)",
    )


def test_empty_header_name(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, "id,,name\n1,a,b\n"))

    assert (error.where, error.problem) == ("line 1", "column 2 has no name")


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    text = "id,n\n" + "".join(f"p-{n},{n}\n" for n in range(15, 22)) + "p-17,0\n"

    error = import_error(write(tmp_path, text))

    assert str(error) == f"{tmp_path / 'places.csv'}, line 9: duplicate id 'p-17' (first at line 4)"


def test_missing_id_column_names_the_header(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, "nr,name\n1,a\n"))

    assert error.where == "line 1"
    assert error.problem == "id field 'id' is not in the file (fields: nr, name)"


def test_empty_id_cell_names_the_line(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, "id,name\n1,a\n,b\n"))

    assert (error.where, error.problem) == ("line 3", "id field 'id' is missing or empty")


def test_other_id_field(tmp_path: Path) -> None:
    source = read_source(write(tmp_path, "nr,name\n007,a\n7,b\n"), id_field="nr")

    assert list(source.records) == ["007", "7"]
    assert source.id_field == "nr"


def test_broken_quoting_names_the_line(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, 'id,name\n1,"a"b\n'))

    assert error.where == "line 2"
    assert error.problem.startswith("not valid CSV: ")


def test_unterminated_quote_is_refused(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, 'id,name\n1,"open\n2,b\n'))

    assert error.problem.startswith("not valid CSV: ")


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "places.csv"
    path.write_bytes("id,name\n1,ok\n2,Gr\u00f6\u00dfe\n".encode("latin-1"))

    error = import_error(path)

    assert error.where == "line 3"
    assert "not UTF-8" in error.problem


@pytest.mark.parametrize(
    ("text", "problem"), [("", "no records"), ("\n\n", "no records"), ("id,name\n", "no records")]
)
def test_empty_file_or_only_header(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in import_error(write(tmp_path, text)).problem
