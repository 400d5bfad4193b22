"""Item and edge tables: read from Parquet, Arrow IPC, CSV or graph-learn's typed TSV, validated at load.

Every bad table fails here, naming file, column and row, so a sampler never sees one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq

from negseq.errors import NegseqError
from negseq.sampler import gather
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
# graph-learn's header types -> Arrow types.
_GL_TYPES = {"int64": pa.int64(), "int32": pa.int64(), "float": pa.float64(), "string": pa.string()}


def _detect_format(path: Path, field_delimiter: str) -> str:
    if path.is_dir():
        return "parquet"
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt:
        return fmt
    with path.open("r", encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n")
    fields = header.split(field_delimiter)
    typed = all(":" in f and f.rsplit(":", 1)[1] in _GL_TYPES for f in fields)
    return "graphlearn" if typed else "csv"


def _first_row(mask: pa.ChunkedArray | pa.Array | np.ndarray) -> int:
    """Index of the first True in a boolean mask."""
    values = mask.to_numpy(zero_copy_only=False) if not isinstance(mask, np.ndarray) else mask
    return int(np.flatnonzero(values)[0])


def _cast_strings(column: pa.ChunkedArray, target: pa.DataType, source: str, name: str) -> pa.ChunkedArray:
    """Cast a string column, empty string -> null; an unparsable value names its row."""
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
                    f"{source}: column {name!r}, row {row}: cannot parse {value!r} as {target}"
                ) from None
        raise


def _read_text(path: Path, delimiter: str, typed_header: bool) -> pa.Table:
    """CSV, or graph-learn's TSV whose header is `name:type` fields; values read as strings first."""
    with path.open("r", encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split(delimiter)
    if typed_header:
        names = [f.rsplit(":", 1)[0] for f in header]
        types = {n: _GL_TYPES[f.rsplit(":", 1)[1]] for n, f in zip(names, header, strict=True)}
    else:
        names, types = header, {}
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise NegseqError(f"{path}: {exc}") from None
    for name, target in types.items():
        if not pa.types.is_string(target):
            idx = table.schema.get_field_index(name)
            table = table.set_column(idx, name, _cast_strings(table[name], target, str(path), name))
    return table


def read_table(path: str | Path, *, format: str | None = None, field_delimiter: str = "\t") -> pa.Table:
    """Read a whole table from any supported format (graph-learn TSV keeps its `feature` string)."""
    path = Path(path)
    if not path.exists():
        raise NegseqError(f"{path}: no such file or directory")
    fmt = format or _detect_format(path, field_delimiter)
    if fmt not in FORMATS:
        raise NegseqError(f"{path}: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "parquet":
        # One file: the plain Parquet reader. pq.read_table goes through Arrow Dataset, whose
        # code and buffers cost the benchmark's load about 10 MiB of peak RSS and 0.2 s.
        return pq.ParquetFile(path).read() if path.is_file() else pq.read_table(path)
    if fmt == "ipc":
        return feather.read_table(path)
    if fmt == "csv":
        delimiter = "," if path.suffix.lower() == ".csv" else field_delimiter
        return _read_text(path, delimiter, typed_header=False)
    return _read_text(path, field_delimiter, typed_header=True)


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
    column = table[name]
    if column.null_count:
        row = _first_row(pc.is_null(column)) + row_offset
        raise NegseqError(f"{source}: column {name!r}, row {row}: null id")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = _cast_strings(column, pa.int64(), source, name)
    elif not pa.types.is_integer(column.type):
        raise NegseqError(f"{source}: column {name!r} must hold integer ids, found {column.type}")
    return column.to_numpy().astype(np.int64, copy=False)


def _weight_column(
    table: pa.Table, name: str, source: str, *, allow_all_zero: bool, row_offset: int = 0
) -> np.ndarray:
    if name not in table.column_names:
        return np.ones(table.num_rows, dtype=np.float64)
    column = table[name]
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = _cast_strings(column, pa.float64(), source, name)
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise NegseqError(f"{source}: column {name!r} must be numeric, found {column.type}")
    if column.null_count:
        row = _first_row(pc.is_null(column)) + row_offset
        raise NegseqError(f"{source}: column {name!r}, row {row}: null weight")
    weights = column.to_numpy().astype(np.float64, copy=False)
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


def _split_features(
    table: pa.Table,
    attr_fields: Sequence[str],
    attr_delimiter: str,
    source: str,
) -> pa.Table:
    """Expand graph-learn's `feature` string into one string column per attr field."""
    parts = pc.split_pattern(table["feature"], attr_delimiter)
    counts = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    bad = counts != len(attr_fields)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise NegseqError(
            f"{source}: column 'feature', row {row}: {counts[row]} values for "
            f"{len(attr_fields)} attr_fields {list(attr_fields)} (delimiter {attr_delimiter!r})"
        )
    out = table.drop_columns(["feature"])
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
        table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(self.ids))
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
        path: str | Path,
        *,
        format: str | None = None,
        attr_fields: Sequence[str] | None = None,
        attr_delimiter: str = ":",
        field_delimiter: str = "\t",
        schema: pa.Schema | Mapping[str, pa.DataType] | None = None,
        item_id_field: str | None = None,
    ) -> ItemTable:
        """Read an item table. For graph-learn TSV, `attr_fields` names the values of `feature`."""
        path = Path(path)
        table = read_table(path, format=format, field_delimiter=field_delimiter)
        source = str(path)
        if "feature" in table.column_names and attr_fields is not None and "feature" not in attr_fields:
            table = _split_features(table, attr_fields, attr_delimiter, source)
            if item_id_field is not None and item_id_field in attr_fields:
                column = _cast_strings(table[item_id_field], pa.int64(), source, item_id_field)
                table = table.set_column(table.schema.get_field_index(item_id_field), item_id_field, column)
        return cls.from_arrow(table, attr_fields, schema=schema, source=source, item_id_field=item_id_field)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def schema(self) -> pa.Schema:
        return self.table.schema

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
                columns.append(pa.array(ids, pa.int64()))
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
            column = column.cast(target)
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


