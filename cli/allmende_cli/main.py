"""The `allmende` command: one entry point for operators, stewards and consuming services."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from allmende.errors import AllmendeError
from allmende_cli import (
    audit_commands,
    backbone_commands,
    ca_commands,
    client_commands,
    demo_command,
    member_commands,
    policy_commands,
    town_commands,
)
from allmende_cli.bench import command as bench_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allmende",
        description="allmende — a data commons for municipalities.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_command.register(sub)
    town_commands.register(sub)
    client_commands.register(sub)
    ca_commands.register(sub)
    member_commands.register(sub)
    policy_commands.register(sub)
    audit_commands.register(sub)
    backbone_commands.register(sub)
    bench_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; allmende errors print one clear message and exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kafka-python logs every reconnect attempt as an error; the node reports an outage
        # once itself, with what is waiting in its outbox.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        return int(args.run(args) or 0)
    except AllmendeError as err:
        print(f"allmende: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`allmende subscribe … | head`); that ends the command.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
