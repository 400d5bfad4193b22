"""Interaction log -> per-user training and evaluation sequences (leave-last-out, as HSTU).

Each user's interactions are ordered by time, ties broken by item id, so the split is
deterministic. With items i_1..i_K (K >= min_len):

- eval row:  history i_1..i_{K-1}, target i_K
- train row: history i_1..i_{K-2}, target i_{K-1} (the history may be empty when K = 2)

Histories keep the most recent `max_seq_len` items. `next_items` = uih[1:] + [target], the
positive of every history position for the autoregressive objective.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negseq.errors import NegseqError

SEQUENCE_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("uih", pa.list_(pa.int64())),
        ("uih_ts", pa.list_(pa.int64())),
        ("target", pa.int64()),
        ("target_ts", pa.int64()),
        ("next_items", pa.list_(pa.int64())),
    ]
)


def _int64_column(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.schema.names:
        raise NegseqError(f"interactions have no column {name!r} (columns: {table.schema.names})")
    col = table.column(name)
    if col.null_count:
        row = int(pc.index(pc.is_null(col), True).as_py())
        raise NegseqError(f"interactions column {name!r}, row {row}: null value")
    typ = col.type
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        col = col.cast(pa.int64())
    elif not pa.types.is_integer(typ):
        try:
            col = col.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise NegseqError(f"interactions column {name!r} ({typ}) is not integer: {exc}") from exc
    return col.to_numpy().astype(np.int64, copy=False)


def _gather_lists(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """list<int64> whose row r is values[starts[r]:ends[r]]."""
    lengths = ends - starts
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    idx = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - starts, lengths)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values[idx]))


def _next_items(items: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """Row r: items[starts[r]+1 : ends[r]+1] when the history is non-empty, else empty."""
    nonempty = ends > starts
    return _gather_lists(items, np.where(nonempty, starts + 1, starts), np.where(nonempty, ends + 1, ends))


def _rows(users, items, times, first, target_pos, max_seq_len) -> pa.Table:
    starts = np.maximum(first, target_pos - max_seq_len)
    return pa.Table.from_arrays(
        [
            pa.array(users[target_pos]),
            _gather_lists(items, starts, target_pos),
            _gather_lists(times, starts, target_pos),
            pa.array(items[target_pos]),
            pa.array(times[target_pos]),
            _next_items(items, starts, target_pos),
        ],
        schema=SEQUENCE_SCHEMA,
    )


def prepare_sequences(
    interactions: pa.Table | pa.RecordBatch,
    *,
    user_field: str,
    item_field: str,
    time_field: str,
    max_seq_len: int,
    min_len: int = 2,
) -> tuple[pa.Table, pa.Table]:
    """(train, eval) sequence tables, one row per user with at least `min_len` interactions.

    Columns: user_id, uih, uih_ts, target, target_ts, next_items (see the module docstring).
    Users with fewer than `min_len` interactions are left out of both tables.
    """
    if max_seq_len < 1:
        raise NegseqError(f"max_seq_len must be >= 1, got {max_seq_len}")
    if min_len < 2:
        raise NegseqError(f"min_len must be >= 2 (a history and a target), got {min_len}")
    if isinstance(interactions, pa.RecordBatch):
        interactions = pa.Table.from_batches([interactions])
    users = _int64_column(interactions, user_field)
    items = _int64_column(interactions, item_field)
    times = _int64_column(interactions, time_field)
    order = np.lexsort((items, times, users))
    users, items, times = users[order], items[order], times[order]

    boundary = np.flatnonzero(np.diff(users)) + 1 if len(users) else np.empty(0, np.int64)
    first = np.concatenate([[0], boundary]).astype(np.int64) if len(users) else boundary
    last = np.concatenate([boundary, [len(users)]]).astype(np.int64) if len(users) else boundary
    keep = (last - first) >= min_len
    first, last = first[keep], last[keep]

    eval_table = _rows(users, items, times, first, last - 1, max_seq_len)
    train_table = _rows(users, items, times, first, last - 2, max_seq_len)
    return train_table, eval_table
