"""The CLI's filter options become the same Expression a Python caller would build."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from allmende.errors import InvalidRequest
from allmende.where import all_of, any_of, between, compare, is_null, near, within_box
from allmende_cli.filter_options import add_filter_options, add_order_option, expression_from


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_filter_options(p)
    add_order_option(p)
    return p.parse_args(list(argv))


def test_no_options_no_expression() -> None:
    assert expression_from(parse()) is None


def test_every_option_is_anded() -> None:
    got = expression_from(
        parse(
            "--where",
            "capacity>=500",
            "--where",
            "type=garage",
            "--near",
            "geom=7.77,49.44,800",
            "--box",
            "geom=7.7,49.4,7.8,49.5",
            "--between",
            "valid_until=2027-01-01..2027-07-01T00:00:00+02:00",
            "--null",
            "holder",
            "--not-null",
            "plate",
            "--prefix",
            "name=Park",
        )
    )
    want = all_of(
        all_of(compare("capacity", ">=", 500), compare("type", "=", "garage")),
        near("geom", 7.77, 49.44, meters=800),
        within_box("geom", 7.7, 49.4, 7.8, 49.5),
        between(
            "valid_until",
            dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
            dt.datetime(2027, 7, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        ),
        is_null("holder"),
        is_null("plate", False),
        compare("name", "prefix", "Park"),
    )
    assert got == want


def test_any_makes_the_where_conditions_alternatives() -> None:
    got = expression_from(parse("--where", "capacity<100", "--where", "capacity>900", "--any"))
    assert got == any_of(compare("capacity", "<", 100), compare("capacity", ">", 900))
    open_end = expression_from(parse("--between", "valid_until=..2027-01-01"))
    assert open_end == between("valid_until", None, dt.datetime(2027, 1, 1, tzinfo=dt.UTC))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--near", "geom=7.7,49.4"], r"--near 'geom=7.7,49.4': write FIELD=N,N,N"),
        (["--box", "geom=a,b,c,d"], r"--box 'geom=a,b,c,d': a, b, c, d are not all numbers"),
        (["--between", "valid_until=2027-01-01"], r"write FIELD=FROM\.\.UNTIL"),
        (["--between", "valid_until=soon..later"], r"'soon' is not a date or RFC 3339 time"),
        (["--prefix", "name"], r"--prefix 'name': write FIELD=TEXT"),
        (["--any"], "--any needs --where conditions"),
        (["--where", "capacity"], "cannot read condition 'capacity'"),
    ],
)
def test_bad_options_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        expression_from(parse(*argv))
