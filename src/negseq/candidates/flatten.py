"""Flatten a positive-item column (int64, "1;2;3" strings or lists) into one positive a row.

The sampler wants Q positives with aligned user ids; the batch has B rows of K_i positives each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import numpy as np
import pyarrow as pa

from negseq.candidates import id_strings
from negseq.errors import NegseqError
from negseq.sampler.arrow_numpy import check_int64_ids

BatchLike: TypeAlias = pa.RecordBatch | pa.Table | Mapping[str, pa.Array | pa.ChunkedArray]


def column_of(batch: BatchLike, name: str) -> pa.Array:
    """One column as a single contiguous pa.Array (chunks concatenated)."""
    if isinstance(batch, pa.RecordBatch | pa.Table):
        if name not in batch.schema.names:
            raise NegseqError(f"column {name!r} not in batch (columns: {batch.schema.names})")
        col = batch.column(name)
    else:
        if name not in batch:
            raise NegseqError(f"column {name!r} not in batch (columns: {list(batch)})")
        col = batch[name]
    if isinstance(col, pa.ChunkedArray):
        col = pa.concat_arrays(col.chunks) if col.num_chunks != 1 else col.chunk(0)
    if not isinstance(col, pa.Array):
        col = pa.array(col)
    return col


def is_id_list_type(typ: pa.DataType) -> bool:
    return (
        pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)
    ) and pa.types.is_integer(typ.value_type)


def is_id_string_type(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def flatten_id_column(
    arr: pa.Array, seq_delim: str = ";", column: str = "item_id"
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [Q], counts int64 [B]) of an int, delimited-string or list-of-int column.

    Null rows and empty rows count 0. Bad tokens and null list elements raise NegseqError naming
    the column and row.
    """
    typ = arr.type
    if pa.types.is_null(typ):  # an all-null column (e.g. read from an empty CSV field)
        return np.empty(0, dtype=np.int64), np.zeros(len(arr), dtype=np.int64)
    if pa.types.is_integer(typ):
        check_int64_ids(arr, lambda row: f"column {column!r}, row {row}")
        valid = id_strings.validity(arr)
        # drop nulls in Arrow: to_numpy would turn a nullable int column into lossy float64
        ids = arr.drop_null().cast(pa.int64()).to_numpy()
        return np.ascontiguousarray(ids, dtype=np.int64), valid.astype(np.int64)
    if is_id_string_type(typ):
        offsets, data, valid = id_strings.string_buffers(arr)
        counts = id_strings.count_tokens(arr, seq_delim, column)
        ids = id_strings.parse_tokens(offsets, data, valid, id_strings.delim_bytes(seq_delim), counts)
        return ids, counts
    if is_id_list_type(typ):
        counts = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        values = arr.flatten()
        ends = np.cumsum(counts)
        check_int64_ids(values, lambda i: f"column {column!r}, row {np.searchsorted(ends, i, side='right')}")
        if values.null_count:
            flat_row = int(np.flatnonzero(~id_strings.validity(values))[0])
            row = int(np.searchsorted(ends, flat_row, side="right"))
            raise NegseqError(f"column {column!r}, row {row}: list holds a null id")
        ids = values.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(ids, dtype=np.int64), counts
    raise NegseqError(
        f"column {column!r} has type {typ}; expected int64 ids, delimited id strings or a list of ids"
    )


def build_sampler_input(
    batch: BatchLike,
    item_id_field: str,
    user_id_field: str | None = None,
    seq_delim: str = ";",
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Flatten `item_id_field` to Q positives and repeat `user_id_field` to stay aligned.

    Returns a new dict {item_id_field: int64 [Q], user_id_field: [Q]} and the per-row counts
    (int32 [B]). The input batch is never mutated.
    """
    items = column_of(batch, item_id_field)
    ids, counts = flatten_id_column(items, seq_delim, item_id_field)
    out: dict[str, pa.Array] = {item_id_field: pa.array(ids, type=pa.int64())}
    if user_id_field is not None:
        users = column_of(batch, user_id_field)
        if len(users) != len(items):
            raise NegseqError(
                f"column {user_id_field!r} has {len(users)} rows, {item_id_field!r} has {len(items)}"
            )
        owner = np.repeat(np.arange(len(items), dtype=np.int64), counts)
        out[user_id_field] = users.take(pa.array(owner))
    return out, counts.astype(np.int32)
