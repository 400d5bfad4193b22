"""The `negseq` command. Each subcommand is one `add_<name>` function that registers its parser
and handler; add new ones to SUBCOMMANDS. Bad input ends as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from negseq.errors import NegseqError
from negseq.service.cli import add_serve

EXIT_BAD_INPUT = 2
EXIT_MISMATCH = 1


def _delimiter(text: str) -> str:
    """'\\t', 'tab' or a literal character."""
    if text.lower() == "tab":
        return "\t"
    return codecs.decode(text, "unicode_escape")


# ---- prepare -------------------------------------------------------------------------------

_PREPARE_DEFAULTS = {
    "format": None,
    "delimiter": ",",
    "column_names": None,
    "user_field": "user_id",
    "item_field": "item_id",
    "time_field": "timestamp",
    "max_seq_len": 200,
    "min_len": 2,
    "item_weight_power": 0.75,
}


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="interaction log -> train/eval sequence tables and an item table",
        description="Read an interaction log (user, item, timestamp) and write train.parquet, "
        "eval.parquet (leave-last-out) and items.parquet (id, count, weight = count ** item_weight_power).",
    )
    p.add_argument("input", nargs="?", help="interaction file or folder (Parquet, IPC, CSV/TSV)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--job", help="TOML job file with a [prepare] table (flags override it)")
    p.add_argument("--format", help="input format: parquet, ipc or csv (default: from suffix)")
    p.add_argument("--delimiter", type=_delimiter, help="CSV delimiter, e.g. '\\t' (default ',')")
    p.add_argument("--column-names", help="comma-separated column names for a CSV without header")
    p.add_argument("--user-field", help="user column (default user_id)")
    p.add_argument("--item-field", help="item column (default item_id)")
    p.add_argument("--time-field", help="timestamp column (default timestamp)")
    p.add_argument("--max-seq-len", type=int, help="history length kept (default 200)")
    p.add_argument("--min-len", type=int, help="fewest interactions a user needs (default 2)")
    p.add_argument(
        "--item-weight-power", type=float, help="item sampling weight = count ** this (default 0.75)"
    )
    p.set_defaults(handler=cmd_prepare)


def _prepare_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = dict(_PREPARE_DEFAULTS)
    base = None
    if args.job:
        from negseq.jobfile import checked_table, load_toml

        job_path = Path(args.job)
        keys = {"input", "out", *_PREPARE_DEFAULTS}
        settings.update(checked_table(load_toml(job_path), "prepare", keys, job_path))
        base = job_path.parent
    for key in ("input", "out", *_PREPARE_DEFAULTS):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if isinstance(settings.get("column_names"), str):
        settings["column_names"] = [c.strip() for c in settings["column_names"].split(",")]
    for key in ("input", "out"):
        if not settings.get(key):
            raise NegseqError(f"prepare: {key} is not set (argument or [prepare] {key})")
        if base is not None and not Path(settings[key]).is_absolute():
            settings[key] = str(base / settings[key])
    return settings


def cmd_prepare(args: argparse.Namespace) -> int:
    from negseq.io.prepare import prepare
    from negseq.io.sources import CsvOptions, Source

    s = _prepare_settings(args)
    csv = CsvOptions(delimiter=s["delimiter"], column_names=s["column_names"])
    out = Path(s["out"])
    source = Source.open(s["input"], format=s["format"], csv=csv)
    prepared, counts = prepare(
        source.read_all(),
        out,
        user_field=s["user_field"],
        item_field=s["item_field"],
        time_field=s["time_field"],
        max_seq_len=int(s["max_seq_len"]),
        min_len=int(s["min_len"]),
        item_weight_power=float(s["item_weight_power"]),
    )
    if not args.quiet:
        print(
            f"prepare: {counts['interactions']} interactions -> {prepared.train} ({counts['train']} rows), "
            f"{prepared.eval.name} ({counts['eval']} rows), {prepared.items.name} ({counts['items']} items)"
        )
    return 0


# ---- sample --------------------------------------------------------------------------------


def add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="sample negatives and write candidate sequences (one file a batch + manifest)",
    )
    p.add_argument("job", help="TOML job file ([input], [sampler.<type>], [candidates], [output])")
    p.add_argument("--input", help="override [input] path")
    p.add_argument("--out", help="override [output] path")
    p.add_argument("--workers", type=int, help="override [run] workers")
    p.set_defaults(handler=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from negseq.sample_job import SampleJob, run_sample_job

    job = SampleJob.from_toml(args.job, input_path=args.input, output_path=args.out, workers=args.workers)
    manifest = run_sample_job(job, progress=not args.quiet)
    if not args.quiet:
        print(
            f"sample: {manifest['rows_in']} rows in, {manifest['rows_out']} rows out, "
            f"{manifest['num_files']} files -> {job.output_path}"
        )
    return 0


# ---- inspect -------------------------------------------------------------------------------


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="schema, row count, a few rows, and whether the manifest matches the files"
    )
    p.add_argument("path", help="a sampled-output folder, or any Parquet/IPC/CSV file or folder")
    p.add_argument("--rows", type=int, default=3, help="rows to show (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_inspect)


def inspect_path(path: Path, rows: int) -> dict[str, Any]:
    from negseq.io.sinks import read_manifest, verify_outputs
    from negseq.io.sources import Source

    report: dict[str, Any] = {"path": str(path), "manifest": None, "problems": []}
    try:
        manifest = read_manifest(str(path))
    except NegseqError:
        manifest = None
    if manifest is not None:
        report["manifest"] = {k: v for k, v in manifest.items() if k != "files"}
        report["problems"] = verify_outputs(str(path))
        dataset = Source.open(str(path / "part-*"), format=manifest["format"]).dataset()
    else:
        dataset = Source.open(str(path)).dataset()
    report["schema"] = dataset.schema.to_string(show_schema_metadata=False)
    report["rows"] = dataset.count_rows()
    report["head"] = dataset.head(rows).to_pylist() if rows > 0 else []
    report["manifest_ok"] = report["manifest"] is not None and not report["problems"]
    return report


def cmd_inspect(args: argparse.Namespace) -> int:
    report = inspect_path(Path(args.path), args.rows)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(f"path: {report['path']}")
        print(f"rows: {report['rows']}")
        print("schema:\n  " + report["schema"].replace("\n", "\n  "))
        manifest = report["manifest"]
        if manifest is None:
            print("manifest: none")
        else:
            print(
                f"manifest: rows in {manifest['rows_in']}, rows out {manifest['rows_out']}, "
                f"{manifest['num_files']} files, seed {manifest.get('seed')}, "
                f"config {str(manifest.get('config_hash'))[:12]}"
            )
            print("manifest matches files: " + ("yes" if report["manifest_ok"] else "NO"))
            for problem in report["problems"]:
                print(f"  {problem}")
        for row in report["head"]:
            print(json.dumps(row, default=str)[:300])
    return EXIT_MISMATCH if report["problems"] else 0


# ---- run -----------------------------------------------------------------------------------


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="the main job: prepare -> sample -> train -> evaluate -> export (Ray or embedded)",
    )
    p.add_argument("job", type=Path, help="job file (TOML): [data] [sampler.*] [candidates] [model] ...")
    p.add_argument("--verbose", "-v", action="store_true", help="show Ray's own logs and progress bars")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from negseq.job import load_run_job, run_job

    result = run_job(load_run_job(args.job), quiet=args.quiet, verbose=args.verbose)
    if args.quiet:
        print(json.dumps({"model": result["model"], "most_popular": result["most_popular"]}))
    return 0


# ---- entry ---------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_prepare,
    add_sample,
    add_inspect,
    add_run,
    add_serve,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="negseq", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summaries")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    original = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("parents", []).append(common)
        return original(name, **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]  # --quiet on every subcommand
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
    except KeyboardInterrupt:
        print("negseq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
