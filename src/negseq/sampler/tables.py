"""Item and edge tables: read from Parquet, Arrow IPC, CSV or graph-learn's typed TSV, validated at load.

A table is a file, a folder, a glob or a list of these, locally or as a URI on any pyarrow
filesystem (`negseq.filesystems`); several files are read in sorted order and concatenated (rows
of such a table count from the first file's first row). Every bad table fails here, naming file,
column and row, so a sampler never sees one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from negseq.errors import NegseqError
from negseq.filesystems import (
    Spec,
    display,
    is_local,
    list_files,
    one_format,
    read_first_line,
    spec_label,
)
from negseq.sampler import gather
from negseq.sampler.arrow_numpy import arrow_int64, check_int64_ids, numeric_values
from negseq.sampler.id_index import IdIndex

FORMATS = ("parquet", "ipc", "csv", "graphlearn")
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "ipc",
    ".ipc": "ipc",
    ".feather": "ipc",
    ".csv": "csv",
}
# graph-learn's header type names -> the Arrow type negseq parses the column as. graph-learn
# treats int/int32/long/int64 as one integer kind and float/double as one float kind.
GL_TYPES = {
    "int": pa.int64(),
    "int32": pa.int64(),
    "long": pa.int64(),
    "int64": pa.int64(),
    "float": pa.float64(),
    "double": pa.float64(),
    "string": pa.string(),
}
# graph-learn reads a table's columns by position, whatever its header calls them: a node table
# (items, users) is id, weight, attributes; an edge table is source, destination, weight.
NODE_COLUMNS = ("id", "weight", "attrs")
EDGE_COLUMNS = ("userid", "itemid", "weight")
_ROLE_COLUMNS = {"node": NODE_COLUMNS, "edge": EDGE_COLUMNS}
_MIN_COLUMNS = {"node": 1, "edge": 2}
_GL_FIELD = re.compile(r"^([^:]+):\s*([A-Za-z0-9_]+)\s*$")
# Rows a Parquet file is read in (and an edge table validated and streamed in): batches this
# small keep a pass's buffers (Arrow's and numpy's) to a few MiB whatever the table's size.
# 16K rather than 64K rows: 10 MiB less peak on the benchmark's load, 0.1 s more.
EDGE_BATCH_ROWS = 1 << 14


_LOCAL = pafs.LocalFileSystem()


def _text_input(fs: pafs.FileSystem, path: str) -> Any:
    """What pyarrow's CSV reader reads: a local path as is, else a stream of the file."""
    return path if is_local(fs) else fs.open_input_stream(path)


def _gl_header(fs: pafs.FileSystem, path: str, field_delimiter: str) -> list[tuple[str, str]] | None:
    """The (name, type) fields of a graph-learn header, or None when the first line is not one
    (a field without exactly one `name:type`). An unknown type name is an error, not a CSV."""
    header = read_first_line(fs, path)
    matches = [_GL_FIELD.match(field) for field in header.split(field_delimiter)]
    if not header or not all(matches):
        return None
    fields = [(m.group(1), m.group(2)) for m in matches if m]
    unknown = [f"{name}:{kind}" for name, kind in fields if kind not in GL_TYPES]
    if unknown:
        raise NegseqError(
            f"{display(fs, path)}: header field(s) {', '.join(map(repr, unknown))}: unknown "
            f"graph-learn type; known: {', '.join(GL_TYPES)}"
        )
    return fields


def table_format(path: str | Path, field_delimiter: str = "\t", filesystem: pafs.FileSystem = _LOCAL) -> str:
    """The format a sampler reads the file `path` as: from its suffix, else graph-learn when its
    first line is a typed header (`id:int64<TAB>weight:double...`), else CSV with
    `field_delimiter`. A local folder reads as Parquet."""
    path = str(path)
    if is_local(filesystem) and Path(path).is_dir():
        return "parquet"
    fmt = _EXTENSIONS.get(PurePosixPath(path).suffix.lower())
    if fmt:
        return fmt
    return "graphlearn" if _gl_header(filesystem, path, field_delimiter) is not None else "csv"


def _first_row(mask: pa.ChunkedArray | pa.Array | np.ndarray) -> int:
    """Index of the first True in a boolean mask."""
    values = mask.to_numpy(zero_copy_only=False) if not isinstance(mask, np.ndarray) else mask
    return int(np.flatnonzero(values)[0])


