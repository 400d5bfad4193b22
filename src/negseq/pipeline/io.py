"""Readers (Parquet, Arrow IPC, CSV files or folders) and sampled-output writers.

Outputs: one file a batch, `part-{batch_index:06d}.{parquet|arrow}`, each written to a temporary
name and renamed, so a crashed task never leaves a half file and a re-run or retried task
rewrites the same names (exactly once). `_manifest.json` is written last; its presence means the
run finished. Its leading underscore keeps it out of `pq.read_table(folder)` / `pyarrow.dataset`,
which skip such names, so the folder reads back with plain pyarrow. The Ray executor uses the
same functions, so both executors write the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from negseq.errors import NegseqError

MANIFEST_NAME = "_manifest.json"
OUTPUT_FORMATS = {"parquet": "parquet", "ipc": "arrow", "arrow": "arrow"}
_SUFFIX_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "ipc",
    ".ipc": "ipc",
    ".feather": "ipc",
    ".csv": "csv",
    ".tsv": "csv",
    ".data": "csv",
    ".txt": "csv",
}
_PART_RE = re.compile(r"^part-(\d{6,})\.(parquet|arrow)$")
_MANIFEST_FILE_KEYS = ("name", "batch_index", "rows_in", "rows_out")
STAT_PREFIX = "stat_"  # a batch summary's sampler counts: stat_draws, stat_redraws, ...


@dataclass(frozen=True)
class CsvOptions:
    """How to read a CSV/TSV source: delimiter, and column names when the file has no header."""

    delimiter: str = ","
    column_names: Sequence[str] | None = None

    def file_format(self) -> ds.CsvFileFormat:
        read = pacsv.ReadOptions(column_names=list(self.column_names) if self.column_names else None)
        parse = pacsv.ParseOptions(delimiter=self.delimiter)
        return ds.CsvFileFormat(read_options=read, parse_options=parse)


def _data_files(folder: Path) -> list[Path]:
    """A folder's data files in name order: known suffix, not hidden or `_`-prefixed (which
    skips temporary files and manifests)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in _SUFFIX_FORMATS and not p.name.startswith((".", "_"))
    )


def detect_format(path: str | Path) -> str:
    """'parquet', 'ipc' or 'csv' from the file suffix (a folder: from its first data file)."""
    path = Path(path)
    if path.is_dir():
        files = _data_files(path)
        if not files:
            raise NegseqError(f"{path}: folder holds no .parquet, .arrow or .csv files")
        path = files[0]
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise NegseqError(f"{path}: cannot tell the format from the suffix; set format explicitly")
    return fmt


def open_dataset(path: str | Path, *, format: str | None = None, csv: CsvOptions | None = None) -> ds.Dataset:
    """A `pyarrow.dataset` over a file or folder of Parquet, Arrow IPC or CSV files."""
    path = Path(path)
    if not path.exists():
        raise NegseqError(f"{path}: no such file or folder")
    fmt = format or detect_format(path)
    kind = "ipc" if fmt == "arrow" else fmt
    if kind == "csv":
        file_format: Any = (csv or CsvOptions()).file_format()
    elif kind in ("parquet", "ipc"):
        file_format = kind
    else:
        raise NegseqError(f"{path}: unknown input format {fmt!r} (parquet, ipc, csv)")
    source: Any = str(path)
    if path.is_dir():  # only this format's data files
        source = [str(p) for p in _data_files(path) if _SUFFIX_FORMATS[p.suffix.lower()] == kind]
    try:
        return ds.dataset(source, format=file_format)
    except (pa.ArrowInvalid, OSError) as exc:
        raise NegseqError(f"{path}: cannot open as {fmt}: {exc}") from exc


def read_table(path: str | Path, *, format: str | None = None, csv: CsvOptions | None = None) -> pa.Table:
    try:
        return open_dataset(path, format=format, csv=csv).to_table()
    except pa.ArrowInvalid as exc:
        raise NegseqError(f"{path}: {exc}") from exc


def iter_batches(
    path: str | Path,
    *,
    batch_size: int,
    format: str | None = None,
    csv: CsvOptions | None = None,
    columns: Sequence[str] | None = None,
    require: Sequence[str] = (),
) -> Iterator[pa.RecordBatch]:
    """Record batches of at most `batch_size` rows, in file order, skipping empty ones.

    The source is opened and `require`d columns are checked now, not at the first batch, so a bad
    source fails before anything is written."""
    if batch_size < 1:
        raise NegseqError(f"batch_size must be >= 1, got {batch_size}")
    dataset = open_dataset(path, format=format, csv=csv)
    missing = [name for name in require if name not in dataset.schema.names]
    if missing:
        raise NegseqError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
            f"found {', '.join(map(repr, dataset.schema.names))}"
        )
    scanner = dataset.scanner(
        columns=list(columns) if columns else None, batch_size=batch_size, use_threads=True
    )
    return _split_batches(scanner, batch_size, path)


