"""The filter options of `allmende query|subscribe|aggregate`, turned into an Expression.

Every option narrows the answer (they are ANDed); ``--any`` turns the ``--where``
comparisons into alternatives (OR) instead::

    --where 'capacity>=500' --where 'type=garage' --any
    --near geom=7.77,49.44,800          # within 800 m of (lon, lat)
    --box geom=7.7,49.4,7.8,49.5        # min_lon,min_lat,max_lon,max_lat
    --between valid_until=2027-01-01..2027-07-01   # [from, until); either side may be empty
    --null holder  /  --not-null holder
    --prefix name=Park
    --order-by=-capacity --order-by name   # '=' because the value starts with '-'
"""

from __future__ import annotations

import argparse
import datetime as dt

from allmende.client import parse_condition
from allmende.errors import InvalidRequest
from allmende.v1 import query_pb2
from allmende.where import all_of, any_of, between, compare, is_null, near, within_box

__all__ = ["add_filter_options", "add_order_option", "expression_from"]


def add_filter_options(p: argparse.ArgumentParser) -> None:
    """``--where`` (repeatable) and the spatial, temporal, null and prefix tests."""
    p.add_argument(
        "--where",
        action="append",
        default=[],
        help="condition, repeatable: 'capacity>=500', 'district=Innenstadt', 'type in a,b'",
    )
    p.add_argument(
        "--any", action="store_true", help="records matching any --where (OR), not all of them"
    )
    p.add_argument(
        "--near",
        action="append",
        default=[],
        metavar="FIELD=LON,LAT,METERS",
        help="points of FIELD at most METERS from (LON, LAT)",
    )
    p.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="FIELD=MINLON,MINLAT,MAXLON,MAXLAT",
        help="points of FIELD inside the box",
    )
    p.add_argument(
        "--between",
        action="append",
        default=[],
        metavar="FIELD=FROM..UNTIL",
        help="a timestamp FIELD in [FROM, UNTIL) (RFC 3339 or dates; either side may be empty)",
    )
    p.add_argument("--null", action="append", default=[], metavar="FIELD", help="FIELD is null")
    p.add_argument(
        "--not-null", action="append", default=[], metavar="FIELD", help="FIELD has a value"
    )
    p.add_argument(
        "--prefix",
        action="append",
        default=[],
        metavar="FIELD=TEXT",
        help="a text FIELD starting with TEXT (case-sensitive, no wildcards)",
    )


def add_order_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--order-by",
        action="append",
        default=[],
        metavar="[-]FIELD",
        help="sort by FIELD (repeatable; --order-by=-FIELD sorts descending); default: by id",
    )


def _split(option: str, text: str, parts: int) -> tuple[str, list[str]]:
    field, sep, rest = text.partition("=")
    values = rest.split(",") if sep else []
    if not field or len(values) != parts:
        raise InvalidRequest(f"--{option} {text!r}: write FIELD=" + ",".join(["N"] * parts))
    return field, values


def _numbers(option: str, text: str, values: list[str]) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise InvalidRequest(
            f"--{option} {text!r}: {', '.join(values)} are not all numbers"
        ) from None


def _time(option: str, text: str, value: str) -> dt.datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"--{option} {text!r}: {value!r} is not a date or RFC 3339 time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def expression_from(args: argparse.Namespace) -> query_pb2.Expression | None:
    """The options as one Expression (None when none was given). Raises InvalidRequest
    naming the option and what is wrong with it."""
    comparisons = [query_pb2.Expression(comparison=parse_condition(w)) for w in args.where]
    parts: list[query_pb2.Expression] = []
    if comparisons:
        parts.append(any_of(*comparisons) if args.any else all_of(*comparisons))
    elif args.any:
        raise InvalidRequest("--any needs --where conditions to choose from")
    for text in args.near:
        field, values = _split("near", text, 3)
        lon, lat, meters = _numbers("near", text, values)
        parts.append(near(field, lon, lat, meters=meters))
    for text in args.box:
        field, values = _split("box", text, 4)
        parts.append(within_box(field, *_numbers("box", text, values)))
    for text in args.between:
        field, sep, span = text.partition("=")
        start, dots, until = span.partition("..")
        if not field or not sep or not dots:
            raise InvalidRequest(f"--between {text!r}: write FIELD=FROM..UNTIL")
        parts.append(between(field, _time("between", text, start), _time("between", text, until)))
    parts += [is_null(f) for f in args.null]
    parts += [is_null(f, False) for f in args.not_null]
    for text in args.prefix:
        field, sep, value = text.partition("=")
        if not field or not sep:
            raise InvalidRequest(f"--prefix {text!r}: write FIELD=TEXT")
        parts.append(compare(field, "prefix", value))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else all_of(*parts)