class EdgeTable:
    """User -> item edges from `userid`, `itemid`, `weight` columns (positive or hard-negative edges).

    Held as numpy arrays only; Parquet is read a row group at a time into them, so loading
    millions of edges never holds the Arrow table and its copy at once. `weights` is None
    when the caller does not need them (they are still validated).
    """

    def __init__(
        self, user_ids: np.ndarray, item_ids: np.ndarray, weights: np.ndarray | None, *, source: str
    ) -> None:
        self.source = source
        self.user_ids = user_ids
        self.item_ids = item_ids
        self.weights = weights

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
        path: str | Path,
        *,
        format: str | None = None,
        field_delimiter: str = "\t",
        keep_weights: bool = True,
    ) -> EdgeTable:
        path = Path(path)
        fmt = format or (_detect_format(path, field_delimiter) if path.exists() else None)
        if fmt != "parquet" or path.is_dir():
            table = read_table(path, format=format, field_delimiter=field_delimiter)
            return cls.from_arrow(table, source=str(path), keep_weights=keep_weights)
        parquet = pq.ParquetFile(path)
        _require_columns(parquet.schema_arrow, ["userid", "itemid"], str(path))
        columns = [c for c in ("userid", "itemid", "weight") if c in parquet.schema_arrow.names]
        num_rows = parquet.metadata.num_rows
        users = np.empty(num_rows, np.int64)
        items = np.empty(num_rows, np.int64)
        weights = np.empty(num_rows, np.float64) if keep_weights else None
        start = 0
        for batch in parquet.iter_batches(batch_size=1 << 20, columns=columns):
            end = start + batch.num_rows
            b_users, b_items, b_weights = _edge_arrays(pa.Table.from_batches([batch]), str(path), start)
            users[start:end], items[start:end] = b_users, b_items
            if weights is not None:
                weights[start:end] = b_weights
            start = end
        return cls(users, items, weights, source=str(path))

    def __len__(self) -> int:
        return len(self.user_ids)

    def check_items_known(self, items: ItemTable) -> np.ndarray:
        """Item rows (int32) of every edge; an edge to an item missing from the catalogue is an error."""
        rows = items.index.rows(self.item_ids, np.int32)
        unknown = np.flatnonzero(rows < 0)
        if len(unknown):
            row = int(unknown[0])
            raise NegseqError(
                f"{self.source}: column 'itemid', row {row}: item {int(self.item_ids[row])} "
                f"is not in the item table {items.source} ({len(unknown)} such edges)"
            )
        return rows
