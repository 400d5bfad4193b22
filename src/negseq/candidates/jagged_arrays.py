"""`JaggedArrays`: one sampled batch collated to numpy arrays, the form training consumes.

What `SampledBatch.to_jagged()` returns and what crosses Ray's object store between sampler
actors and trainers: ids are already dense embedding rows, every group is (values, offsets),
and no column is a string or a list any more. `negseq.batch.JaggedBatch.from_arrays` wraps
the arrays as torch tensors (zero-copy where numpy owns them). No torch here, so sampler
actors and the Flight service never load it.

The candidate rule (DESIGN §4), stated once in `candidate_count`:
- interleaved: row i holds `cand_pos_lengths[i]` positives, each followed by `neg_per_pos`
  negatives;
- suffix: row i holds its positives; the last row then holds `num_shared_negatives` shared
  negatives, then `num_hard_negatives` hard negatives, owned by `hard_neg_indices` [H, 2] =
  (query row, offset in that row's hard list).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from negseq.errors import NegseqError
from negseq.layout import LAYOUTS, Layout


@dataclass(frozen=True)
class BatchKey:
    """What keys a batch's draws: the same key gives the same negatives in any process."""

    seed: int
    epoch: int
    batch_index: int

    @property
    def packed(self) -> int:
        """epoch << 32 | batch_index: one int64 that orders an epoch-major stream."""
        return (self.epoch << 32) | self.batch_index


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """int64 offsets [B+1] (leading 0) of per-row lengths [B]."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def truncate_recent(values: np.ndarray, counts: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last `max_len` values of each row: (values, counts)."""
    kept = np.minimum(counts, max_len)
    if np.array_equal(kept, counts):
        return values, counts
    ends = offsets_of(counts)[1:]
    new_offsets = offsets_of(kept)
    idx = np.arange(new_offsets[-1], dtype=np.int64) + np.repeat(ends - kept - new_offsets[:-1], kept)
    return values[idx], kept


def candidate_count(layout: str, num_positives: int, neg_per_pos: int, num_shared: int, num_hard: int) -> int:
    """How many candidate ids a batch holds in `layout` (the one statement of the rule)."""
    if layout == "interleaved":
        if num_shared or num_hard:
            raise NegseqError("the interleaved layout has no shared or hard negatives")
        return num_positives * (1 + neg_per_pos)
    if layout == "suffix":
        if neg_per_pos:
            raise NegseqError("the suffix layout has no per-positive negatives (neg_per_pos)")
        return num_positives + num_shared + num_hard
    raise NegseqError(f"layout must be one of {LAYOUTS}, got {layout!r}")


@dataclass(frozen=True)
class JaggedArrays:
    """A sampled batch as numpy arrays of dense item rows (1-based; 0 = unknown id).

    `neg_probability` holds the probability with which the sampler drew each sampled negative
    on one draw, aligned with them in candidate order (interleaved: [Q * neg_per_pos], suffix:
    [num_shared_negatives]); hard negatives are not drawn and have none.
    """

    key: BatchKey
    layout: Layout
    uih_values: np.ndarray
    uih_offsets: np.ndarray
    candidate_values: np.ndarray
    candidate_offsets: np.ndarray
    cand_pos_lengths: np.ndarray
    neg_per_pos: int = 0
    num_shared_negatives: int = 0
    num_hard_negatives: int = 0
    uih_timestamps: np.ndarray | None = None
    hard_neg_indices: np.ndarray | None = None
    neg_probability: np.ndarray | None = None
    uih_actions: np.ndarray | None = None  # int64 action bitmask a history item

    def __post_init__(self) -> None:
        rows = len(self.cand_pos_lengths)
        if len(self.uih_offsets) != rows + 1 or len(self.candidate_offsets) != rows + 1:
            raise NegseqError(
                f"batch {self.key.batch_index}: {rows} rows but offsets of "
                f"{len(self.uih_offsets) - 1} (history) and {len(self.candidate_offsets) - 1} (candidates)"
            )
        num_pos = int(self.cand_pos_lengths.sum())
        expected = candidate_count(
            self.layout, num_pos, self.neg_per_pos, self.num_shared_negatives, self.num_hard_negatives
        )
        if expected != len(self.candidate_values) or self.candidate_offsets[-1] != expected:
            raise NegseqError(
                f"batch {self.key.batch_index}: {len(self.candidate_values)} candidate ids, the "
                f"{self.layout} layout needs {expected}"
            )
        if self.uih_offsets[-1] != len(self.uih_values):
            raise NegseqError(f"batch {self.key.batch_index}: history offsets disagree with its values")
        if self.uih_timestamps is not None and len(self.uih_timestamps) != len(self.uih_values):
            raise NegseqError(f"batch {self.key.batch_index}: history timestamps and items differ in length")
        if self.uih_actions is not None and len(self.uih_actions) != len(self.uih_values):
            raise NegseqError(f"batch {self.key.batch_index}: history actions and items differ in length")
        hard_shape = (self.num_hard_negatives, 2)
        if self.num_hard_negatives and (
            self.hard_neg_indices is None or self.hard_neg_indices.shape != hard_shape
        ):
            raise NegseqError(f"batch {self.key.batch_index}: hard_neg_indices must have shape {hard_shape}")
        sampled = num_pos * self.neg_per_pos + self.num_shared_negatives
        if self.neg_probability is not None and len(self.neg_probability) != sampled:
            raise NegseqError(
                f"batch {self.key.batch_index}: {len(self.neg_probability)} probabilities for "
                f"{sampled} sampled negatives"
            )

    @property
    def num_rows(self) -> int:
        return len(self.cand_pos_lengths)


