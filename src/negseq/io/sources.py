"""Sources: a Parquet, Arrow IPC or CSV file, a folder, a glob, a list of these, or a URI on any
pyarrow filesystem (`s3://`, `gs://`, `hdfs://`, `file://`).

The driver plans from metadata alone: `Source.open` lists the files (sorted, so the plan does
not depend on how they were named) and reads each file's row-group sizes from its footer;
`Source.plan(batch_size)` cuts the concatenated rows into `BatchDescriptor`s
`(batch_index, pieces)`, so a batch index, and with it every sample, depends only on the file
list and the batch size. Readers (threads locally, actors on Ray) read their own rows with a
`SourceReader`: the driver never holds the data.

CSV files have no footer: planning streams each once to count its rows (memory stays flat),
and a reader streams forward to a batch's rows. Prefer Parquet for large inputs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, overload

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from negseq.errors import NegseqError
from negseq.filesystems import is_uri, list_files, one_format, resolve_location

__all__ = [
    "BatchDescriptor",
    "BatchPlan",
    "CsvOptions",
    "Source",
    "SourceFile",
    "SourceReader",
    "is_uri",
    "resolve_location",
]

SUFFIX_FORMATS = {
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
FORMATS = ("parquet", "ipc", "csv")


@dataclass(frozen=True)
class CsvOptions:
    """How to read a CSV/TSV source: delimiter, and column names when the file has no header."""

    delimiter: str = ","
    column_names: Sequence[str] | None = None

    @classmethod
    def for_format(
        cls, format: str | None, delimiter: str = ",", column_names: Sequence[str] | None = None
    ) -> CsvOptions | None:
        """The options of an input in `format`: None for Parquet and IPC, which need none."""
        return None if format in ("parquet", "ipc") else cls(delimiter, column_names)

    def read_options(self) -> pacsv.ReadOptions:
        return pacsv.ReadOptions(column_names=list(self.column_names) if self.column_names else None)

    def parse_options(self) -> pacsv.ParseOptions:
        return pacsv.ParseOptions(delimiter=self.delimiter)

    def file_format(self) -> ds.CsvFileFormat:
        return ds.CsvFileFormat(read_options=self.read_options(), parse_options=self.parse_options())


@dataclass(frozen=True)
class SourceFile:
    """One input file and the row counts of its row groups (Parquet), record batches (IPC) or
    whole (CSV)."""

    path: str
    row_groups: tuple[int, ...]

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class BatchDescriptor:
    """Rows of one batch: `pieces` are (file index, first row in the file, rows), in order."""

    batch_index: int
    pieces: tuple[tuple[int, int, int], ...]

    @property
    def num_rows(self) -> int:
        return sum(rows for _, _, rows in self.pieces)


def _format_of(path: str, given: str | None) -> str:
    if given is not None:
        fmt = "ipc" if given == "arrow" else given
        if fmt not in FORMATS:
            raise NegseqError(f"unknown input format {given!r} (parquet, ipc, csv)")
        return fmt
    by_suffix = SUFFIX_FORMATS.get(PurePosixPath(path).suffix.lower())
    if by_suffix is None:
        raise NegseqError(f"{path}: cannot tell the format from the suffix; set the format explicitly")
    return by_suffix


def _parquet_groups(fs: pafs.FileSystem, path: str) -> tuple[tuple[int, ...], pa.Schema]:
    with fs.open_input_file(path) as handle:
        metadata = pq.ParquetFile(handle).metadata
        schema = metadata.schema.to_arrow_schema()
    return tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)), schema


def _ipc_batches(fs: pafs.FileSystem, path: str) -> tuple[tuple[int, ...], pa.Schema]:
    with _open_ipc(fs, path) as handle:
        reader = ipc.open_file(handle)
        return tuple(reader.get_batch(i).num_rows for i in range(reader.num_record_batches)), reader.schema


def _open_ipc(fs: pafs.FileSystem, path: str) -> Any:
    """A memory map for a local file (a batch's header is read, not its body), else a stream."""
    if isinstance(fs, pafs.LocalFileSystem):
        return pa.memory_map(path)
    return fs.open_input_file(path)


def _csv_reader(
    fs: pafs.FileSystem, path: str, csv: CsvOptions, schema: pa.Schema | None = None
) -> pacsv.CSVStreamingReader:
    """A CSV file's batches; with `schema`, typed as it says rather than as this file suggests."""
    convert = pacsv.ConvertOptions(column_types=schema) if schema is not None else None
    return pacsv.open_csv(
        fs.open_input_stream(path),
        read_options=csv.read_options(),
        parse_options=csv.parse_options(),
        convert_options=convert,
    )


def _csv_rows(fs: pafs.FileSystem, path: str, csv: CsvOptions) -> tuple[tuple[int, ...], pa.Schema]:
    reader = _csv_reader(fs, path, csv)
    rows = sum(batch.num_rows for batch in reader)
    return (rows,), reader.schema


@dataclass(frozen=True)
class Source:
    """The files of one input (one format, one schema), planned from their metadata."""

    spec: str
    format: str
    filesystem: pafs.FileSystem
    files: tuple[SourceFile, ...]
    schema: pa.Schema
    csv: CsvOptions | None = None
    roots: tuple[str, ...] = ()  # what the spec names: files, folders, a glob's fixed prefix

    @classmethod
    def open(
        cls,
        spec: str | Path | Sequence[str | Path],
        *,
        format: str | None = None,
        csv: CsvOptions | None = None,
        base_dir: Path | None = None,
    ) -> Source:
        """List and plan the files `spec` names (see the module docstring); reads no rows but
        a CSV's. Every file must have the same columns and types: one that differs is named."""
        listed = list_files(spec, base_dir=base_dir)
        label, filesystem, ordered = listed.spec, listed.filesystem, listed.paths
        fmt = one_format(listed, lambda path: _format_of(path, format))
        if fmt == "csv":
            csv = csv or CsvOptions()
        files, schema = [], None
        for path in ordered:
            try:
                if fmt == "parquet":
                    groups, file_schema = _parquet_groups(filesystem, path)
                elif fmt == "ipc":
                    groups, file_schema = _ipc_batches(filesystem, path)
                else:
                    groups, file_schema = _csv_rows(filesystem, path, csv)  # type: ignore[arg-type]
            except (pa.ArrowInvalid, OSError) as exc:
                raise NegseqError(f"{listed.display(path)}: cannot read as {fmt}: {exc}") from exc
            if schema is None:
                schema = file_schema
            elif fmt == "csv":  # CSV has no types: one file's nulls or ints widen to another's
                try:
                    schema = pa.unify_schemas([schema, file_schema], promote_options="permissive")
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise NegseqError(
                        f"{path}: its columns do not agree with {files[0].path}'s: {exc}"
                    ) from exc
            elif not file_schema.equals(schema):
                raise NegseqError(
                    f"{path}: its columns ({file_schema.to_string(show_schema_metadata=False)}) differ "
                    f"from {files[0].path}'s ({schema.to_string(show_schema_metadata=False)})"
                )
            files.append(SourceFile(path, groups))
        schema = schema.remove_metadata()  # type: ignore[union-attr]
        return cls(label, fmt, filesystem, tuple(files), schema, csv, listed.roots)

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    def require(self, columns: Sequence[str]) -> None:
        """A missing column is an error now, before anything is read or written."""
        missing = [name for name in columns if name not in self.schema.names]
        if missing:
            raise NegseqError(
                f"{self.spec}: missing column(s) {', '.join(map(repr, missing))}; "
                f"found {', '.join(map(repr, self.schema.names))}"
            )

    def plan(self, batch_size: int) -> BatchPlan:
        """Rows [i * batch_size, (i + 1) * batch_size) of the concatenated files as batch i."""
        return BatchPlan(self, batch_size)

    def dataset(self) -> ds.Dataset:
        """All files as one `pyarrow.dataset` (for whole-input passes such as prepare)."""
        file_format: Any = self.csv.file_format() if self.format == "csv" and self.csv else self.format
        return ds.dataset(
            [f.path for f in self.files], filesystem=self.filesystem, format=file_format, schema=self.schema
        )

    def read_all(self, columns: Sequence[str] | None = None) -> pa.Table:
        try:
            return self.dataset().to_table(columns=list(columns) if columns else None)
        except pa.ArrowInvalid as exc:
            raise NegseqError(f"{self.spec}: {exc}") from exc


class BatchPlan(Sequence[BatchDescriptor]):
    """A source's batch descriptors, computed when asked for: the plan holds the files' first
    rows (one number a file), not a descriptor a batch, so the driver's memory does not grow
    with the input's rows."""

    def __init__(self, source: Source, batch_size: int) -> None:
        if batch_size < 1:
            raise NegseqError(f"batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.batch_size = batch_size
        sizes = [f.num_rows for f in source.files]
        self._starts = [0]
        for size in sizes:
            self._starts.append(self._starts[-1] + size)
        self.num_rows = self._starts[-1]

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    @overload
    def __getitem__(self, index: int) -> BatchDescriptor: ...

    @overload
    def __getitem__(self, index: slice) -> list[BatchDescriptor]: ...

    def __getitem__(self, index: int | slice) -> BatchDescriptor | list[BatchDescriptor]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"batch {index} of a plan of {count}")
        row = index * self.batch_size
        end = min(row + self.batch_size, self.num_rows)
        pieces = []
        file_index = bisect.bisect_right(self._starts, row) - 1
        while row < end:
            file_start, file_end = self._starts[file_index], self._starts[file_index + 1]
            if file_end > row:
                take = min(end, file_end) - row
                pieces.append((file_index, row - file_start, take))
                row += take
            file_index += 1
        return BatchDescriptor(index, tuple(pieces))


class SourceReader:
    """Reads batch descriptors' rows; keeps files open between batches (one a thread or actor)."""

    def __init__(self, source: Source, columns: Sequence[str] | None = None) -> None:
        self.source = source
        self.columns = list(columns) if columns else None
        self._parquet: dict[int, pq.ParquetFile] = {}
        self._csv_cursor: tuple[int, int, pacsv.CSVStreamingReader, pa.RecordBatch | None] | None = None

    def read(self, descriptor: BatchDescriptor) -> pa.RecordBatch:
        """The descriptor's rows as one record batch."""
        tables = [self._piece(*piece) for piece in descriptor.pieces]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        batch = table.combine_chunks().to_batches()
        out = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=table.schema)
        if out.num_rows != descriptor.num_rows:
            raise NegseqError(
                f"{self.source.spec}: batch {descriptor.batch_index} read {out.num_rows} rows, the plan "
                f"says {descriptor.num_rows}: an input file changed after it was planned"
            )
        return out

    def _piece(self, file_index: int, start: int, rows: int) -> pa.Table:
        file = self.source.files[file_index]
        try:
            if self.source.format == "parquet":
                return self._parquet_rows(file_index, file, start, rows)
            if self.source.format == "ipc":
                return self._ipc_rows(file, start, rows)
            return self._csv_rows(file_index, file, start, rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise NegseqError(f"{file.path}: {exc}") from exc

    def _groups(self, file: SourceFile, start: int, rows: int) -> tuple[list[int], int]:
        """Indices of the row groups holding rows [start, start + rows), and where the first begins."""
        first_row, groups, first_start = 0, [], None
        for i, size in enumerate(file.row_groups):
            if first_row + size > start and first_row < start + rows:
                groups.append(i)
                first_start = first_row if first_start is None else first_start
            first_row += size
        return groups, first_start or 0

    def _parquet_rows(self, index: int, file: SourceFile, start: int, rows: int) -> pa.Table:
        parquet = self._parquet.get(index)
        if parquet is None:
            parquet = pq.ParquetFile(self.source.filesystem.open_input_file(file.path))
            if parquet.metadata.num_rows != file.num_rows:
                raise NegseqError(f"{file.path}: the file changed after it was planned")
            self._parquet[index] = parquet
        groups, first = self._groups(file, start, rows)
        table = parquet.read_row_groups(groups, columns=self.columns, use_threads=False)
        return table.slice(start - first, rows)

    def _ipc_rows(self, file: SourceFile, start: int, rows: int) -> pa.Table:
        groups, first = self._groups(file, start, rows)
        with _open_ipc(self.source.filesystem, file.path) as handle:
            reader = ipc.open_file(handle)
            table = pa.Table.from_batches([reader.get_batch(i) for i in groups], schema=reader.schema)
            table = table.slice(start - first, rows).combine_chunks()
        return table.select(self.columns) if self.columns else table

    def _csv_rows(self, index: int, file: SourceFile, start: int, rows: int) -> pa.Table:
        """Stream forward to the rows (reopening the file only to go back)."""
        cursor = self._csv_cursor
        if cursor is None or cursor[0] != index or cursor[1] > start:
            csv = self.source.csv or CsvOptions()
            reader = _csv_reader(self.source.filesystem, file.path, csv, self.source.schema)
            cursor = (index, 0, reader, None)
        _, position, reader, pending = cursor
        pieces = []
        while rows > 0:
            if pending is None:
                try:
                    pending = reader.read_next_batch()
                except StopIteration:
                    raise NegseqError(f"{file.path}: the file changed after it was planned") from None
            if position + pending.num_rows <= start:
                position += pending.num_rows
                pending = None
                continue
            offset = start - position
            take = min(rows, pending.num_rows - offset)
            pieces.append(pending.slice(offset, take))
            start += take
            rows -= take
            if offset + take == pending.num_rows:
                position += pending.num_rows
                pending = None
        self._csv_cursor = (index, position, reader, pending)
        table = pa.Table.from_batches(pieces, schema=reader.schema)
        return table.select(self.columns) if self.columns else table


def iter_source_batches(source: Source, batch_size: int) -> Iterator[tuple[BatchDescriptor, pa.RecordBatch]]:
    """Every batch of `source` in order, read on this thread."""
    reader = SourceReader(source)
    for descriptor in source.plan(batch_size):
        yield descriptor, reader.read(descriptor)