def _cast_strings(
    column: pa.ChunkedArray, target: pa.DataType, source: str, name: str, row_offset: int = 0
) -> pa.ChunkedArray:
    """Cast a string column, empty string -> null; an unparsable value names its row
    (`row_offset`: the table row of the column's first value)."""
    column = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for row, value in enumerate(column.to_pylist()):
            if value is None:
                continue
            try:
                pa.array([value], pa.string()).cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise NegseqError(
                    f"{source}: column {name!r}, row {row + row_offset}: cannot parse {value!r} as {target}"
                ) from None
        raise


def _read_strings(
    fs: pafs.FileSystem, path: str, delimiter: str, names: Sequence[str], *, use_threads: bool = True
) -> pa.Table:
    """A delimited text file after its header line, every value a string; a row with the wrong
    number of fields names its row (found again single-threaded, where Arrow numbers rows)."""
    bad_rows: list[tuple[int | None, int]] = []

    def invalid_row(row: pacsv.InvalidRow) -> str:
        bad_rows.append((row.number, row.actual_columns))
        return "error"

    try:
        return pacsv.read_csv(
            _text_input(fs, path),
            read_options=pacsv.ReadOptions(column_names=list(names), skip_rows=1, use_threads=use_threads),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char=False, invalid_row_handler=invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        line, count = bad_rows[0] if bad_rows else (None, 0)
        if bad_rows and line is None and use_threads:
            return _read_strings(fs, path, delimiter, names, use_threads=False)
        if line is not None:
            raise NegseqError(
                f"{display(fs, path)}: row {line - 2}: {count} field(s) split by {delimiter!r}, the "
                f"header has {len(names)} ({', '.join(names)})"
            ) from None
        raise NegseqError(f"{display(fs, path)}: {exc}") from None


def _read_csv(fs: pafs.FileSystem, path: str, delimiter: str) -> pa.Table:
    """A CSV with a header of column names; values stay strings (cast where they are used)."""
    names = read_first_line(fs, path).split(delimiter)
    return _read_strings(fs, path, delimiter, names)


def _gl_role(kinds: Sequence[str]) -> str:
    """'edge' when the second column is declared an integer (a destination id), else 'node'."""
    return "edge" if len(kinds) > 1 and GL_TYPES[kinds[1]] == pa.int64() else "node"


def _gl_kind_fits(column: str, declared: pa.DataType) -> bool:
    """Whether a column declared `declared` can hold what graph-learn reads at its position:
    ids are integers (or strings of digits), a weight a number, attributes a string."""
    if column == "weight":
        return declared != pa.string()
    if column == "attrs":
        return declared == pa.string()
    return declared != pa.float64()


def _read_graphlearn(
    fs: pafs.FileSystem, file: str, delimiter: str, role: str | None
) -> tuple[pa.Table, list[str]]:
    """graph-learn's typed TSV, its columns named by position (`NODE_COLUMNS` or `EDGE_COLUMNS`
    for `role`, inferred from the header's types when None); ids parsed as int64 and weights as
    float64, an unparsable value naming file, header column and row. Also returns the header's
    names (which graph-learn ignores)."""
    path = display(fs, file)
    fields = _gl_header(fs, file, delimiter)
    if fields is None:
        raise NegseqError(f"{path}: not a graph-learn table: its first line is not `name:type` fields")
    header_names = [name for name, _ in fields]
    role = role or _gl_role([kind for _, kind in fields])
    columns = _ROLE_COLUMNS[role]
    if not _MIN_COLUMNS[role] <= len(fields) <= len(columns):
        raise NegseqError(
            f"{path}: header has {len(fields)} column(s) ({', '.join(header_names)}); graph-learn "
            f"reads a {role} table by position as {', '.join(columns)} (at least "
            f"{_MIN_COLUMNS[role]})"
        )
    for position, ((header, kind), column) in enumerate(zip(fields, columns, strict=False)):
        if not _gl_kind_fits(column, GL_TYPES[kind]):
            raise NegseqError(
                f"{path}: header column {position + 1} '{header}:{kind}' is read by position as "
                f"the {role} table's {column!r} ({', '.join(columns)}), which cannot be a {kind}"
            )
    table = _read_strings(fs, file, delimiter, columns[: len(fields)])
    for name, header in zip(table.column_names, header_names, strict=True):
        if name != "attrs":
            target = pa.float64() if name == "weight" else pa.int64()
            column = _cast_strings(table[name], target, path, header)
            table = table.set_column(table.schema.get_field_index(name), name, column)
    return table, header_names


def _parquet_reader(source: Path | pa.NativeFile, metadata: pq.FileMetaData | None = None) -> pq.ParquetFile:
    """A Parquet reader that holds a 1 MiB buffer's worth of a column chunk at a time, not
    whole row groups (pre-buffering reads each row group's columns in one go)."""
    return pq.ParquetFile(source, metadata=metadata, pre_buffer=False, buffer_size=1 << 20)


def _read_parquet_file(path: Path | pa.NativeFile) -> pa.Table:
    """One Parquet file, a column at a time in small batches concatenated once, in this thread.

    After `ParquetFile.read` of the benchmark's 49 MiB item table, Arrow's memory pool kept
    about 40 MiB more committed (outgrown buffers; `release_unused` gave back half), for as
    long as the process lives. Here each column's buffers are allocated once at their final
    size, the batches' small buffers are freed as they go, and the pool then gives them
    back: about 4 MiB kept. The table's values and schema are the same.
    """
    parquet = _parquet_reader(path)
    names = parquet.schema_arrow.names
    if parquet.metadata.num_rows == 0 or len(set(names)) < len(names):  # columns=[name] needs unique names
        return parquet.read()
    columns = []
    for name in names:
        batches = parquet.iter_batches(batch_size=EDGE_BATCH_ROWS, columns=[name], use_threads=False)
        chunks = [batch.column(0) for batch in batches]
        try:
            columns.append(pa.chunked_array([pa.concat_arrays(chunks)]))
        except (pa.ArrowInvalid, pa.ArrowCapacityError):  # e.g. over 2 GiB of strings: keep the chunks
            columns.append(pa.chunked_array(chunks))
        del chunks
    pa.default_memory_pool().release_unused()
    return pa.Table.from_arrays(columns, schema=parquet.schema_arrow)


def read_table(
    path: Spec, *, format: str | None = None, field_delimiter: str = "\t", role: str | None = None
) -> pa.Table:
    """Read a whole table from any supported format, as a sampler reads it: a graph-learn TSV's
    columns named by position (`role` 'node' or 'edge'; None: inferred from the header's types),
    its attribute string kept whole as `attrs`."""
    return _read_source(path, format, field_delimiter, role)[0]


def _read_file(
    fs: pafs.FileSystem, path: str, fmt: str, field_delimiter: str, role: str | None
) -> tuple[pa.Table, list[str] | None]:
    """One file of a table, and a graph-learn TSV's header names (None for other formats)."""
    if fmt == "parquet":
        # The plain Parquet reader (pq.read_table goes through Arrow Dataset, whose code and
        # buffers cost the benchmark's load about 10 MiB of peak RSS and 0.2 s).
        return _read_parquet_file(Path(path) if is_local(fs) else fs.open_input_file(path)), None
    if fmt == "ipc":
        return feather.read_table(path if is_local(fs) else fs.open_input_file(path)), None
    if fmt == "csv":
        delimiter = "," if PurePosixPath(path).suffix.lower() == ".csv" else field_delimiter
        return _read_csv(fs, path, delimiter), None
    return _read_graphlearn(fs, path, field_delimiter, role)


def _read_source(
    spec: Spec, format: str | None, field_delimiter: str, role: str | None
) -> tuple[pa.Table, list[str] | None]:
    """The table (its files concatenated in sorted order), and a graph-learn TSV's header names
    (the first file's; None for other formats)."""
    if format is not None and format not in FORMATS:
        raise NegseqError(f"{spec}: unknown format {format!r}; known: {', '.join(FORMATS)}")
    listed = list_files(spec)
    fs = listed.filesystem
    fmt = one_format(listed, lambda path: format or table_format(path, field_delimiter, fs))
    tables: list[pa.Table] = []
    header = None
    for path in listed.paths:
        table, file_header = _read_file(fs, path, fmt, field_delimiter, role)
        if tables and not table.schema.equals(tables[0].schema):
            raise NegseqError(
                f"{listed.display(path)}: its columns ({table.schema.to_string(show_schema_metadata=False)}) "
                f"differ from {listed.display(listed.paths[0])}'s "
                f"({tables[0].schema.to_string(show_schema_metadata=False)})"
            )
        header = header if tables else file_header
        tables.append(table)
    return (tables[0] if len(tables) == 1 else pa.concat_tables(tables)), header


def _require_columns(table: pa.Table | pa.Schema, names: Sequence[str], source: str) -> None:
    present = table.names if isinstance(table, pa.Schema) else table.column_names
    missing = [n for n in names if n not in present]
    if missing:
        raise NegseqError(
            f"{source}: missing column(s) {', '.join(map(repr, missing))}; "
            f"found {', '.join(map(repr, present))}"
        )


def _edge_arrays(table: pa.Table, source: str, row_offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (userid, itemid, weight) arrays of an edge table or one of its row groups."""
    _require_columns(table, ["userid", "itemid"], source)
    return (
        _int64_column(table, "userid", source, row_offset),
        _int64_column(table, "itemid", source, row_offset),
        _weight_column(table, "weight", source, allow_all_zero=True, row_offset=row_offset),
    )


def _int64_column(table: pa.Table, name: str, source: str, row_offset: int = 0) -> np.ndarray:
    """An id column as int64: strings parsed, an empty value, a null or an unsigned id above
    int64's range (which would wrap negative) an error naming its row."""
    column = table[name]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = _cast_strings(column, pa.int64(), source, name, row_offset)
    elif not pa.types.is_integer(column.type):
        raise NegseqError(f"{source}: column {name!r} must hold integer ids, found {column.type}")
    if column.null_count:
        row = _first_row(pc.is_null(column)) + row_offset
        raise NegseqError(f"{source}: column {name!r}, row {row}: null id")
    check_int64_ids(column, lambda row: f"{source}: column {name!r}, row {row + row_offset}")
    return numeric_values(column).astype(np.int64, copy=False)


def _weight_column(
    table: pa.Table, name: str, source: str, *, allow_all_zero: bool, row_offset: int = 0
) -> np.ndarray:
    if name not in table.column_names:
        return np.ones(table.num_rows, dtype=np.float64)
    column = table[name]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = _cast_strings(column, pa.float64(), source, name, row_offset)
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise NegseqError(f"{source}: column {name!r} must be numeric, found {column.type}")
    if column.null_count:
        row = _first_row(pc.is_null(column)) + row_offset
        raise NegseqError(f"{source}: column {name!r}, row {row}: null weight")
    weights = numeric_values(column).astype(np.float64, copy=False)
    bad = ~(weights >= 0) | ~np.isfinite(weights)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise NegseqError(
            f"{source}: column {name!r}, row {row + row_offset}: "
            f"weight {float(weights[row])} must be finite and >= 0"
        )
    if not allow_all_zero and len(weights) and not weights.any():
        raise NegseqError(f"{source}: column {name!r}: all weights are zero, nothing can be drawn")
    return weights


def _split_attributes(
    table: pa.Table, attr_fields: Sequence[str], attr_delimiter: str, source: str, header: str
) -> pa.Table:
    """Expand a graph-learn node table's attribute string (`attrs`, named `header` in the file)
    into one string column per attr field: it holds their values in order, `attr_delimiter`
    between them, as TorchEasyRec writes it."""
    taken = [name for name in attr_fields if name in ("id", "weight")]
    if taken:
        raise NegseqError(
            f"{source}: attr field(s) {', '.join(map(repr, taken))} would replace the table's "
            "id or weight column; name the attribute otherwise"
        )
    parts = pc.split_pattern(table["attrs"], attr_delimiter)
    counts = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    bad = counts != len(attr_fields)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise NegseqError(
            f"{source}: column {header!r}, row {row}: {counts[row]} values for "
            f"{len(attr_fields)} attr_fields {list(attr_fields)} (attr_delimiter {attr_delimiter!r})"
        )
    out = table.drop_columns(["attrs"])
    for i, name in enumerate(attr_fields):
        out = out.append_column(name, pc.list_element(parts, i))
    return out


class ItemTable:
    """The item catalogue: unique int64 `id`, `weight` >= 0 (default 1.0), attribute columns.

    Immutable: ids, weights and attributes are Arrow/numpy buffers that can be shared
    zero-copy (Ray object store) by every sampler on a node.
    """

    def __init__(self, table: pa.Table, *, source: str = "<arrow>") -> None:
        _require_columns(table, ["id"], source)
        self.source = source
        self.ids = _int64_column(table, "id", source)
        self.weights = _weight_column(table, "weight", source, allow_all_zero=False)
        if len(self.ids) == 0:
            raise NegseqError(f"{source}: the item table is empty")
        self.index = IdIndex(self.ids)
        dup_id = self.index.first_duplicate()
        if dup_id is not None:
            rows = np.flatnonzero(self.ids == dup_id)[:2].tolist()
            raise NegseqError(f"{source}: column 'id', rows {rows}: duplicate id {dup_id}")
        table = table.set_column(table.schema.get_field_index("id"), "id", arrow_int64(self.ids))
        self.table = table.combine_chunks()
        # int64 columns holding the ids again (TorchEasyRec's item_id attribute): gathered once.
        self._id_copies = frozenset(
            field.name
            for field in self.table.schema
            if field.name != "id"
            and field.type == pa.int64()
            and self.table[field.name].equals(self.table["id"])
        )

    @classmethod
    def from_arrow(
        cls,
        table: pa.Table | pa.RecordBatch,
        attr_fields: Sequence[str] | None = None,
        *,
        schema: pa.Schema | Mapping[str, pa.DataType] | None = None,
        source: str = "<arrow>",
        item_id_field: str | None = None,
    ) -> ItemTable:
        """Validate an Arrow table; `attr_fields` keeps only those attributes, `schema` casts them.

        An attr field named `item_id_field` need not be a column: it is the `id` column.
        """
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if attr_fields is not None:
            keep = [n for n in ("id", "weight") if n in table.column_names]
            wanted = [f for f in attr_fields if f not in keep]
            wanted = [f for f in wanted if f != item_id_field or f in table.column_names]
            _require_columns(table, wanted, source)
            table = table.select(keep + wanted)
        if schema is not None:
            table = _cast_to_schema(table, schema, source)
        return cls(table, source=source)

    @classmethod
    def read(
        cls,
        path: Spec,
        *,
        format: str | None = None,
        attr_fields: Sequence[str] | None = None,
        attr_delimiter: str = ":",
        field_delimiter: str = "\t",
        schema: pa.Schema | Mapping[str, pa.DataType] | None = None,
        item_id_field: str | None = None,
    ) -> ItemTable:
        """Read an item (or user) table. A graph-learn TSV is read by position (id, weight,
        attributes); its attribute string holds the values of `attr_fields` in order, joined by
        `attr_delimiter`, read as strings and cast to `schema`'s types (`item_id_field` to int64).
        `path`: a file, folder, glob, list or URI (see the module docstring)."""
        source = spec_label(path)
        table, gl_header = _read_source(path, format, field_delimiter, "node")
        if gl_header is not None and "attrs" in table.column_names and attr_fields is not None:
            table = _split_attributes(table, attr_fields, attr_delimiter, source, gl_header[2])
            if item_id_field is not None and item_id_field in attr_fields:
                column = _cast_strings(table[item_id_field], pa.int64(), source, item_id_field)
                table = table.set_column(table.schema.get_field_index(item_id_field), item_id_field, column)
        return cls.from_arrow(table, attr_fields, schema=schema, source=source, item_id_field=item_id_field)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

    def holds_ids(self, name: str) -> bool:
        """Whether column `name` holds the ids themselves (`id`, or an int64 column equal to it)."""
        return name == "id" or name in self._id_copies

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """0-based row of each id, -1 for an unknown id."""
        return self.index.rows(ids)

    def dense_rows(self, ids: np.ndarray) -> np.ndarray:
        """Embedding row of each id: 1-based row, 0 for an unknown id (tables hold len+1 rows)."""
        return self.index.rows(ids) + 1

    def attributes(
        self, rows: np.ndarray, fields: Sequence[str], item_id_field: str, ids: np.ndarray | None = None
    ) -> pa.RecordBatch:
        """The `fields` of the given rows, gathered by `gather.take` (Arrow `take`'s result).

        A field named `item_id_field` that is not a column is the `id` column, as TorchEasyRec's
        `attr_fields` lists the item id among the attributes. `ids`, when the caller already
        gathered `self.ids[rows]`, becomes that column, and any int64 column equal to `id`,
        without a second gather.
        """
        columns = []
        for name in fields:
            source_name = name if name in self.table.column_names else "id"
            if source_name == "id" and name != item_id_field and name != "id":
                raise NegseqError(f"{self.source}: attr field {name!r} is not a column of the item table")
            if (source_name == "id" or source_name in self._id_copies) and ids is not None:
                columns.append(arrow_int64(ids))
            else:
                columns.append(gather.take(self.table[source_name].chunk(0), rows))  # one chunk: see __init__
        return pa.RecordBatch.from_arrays(columns, names=list(fields))


def _cast_to_schema(table: pa.Table, schema: pa.Schema | Mapping[str, pa.DataType], source: str) -> pa.Table:
    types = dict(zip(schema.names, schema.types, strict=True)) if isinstance(schema, pa.Schema) else schema
    for name, target in types.items():
        if name not in table.column_names:
            continue
        column = table[name]
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = _cast_strings(column, target, source, name)
        else:
            try:
                column = column.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise NegseqError(
                    f"{source}: column {name!r}: cannot cast {column.type} to {target}: {exc}"
                ) from None
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


class EdgeTable:
    """User -> item edges from `userid`, `itemid`, `weight` columns (positive or hard-negative edges).

    `read` validates every row. An edge table read from one Parquet file then keeps the
    file open, not its rows: a sampler streams the file again, a batch at a time, into its
    CSR, so loading millions of edges never holds them as int64 arrays next to the CSR's
    buffers. `user_ids`, `item_ids` and `weights` read the whole file into numpy arrays the
    first time they are asked for. A file changed after `read` is an error when it is
    streamed again. Other sources are held as numpy arrays. `weights` is None when the
    caller does not need them (they are still validated).
    """

    def __init__(
        self, user_ids: np.ndarray, item_ids: np.ndarray, weights: np.ndarray | None, *, source: str
    ) -> None:
        self.source = source
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = (user_ids, item_ids, weights)
        self._num_rows = len(user_ids)
        self._keep_weights = weights is not None
        self._parquet: _ParquetEdges | None = None

    @classmethod
    def from_arrow(
        cls, table: pa.Table | pa.RecordBatch, *, source: str = "<arrow>", keep_weights: bool = True
    ) -> EdgeTable:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        users, items, weights = _edge_arrays(table, source, 0)
        return cls(users, items, weights if keep_weights else None, source=source)

    @classmethod
    def read(
        cls,
        path: Spec,
        *,
        format: str | None = None,
        field_delimiter: str = "\t",
        keep_weights: bool = True,
    ) -> EdgeTable:
        """Read and validate an edge table (a file, folder, glob, list or URI). One local Parquet
        file is streamed (see the class docstring); anything else is read whole."""
        listed = list_files(path)
        single = listed.single_local_file
        fmt = format or (table_format(single, field_delimiter) if single is not None else None)
        if single is None or fmt != "parquet":
            table = read_table(path, format=format, field_delimiter=field_delimiter, role="edge")
            return cls.from_arrow(table, source=spec_label(path), keep_weights=keep_weights)
        parquet = _ParquetEdges(Path(single), spec_label(path))
        for _start, _users, _items, _weights in parquet.batches(("userid", "itemid", "weight")):
            pass  # every batch is validated as it is converted
        edges = cls.__new__(cls)
        edges.source = spec_label(path)
        edges._arrays = None
        edges._num_rows = parquet.num_rows
        edges._keep_weights = keep_weights
        edges._parquet = parquet
        return edges

    def __reduce__(self):
        return _edge_table, (self.user_ids, self.item_ids, self.weights, self.source)

    @property
    def user_ids(self) -> np.ndarray:
        return self._loaded()[0]

    @property
    def item_ids(self) -> np.ndarray:
        return self._loaded()[1]

    @property
    def weights(self) -> np.ndarray | None:
        return self._loaded()[2]

    @property
    def has_weights(self) -> bool:
        """Whether `weights` holds the weights (read with keep_weights=True)."""
        return self._keep_weights

    def _loaded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The three arrays, read from the file the first time (then held like any other table's)."""
        if self._arrays is None:
            users = np.empty(self._num_rows, np.int64)
            items = np.empty(self._num_rows, np.int64)
            weights = np.empty(self._num_rows, np.float64) if self._keep_weights else None
            for start, b_users, b_items, b_weights in self.batches(weights=self._keep_weights):
                assert b_users is not None and b_items is not None
                end = start + len(b_users)
                users[start:end], items[start:end] = b_users, b_items
                if weights is not None:
                    weights[start:end] = b_weights
            self._arrays = (users, items, weights)
        return self._arrays

    def batches(
        self, *, users: bool = True, items: bool = True, weights: bool = False
    ) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None, np.ndarray | None]]:
        """(first row, user ids, item ids, weights) of consecutive batches of at most
        `EDGE_BATCH_ROWS` rows, each array None unless asked for; weights need `keep_weights`."""
        if weights and not self._keep_weights:
            raise ValueError(f"{self.source}: the edge weights were not kept (keep_weights=False)")
        if self._arrays is None:
            assert self._parquet is not None
            wanted = (("userid", users), ("itemid", items), ("weight", weights))
            yield from self._parquet.batches(tuple(n for n, want in wanted if want), check_unchanged=True)
            return
        all_users, all_items, all_weights = self._arrays
        for start in range(0, self._num_rows, EDGE_BATCH_ROWS):
            end = start + EDGE_BATCH_ROWS
            yield (
                start,
                all_users[start:end] if users else None,
                all_items[start:end] if items else None,
                all_weights[start:end] if weights and all_weights is not None else None,
            )

    def __len__(self) -> int:
        return self._num_rows


class KnownItems:
    """Item rows of an edge table's batches; after the last batch, `check` raises if an edge
    named an item missing from the catalogue (its first such row, and how many there were)."""

    def __init__(self, edges: EdgeTable, items: ItemTable) -> None:
        self.edges = edges
        self.items = items
        self.first: tuple[int, int] | None = None
        self.count = 0

    def rows(self, item_ids: np.ndarray, start: int) -> np.ndarray:
        rows = self.items.index.rows(item_ids, np.int32)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            if self.first is None:
                self.first = (start + int(missing[0]), int(item_ids[missing[0]]))
            self.count += len(missing)
        return rows

    def check(self) -> None:
        if self.first is not None:
            row, item = self.first
            raise NegseqError(
                f"{self.edges.source}: column 'itemid', row {row}: item {item} "
                f"is not in the item table {self.items.source} ({self.count} such edges)"
            )


def _edge_table(
    user_ids: np.ndarray, item_ids: np.ndarray, weights: np.ndarray | None, source: str
) -> EdgeTable:
    """Unpickle an EdgeTable (a file-backed one travels as its arrays)."""
    return EdgeTable(user_ids, item_ids, weights, source=source)


class _ParquetEdges:
    """One open Parquet edge file, read in validated batches of at most `EDGE_BATCH_ROWS` rows."""

    def __init__(self, path: Path, source: str) -> None:
        self.source = source
        # The file stays open: a later pass reads what was validated even if the path is
        # removed or replaced; a change to the file itself is caught by its size and mtime.
        self._file = pa.OSFile(str(path))
        self._stat = self._identity()
        parquet = _parquet_reader(self._file)
        # Columns and types from the schema, as `from_arrow` checks them: an empty file has no
        # batch to check. (schema.empty_table() would import pandas.)
        _edge_arrays(pa.Table.from_batches([], parquet.schema_arrow), self.source, 0)
        self._columns = parquet.schema_arrow.names
        self.metadata = parquet.metadata
        self.num_rows = parquet.metadata.num_rows

    def _identity(self) -> tuple[int, int]:
        stat = os.fstat(self._file.fileno())
        return stat.st_size, stat.st_mtime_ns

    def batches(
        self, columns: tuple[str, ...], *, check_unchanged: bool = False
    ) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None, np.ndarray | None]]:
        if check_unchanged and self._identity() != self._stat:
            raise NegseqError(f"{self.source}: the file changed after it was read; read the edge table again")
        read = [c for c in columns if c in self._columns]
        parquet = _parquet_reader(self._file, self.metadata)
        start = 0
        try:
            for batch in parquet.iter_batches(batch_size=EDGE_BATCH_ROWS, columns=read, use_threads=False):
                table = pa.Table.from_batches([batch])
                yield (
                    start,
                    _int64_column(table, "userid", self.source, start) if "userid" in columns else None,
                    _int64_column(table, "itemid", self.source, start) if "itemid" in columns else None,
                    _weight_column(table, "weight", self.source, allow_all_zero=True, row_offset=start)
                    if "weight" in columns
                    else None,
                )
                start += batch.num_rows
        finally:
            # The pool keeps the pages of the pass's freed buffers committed (mimalloc's purge
            # delay): 20-30 MiB of RSS after streaming the benchmark's 5M edges, 3 once released.
            pa.default_memory_pool().release_unused()