# ---- transport: one Arrow row a batch (Ray Data blocks) ---------------------------------

_ARRAYS = {  # JaggedArrays field -> its element type (a 2-d array travels flattened)
    "uih_values": np.int64,
    "uih_offsets": np.int64,
    "uih_timestamps": np.int64,
    "candidate_values": np.int64,
    "candidate_offsets": np.int64,
    "cand_pos_lengths": np.int32,
    "hard_neg_indices": np.int32,
    "neg_probability": np.float64,
    "uih_actions": np.int64,
}
_COUNTS = ("neg_per_pos", "num_shared_negatives", "num_hard_negatives")


def _list_column(parts: Sequence[np.ndarray | None], dtype: type) -> pa.Array:
    """large_list column, one row a part; a missing (None) part is a null row."""
    lengths = np.array([0 if p is None else p.size for p in parts], dtype=np.int64)
    values = np.concatenate(
        [np.asarray(p, dtype).reshape(-1) for p in parts if p is not None] or [np.empty(0, dtype)]
    )
    mask = pa.array([p is None for p in parts]) if any(p is None for p in parts) else None
    return pa.LargeListArray.from_arrays(pa.array(offsets_of(lengths)), pa.array(values), mask=mask)


def arrays_to_table(batches: Sequence[JaggedArrays]) -> pa.Table:
    """Collated batches as an Arrow table of one row each (a Ray Data block)."""
    columns: dict[str, pa.Array] = {
        "seed": pa.array([b.key.seed for b in batches], pa.uint64()),
        "epoch": pa.array([b.key.epoch for b in batches], pa.int64()),
        "batch_index": pa.array([b.key.batch_index for b in batches], pa.int64()),
        "layout": pa.array([b.layout for b in batches], pa.string()),
    }
    for name in _COUNTS:
        columns[name] = pa.array([getattr(b, name) for b in batches], pa.int64())
    for name, dtype in _ARRAYS.items():
        columns[name] = _list_column([getattr(b, name) for b in batches], dtype)
    return pa.table(columns)


def _row_values(column: pa.Array) -> list[np.ndarray | None]:
    """Each row of a large_list column as a numpy view of its values (None for a null row)."""
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(column))]


def _present(row: np.ndarray | None) -> np.ndarray:
    assert row is not None, "a collated batch has a null row in a required column"
    return row


def arrays_from_table(table: pa.Table) -> Iterator[JaggedArrays]:
    """The batches of an `arrays_to_table` table (or of any block of its rows), in row order."""
    for record_batch in table.to_batches():
        scalars = {
            n: record_batch.column(n).to_pylist()
            for n in ("seed", "epoch", "batch_index", "layout", *_COUNTS)
        }
        lists = {name: _row_values(record_batch.column(name)) for name in _ARRAYS}
        for i in range(record_batch.num_rows):
            hard = lists["hard_neg_indices"][i]
            yield JaggedArrays(
                key=BatchKey(scalars["seed"][i], scalars["epoch"][i], scalars["batch_index"][i]),
                layout=scalars["layout"][i],
                uih_values=_present(lists["uih_values"][i]),
                uih_offsets=_present(lists["uih_offsets"][i]),
                candidate_values=_present(lists["candidate_values"][i]),
                candidate_offsets=_present(lists["candidate_offsets"][i]),
                cand_pos_lengths=_present(lists["cand_pos_lengths"][i]),
                neg_per_pos=scalars["neg_per_pos"][i],
                num_shared_negatives=scalars["num_shared_negatives"][i],
                num_hard_negatives=scalars["num_hard_negatives"][i],
                uih_timestamps=lists["uih_timestamps"][i],
                hard_neg_indices=None if hard is None else hard.reshape(-1, 2),
                neg_probability=lists["neg_probability"][i],
                uih_actions=lists["uih_actions"][i],
            )
