"""Sequence-table columns (Arrow list<int64>) -> the model's jagged inputs.

Used by `evaluate` and `predict`, which read sequence tables directly, or a source batch by
batch (`split_batches`); training batches come from `SampledBatch.to_jagged`. Item ids become
dense rows through the item table (`items.dense_rows`, 0 for an unknown id).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from negseq.batch import JaggedFeature
from negseq.errors import NegseqError
from negseq.io.sources import Source, SourceReader


class DenseRows(Protocol):
    """What the model needs of an item table: its size and the id -> dense row map."""

    def __len__(self) -> int: ...

    def dense_rows(self, ids: np.ndarray) -> np.ndarray: ...


class Catalogue(DenseRows, Protocol):
    """An item table that also lists its ids (to embed the whole corpus)."""

    @property
    def ids(self) -> np.ndarray: ...


def list_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values int64 [L], offsets int64 [B+1]) of a list<int> column; a null row is empty."""
    if name not in table.column_names:
        raise NegseqError(f"sequence table has no column {name!r} (columns: {table.column_names})")
    column = table.column(name)
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise NegseqError(f"sequence table column {name!r} must be a list of ints, got {column.type}")
    column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    flat = column.flatten()  # honours slicing, skips null rows
    if flat.null_count:
        raise NegseqError(f"sequence table column {name!r} holds a null item inside a list")
    return flat.to_numpy(zero_copy_only=False).astype(np.int64), offsets


def history_feature(
    table: pa.Table, items: DenseRows, *, with_timestamps: bool, with_actions: bool = False
) -> JaggedFeature:
    """The `uih` column (and `uih_ts`, `uih_actions` when asked) as a JaggedFeature of dense item rows."""
    ids, offsets = list_column(table, "uih")
    beside = []
    for wanted, name in ((with_timestamps, "uih_ts"), (with_actions, "uih_actions")):
        values = None
        if wanted:
            column, column_offsets = list_column(table, name)
            if not np.array_equal(column_offsets, offsets):
                raise NegseqError(f"sequence table columns 'uih' and {name!r} differ in length on some row")
            values = torch.from_numpy(column)
        beside.append(values)
    return JaggedFeature(
        torch.from_numpy(np.asarray(items.dense_rows(ids), dtype=np.int64)),
        torch.from_numpy(offsets),
        beside[0],
        beside[1],
    )


def split_batches(
    split: pa.Table | Source, batch_size: int, columns: Sequence[str] | None = None
) -> Iterator[pa.Table]:
    """A sequence table's rows, or a source's read batch by batch (never all at once), in
    `batch_size` slices of `columns` (all when None)."""
    if isinstance(split, pa.Table):
        table = split.select(list(columns)) if columns else split
        for start in range(0, split.num_rows, batch_size):
            yield table.slice(start, batch_size)
        return
    reader = SourceReader(split, columns)
    for descriptor in split.plan(batch_size):
        yield pa.Table.from_batches([reader.read(descriptor)])


def history_inputs(model: Any) -> dict[str, bool]:
    """Which history columns `model` reads beside the items (`history_feature`'s flags)."""
    return {
        "with_timestamps": model.positional.time_emb is not None,
        "with_actions": model.preprocessor.action_emb is not None,
    }


def history_columns(model: Any) -> list[str]:
    """The history columns `history_feature` reads for `model`."""
    inputs = history_inputs(model)
    return (
        ["uih"]
        + (["uih_ts"] if inputs["with_timestamps"] else [])
        + (["uih_actions"] if inputs["with_actions"] else [])
    )
