"""The `negseq` command. Each subcommand is one `add_<name>` function that registers its parser
and handler; add new ones to SUBCOMMANDS. Bad input ends as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from negseq import __version__
from negseq.config import add_config_flags, delimiter_from_text, flag_values, load_config
from negseq.errors import NegseqError
from negseq.service.cli import add_serve

EXIT_BAD_INPUT = 2
EXIT_MISMATCH = 1


# ---- prepare -------------------------------------------------------------------------------


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="interaction log -> train/eval sequences and an item table",
        description="Read an interaction log (user, item, timestamp) and write train.parquet, "
        "eval.parquet (leave-last-out) and items.parquet (id, count, weight = count ** item_weight_power). "
        "The settings are a job file's [data] keys (--job), which the flags override.",
        epilog="example: negseq prepare u.data --out prepared/ --delimiter tab "
        "--column-names user_id,item_id,rating,timestamp",
    )
    p.add_argument("--job", help="TOML job file whose [data] and [prepare] dir this prepares")
    add_config_flags(p, "prepare")
    p.set_defaults(handler=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from negseq.io.prepare import prepare
    from negseq.io.rundir import PREPARED_FILES, claim_folder
    from negseq.io.sources import CsvOptions, Source

    config = load_config(args.job, command="prepare", flags=flag_values(args, "prepare"))
    data = config.data
    assert data is not None and config.prepare.dir is not None
    if data.synthetic is not None:
        from negseq.synthetic import generate_interactions

        interactions = generate_interactions(**dataclasses.asdict(data.synthetic))
    else:
        assert data.interactions is not None
        csv = CsvOptions.for_format(data.format, data.delimiter, data.column_names)
        interactions = Source.open(data.interactions, format=data.format, csv=csv).read_all()
    claim_folder(config.prepare.dir, PREPARED_FILES, what="[prepare] dir")  # DESIGN §9
    prepared, counts = prepare(
        interactions,
        Path(config.prepare.dir),
        user_field=data.user_field,
        item_field=data.item_field,
        time_field=data.time_field,
        max_seq_len=data.max_seq_len,
        min_len=data.min_len,
        item_weight_power=data.item_weight_power,
        action_field=data.action_field,
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
        help="draw negatives and write candidate sequences",
        description="Read the [input] rows in batches, draw negatives for each batch's positives "
        "with the [sampler.<type>] sampler, and write the candidate sequences to [output] dir: one "
        "file a batch, then _manifest.parquet once every batch is written. The same job, seed and "
        "input always give the same files.",
        epilog="example: negseq sample job.toml --out sampled/",
    )
    p.add_argument("job", help="TOML job file ([input], [sampler.<type>], [candidates], [output])")
    add_config_flags(p, "sample")
    p.set_defaults(handler=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from negseq.sample_job import run_sample

    config = load_config(args.job, command="sample", flags=flag_values(args, "sample"))
    manifest = run_sample(config, progress=not args.quiet)
    if not args.quiet:
        print(
            f"sample: {manifest['rows_in']} rows in, {manifest['rows_out']} rows out, "
            f"{manifest['num_files']} files -> {config.output.dir}"
        )
    return 0


# ---- inspect -------------------------------------------------------------------------------

CELL_WIDTH = 120


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a table or sampled folder: columns, rows, status",
        description="Show a table (Parquet, Arrow IPC, CSV, graph-learn TSV) or a folder `negseq "
        "sample` wrote: its columns (candidate columns first), row count and first rows. For a "
        "sampled folder, also whether its manifest matches the files. Exits 1 when a sampled "
        "folder is unfinished or does not match its manifest, 2 when it cannot be read.",
        epilog="example: negseq inspect sampled/ --rows 5",
    )
    p.add_argument("path", help="a sampled folder, or any Parquet/IPC/CSV/graph-learn file or folder")
    p.add_argument("--rows", type=int, default=3, metavar="N", help="rows to show (default 3)")
    p.add_argument(
        "--field-delimiter",
        type=lambda text: delimiter_from_text(text, "--field-delimiter"),
        default="\t",
        metavar="CHAR",
        help="field delimiter of a graph-learn TSV (default tab)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_inspect)


def _candidate_columns(names: Sequence[str], manifest: dict[str, Any] | None) -> list[str]:
    """The candidate columns among `names`, in this order: the candidate column and the
    attribute columns the manifest names (else the sampler's item_id_field and attr_fields when
    it records the sampler's config), then cand_pos_lengths and hard_neg_indices."""
    from negseq.candidates import CAND_POS_LENGTHS, HARD_NEG_INDICES

    def sampler_configs(value: Any, depth: int) -> Iterator[dict[str, Any]]:
        if isinstance(value, dict) and depth >= 0:
            if isinstance(value.get("item_id_field"), str):
                yield value
            for inner in value.values():
                yield from sampler_configs(inner, depth - 1)

    wanted: list[str] = []
    if manifest is not None and isinstance(manifest.get("candidate_column"), str):
        wanted += [manifest["candidate_column"], *manifest.get("attribute_columns", {})]
    for config in sampler_configs(manifest, 3):
        attrs = config.get("attr_fields")
        wanted += [config["item_id_field"], *(attrs if isinstance(attrs, list) else [])]
    wanted += [CAND_POS_LENGTHS, HARD_NEG_INDICES]
    return [name for name in dict.fromkeys(wanted) if name in names]


def _unfinished(folder: Path) -> list[str]:
    """What a sampled folder without a manifest shows of an unfinished run: part files written
    (the manifest is written last) or a staging folder."""
    from negseq.io.sinks import PART_RE, STAGING_PREFIX

    names = [p.name for p in folder.iterdir()]
    parts = [n for n in names if PART_RE.match(n)]
    staged = sorted(n for n in names if n.startswith(STAGING_PREFIX))
    if not parts and not staged:
        return []
    where = f"; staging folder {staged[0]}" if staged else ""
    return [
        f"no _manifest.parquet or _manifest.arrow: the run that wrote this folder did not finish "
        f"({len(parts)} part file(s){where}; the manifest is written last)"
    ]


def _read_for_inspect(path: Path, field_delimiter: str, manifest: dict[str, Any] | None) -> Any:
    """A pyarrow dataset or table over `path`, as negseq reads it: a graph-learn TSV through the
    sampler's own reader (columns by position), a sampled folder as its part files."""
    from negseq.io.sources import Source
    from negseq.sampler.tables import read_table, table_format

    if path.is_file() and table_format(path, field_delimiter) == "graphlearn":
        return read_table(path, field_delimiter=field_delimiter)
    if manifest is not None:
        return Source.open(str(path / "part-*"), format=manifest["format"]).dataset()
    return Source.open(str(path)).dataset()


def inspect_path(path: Path, rows: int, field_delimiter: str = "\t") -> dict[str, Any]:
    from negseq.io.sinks import PART_RE, read_manifest, verify_outputs

    report: dict[str, Any] = {"path": str(path), "manifest": None, "problems": []}
    manifest = None
    if path.is_dir():
        try:
            manifest = read_manifest(str(path))
        except NegseqError:
            report["problems"] = _unfinished(path)
        if manifest is not None:
            report["manifest"] = {k: v for k, v in manifest.items() if k != "files"}
            report["problems"] = verify_outputs(str(path))
        elif report["problems"] and not any(PART_RE.match(p.name) for p in path.iterdir()):
            report.update(schema=None, columns=[], rows=0, head=[], manifest_ok=False)
            return report
    data = _read_for_inspect(path, field_delimiter, manifest)
    names = list(data.schema.names)
    candidates = _candidate_columns(names, manifest)
    columns = candidates + [n for n in names if n not in candidates]
    head = data.select(columns).slice(0, rows) if isinstance(data, pa.Table) else data.head(rows, columns)
    report["schema"] = pa.schema([data.schema.field(n) for n in columns]).to_string(
        show_schema_metadata=False
    )
    report["columns"] = columns
    report["candidate_columns"] = candidates
    report["rows"] = data.num_rows if isinstance(data, pa.Table) else data.count_rows()
    report["head"] = head.to_pylist() if rows > 0 else []
    report["manifest_ok"] = manifest is not None and not report["problems"]
    return report


def _cell(value: Any) -> str:
    """One value as JSON (Unicode as is), cut at CELL_WIDTH characters with an ellipsis and the
    value's length, so one long column never hides the others."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= CELL_WIDTH:
        return text
    if isinstance(value, list | dict):
        size = f"{len(value)} items"
    elif isinstance(value, str):
        size = f"{len(value)} characters"
    else:
        size = f"{len(text)} characters"
    return f"{text[:CELL_WIDTH]}… ({size})"


def cmd_inspect(args: argparse.Namespace) -> int:
    report = inspect_path(Path(args.path), args.rows, args.field_delimiter)
    if args.json:
        print(json.dumps(report, default=str, ensure_ascii=False))
    else:
        print(f"path: {report['path']}")
        print(f"rows: {report['rows']}")
        if report["schema"] is not None:
            print("schema:\n  " + report["schema"].replace("\n", "\n  "))
        manifest = report["manifest"]
        if manifest is None:
            print("manifest: none")
        else:
            print(
                f"manifest: rows in {manifest.get('rows_in')}, rows out {manifest.get('rows_out')}, "
                f"{manifest.get('num_files')} files, seed {manifest.get('seed')}, "
                f"config {str(manifest.get('config_hash'))[:12]}"
            )
            print("manifest matches files: " + ("yes" if report["manifest_ok"] else "NO"))
        for problem in report["problems"]:
            print(f"problem: {problem}")
        for index, row in enumerate(report["head"]):
            print(f"row {index}:")
            for name, value in row.items():
                print(f"  {name}: {_cell(value)}")
    return EXIT_MISMATCH if report["problems"] else 0


# ---- run -----------------------------------------------------------------------------------


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="prepare, sample, train, evaluate and export a model",
        description="Prepare the [data] interactions, sample candidates with [sampler.<type>], train "
        'the [model] (on Ray, or in this process with [ray] executor = "local"), evaluate it '
        "against every item, and export it to [output] dir.",
        epilog="example: negseq run examples/ml100k.toml",
    )
    p.add_argument("job", type=Path, help="job file (TOML): [data] [sampler.*] [candidates] [model] ...")
    p.add_argument("--verbose", "-v", action="store_true", help="show Ray's own logs and progress bars")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from negseq.job import run_job

    result = run_job(load_config(args.job, command="run"), quiet=args.quiet, verbose=args.verbose)
    if args.quiet:
        print(json.dumps({"model": result["model"], "most_popular": result["most_popular"]}))
    return 0


# ---- import-config -------------------------------------------------------------------------


def add_import_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-config",
        help="TorchEasyRec pipeline.config -> negseq sample job",
        description="Read a TorchEasyRec pipeline config (protobuf text format) and write the negseq "
        "job that samples as it does: its sampler message (fields unchanged), batch_size, input "
        "paths and dataset type, and the delimiter and length of its candidate sequence. Every "
        "field that cannot be carried over is listed, with why, on stderr and in the job file.",
        epilog="example: negseq import-config pipeline.config --out job.toml && negseq sample job.toml",
    )
    p.add_argument("config", type=Path, help="TorchEasyRec pipeline config (pipeline.config)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the job here (default: print it)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument(
        "--base-dir",
        type=Path,
        metavar="FOLDER",
        help="resolve the config's relative paths against FOLDER, the folder TorchEasyRec ran in "
        "(default: the current folder)",
    )
    p.set_defaults(handler=cmd_import_config)


def cmd_import_config(args: argparse.Namespace) -> int:
    from negseq.import_config import import_pipeline_config, to_toml

    if args.out is not None and args.out.exists() and not args.force:
        raise NegseqError(f"{args.out}: exists; pass --force to replace it")
    imported = import_pipeline_config(args.config, base_dir=args.base_dir)
    text = to_toml(imported, args.config, __version__)
    if args.out is None:
        print(text, end="")
    else:
        tmp = args.out.with_name(f".{args.out.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, args.out)
    if not args.quiet:
        lines = [f"  {name}: {why}" for name, why in imported.not_carried]
        print(f"import-config: {len(lines)} field(s) not carried over", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
    return 0


# ---- entry ---------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_prepare,
    add_sample,
    add_inspect,
    add_run,
    add_serve,
    add_import_config,
]


class _CommandsFormatter(argparse.HelpFormatter):
    """Keeps each command's help on its name's line: argparse measures the command names
    without the indent it prints them with, so a long name (import-config) would push its help
    to the next line."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            longest = max(len(name) for name in action.choices)
            self._action_max_length = max(self._action_max_length, longest + self._current_indent + 4)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="negseq",
        description="Negative sampling and candidate sequences for training generative "
        "recommenders, from the tables and sampler configs TorchEasyRec uses.",
        epilog="Run `negseq COMMAND --help` for a command's options.",
        formatter_class=_CommandsFormatter,
    )
    parser.add_argument("--version", action="version", version=f"negseq {__version__}")
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