def _split_batches(scanner: ds.Scanner, batch_size: int, path: str | Path) -> Iterator[pa.RecordBatch]:
    try:
        for batch in scanner.to_batches():
            # Datasets may hand back batches smaller than asked, never larger; keep that promise.
            for start in range(0, batch.num_rows, batch_size):
                piece = batch.slice(start, batch_size)
                if piece.num_rows:
                    yield piece
    except pa.ArrowInvalid as exc:
        raise NegseqError(f"{path}: {exc}") from exc


def output_name(batch_index: int, format: str = "parquet") -> str:
    if format not in OUTPUT_FORMATS:
        raise NegseqError(f"unknown output format {format!r} (parquet, ipc)")
    return f"part-{batch_index:06d}.{OUTPUT_FORMATS[format]}"


def _atomic_write(final: Path, write) -> None:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding: not id lists or candidate strings, whose values are
    nearly all distinct (encoding them costs a third of the write time and saves nothing)."""
    return [
        f.name
        for f in schema
        if not (
            pa.types.is_list(f.type)
            or pa.types.is_large_list(f.type)
            or pa.types.is_string(f.type)
            or pa.types.is_large_string(f.type)
        )
    ]


def write_batch_output(
    out_dir: str | Path,
    batch_index: int,
    record_batch: pa.RecordBatch | pa.Table,
    format: str = "parquet",
) -> Path:
    """Write one batch's output as `part-{batch_index:06d}.{ext}` atomically; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / output_name(batch_index, format)
    table = record_batch if isinstance(record_batch, pa.Table) else pa.Table.from_batches([record_batch])

    def write(tmp: Path) -> None:
        if format == "parquet":
            pq.write_table(table, tmp, use_dictionary=_dictionary_columns(table.schema))
        else:
            with ipc.new_file(tmp, table.schema) as writer:
                writer.write_table(table)

    _atomic_write(final, write)
    return final


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a job config (keys sorted), to tell runs apart."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def write_manifest(
    out_dir: str | Path,
    *,
    rows_in: int,
    files: Sequence[dict[str, Any]],
    schema: pa.Schema | None,
    seed: int | None,
    config_hash: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `_manifest.json` last. `files`: [{"name", "batch_index", "rows_in", "rows_out"}] in
    batch order. Output files of an earlier run that this run did not write are removed first,
    so the folder holds exactly what the manifest lists."""
    out_dir = Path(out_dir)
    listed = {f["name"] for f in files}
    for stale in out_dir.iterdir():
        if _PART_RE.match(stale.name) and stale.name not in listed:
            stale.unlink()
    manifest = {
        "rows_in": int(rows_in),
        "rows_out": int(sum(f["rows_out"] for f in files)),
        "num_files": len(files),
        "files": list(files),
        "schema": schema.to_string(show_schema_metadata=False) if schema is not None else None,
        "seed": seed,
        "config_hash": config_hash,
        **(extra or {}),
    }
    final = out_dir / MANIFEST_NAME
    _atomic_write(final, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    return final


def manifest_files_and_stats(
    summaries: Iterable[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The manifest's `files` entries and summed `sampler_stats` from per-batch summaries.

    A summary is one flat row, as both executors collect them in batch order: `name`,
    `batch_index`, `rows_in`, `rows_out`, and each sampler count as `stat_<name>` (None: absent,
    as when Arrow fills a column a batch did not have). Other keys are ignored."""
    files: list[dict[str, Any]] = []
    totals: dict[str, int] = {}
    for summary in summaries:
        files.append({key: summary[key] for key in _MANIFEST_FILE_KEYS})
        for key, value in summary.items():
            if key.startswith(STAT_PREFIX) and value is not None:
                name = key[len(STAT_PREFIX) :]
                totals[name] = totals.get(name, 0) + int(value)
    return files, totals


def remove_manifest(out_dir: str | Path) -> None:
    """Drop an earlier run's manifest before writing, so a crashed re-run is visibly unfinished."""
    path = Path(out_dir) / MANIFEST_NAME
    if path.exists():
        path.unlink()


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        raise NegseqError(f"{path}: no manifest (the run did not finish, or this is not an output folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NegseqError(f"{path}: not valid JSON: {exc}") from exc


def file_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with ipc.open_file(path) as reader:
        return reader.count_rows()  # batch headers only, as Parquet's footer above


def verify_outputs(out_dir: str | Path) -> list[str]:
    """Problems with an output folder against its manifest (empty list: all consistent)."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    problems = []
    listed = {f["name"] for f in manifest["files"]}
    for entry in manifest["files"]:
        path = out_dir / entry["name"]
        if not path.exists():
            problems.append(f"{entry['name']}: listed in the manifest but missing")
            continue
        rows = file_rows(path)
        if rows != entry["rows_out"]:
            problems.append(f"{entry['name']}: {rows} rows, manifest says {entry['rows_out']}")
    for path in sorted(out_dir.iterdir()):
        if _PART_RE.match(path.name) and path.name not in listed:
            problems.append(f"{path.name}: not listed in the manifest")
    total = sum(f["rows_out"] for f in manifest["files"])
    if total != manifest["rows_out"]:
        problems.append(f"manifest rows_out {manifest['rows_out']} != sum over files {total}")
    return problems
