"""The `negseq` command. Each subcommand is one `add_<name>` function that registers its parser
and handler; add new ones to SUBCOMMANDS. Bad input ends as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import pyarrow as pa

from negseq.errors import NegseqError
from negseq.service.cli import add_serve

EXIT_BAD_INPUT = 2

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_serve,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="negseq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (NegseqError, OSError, pa.ArrowException) as exc:
        message = " ".join(str(exc).split())
        print(f"negseq {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
