"""The `negseq` command. Each subcommand registers its parser and a `run(args) -> int`.

Bad input (NegseqError) is reported as one line on stderr with exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys

from negseq.errors import NegseqError
from negseq.service.cli import add_serve_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="negseq", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except NegseqError as exc:
        print(f"negseq {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
