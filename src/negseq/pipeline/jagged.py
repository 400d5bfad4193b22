"""Sampled Arrow rows -> `JaggedBatch` (torch tensors of dense item rows).

The candidate column is what `sample_candidates` wrote: lists or delimited strings in the
interleaved or suffix layout, with `cand_pos_lengths` beside it (and `hard_neg_indices`, flattened
(query row, offset) pairs on the last row, for the hard samplers in the suffix layout).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from negseq.errors import NegseqError
from negseq.pipeline.jagged_batch import JaggedBatch, JaggedFeature, Layout
from negseq.pipeline.sampler_input import column_of, flatten_id_column

CAND_POS_LENGTHS = "cand_pos_lengths"
HARD_NEG_INDICES = "hard_neg_indices"


class DenseRows(Protocol):
    def dense_rows(self, ids: np.ndarray) -> np.ndarray: ...


def _offsets(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def truncate_recent(values: np.ndarray, counts: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last `max_len` values of each row: (values, counts)."""
    kept = np.minimum(counts, max_len)
    ends = _offsets(counts)[1:]
    new_offsets = _offsets(kept)
    idx = np.arange(new_offsets[-1], dtype=np.int64) + np.repeat(ends - kept - new_offsets[:-1], kept)
    return values[idx], kept


def _interleaved_neg_per_pos(cand_counts: np.ndarray, pos_counts: np.ndarray) -> int:
    total_pos = int(pos_counts.sum())
    if total_pos == 0:
        if cand_counts.any():
            raise NegseqError("interleaved candidates hold ids but cand_pos_lengths are all 0")
        return 0
    total = int(cand_counts.sum())
    if total % total_pos:
        raise NegseqError(f"interleaved candidates: {total} ids is not a multiple of {total_pos} positives")
    neg_per_pos = total // total_pos - 1
    bad = np.flatnonzero(cand_counts != pos_counts * (1 + neg_per_pos))
    if len(bad):
        row = int(bad[0])
        raise NegseqError(
            f"interleaved candidates, row {row}: {int(cand_counts[row])} ids for "
            f"{int(pos_counts[row])} positives with {neg_per_pos} negatives each"
        )
    return neg_per_pos


def to_jagged_batch(
    record_batch: pa.RecordBatch | pa.Table,
    *,
    items: DenseRows,
    uih_field: str,
    candidate_field: str,
    timestamp_field: str | None = None,
    max_seq_len: int,
    layout: Layout,
) -> JaggedBatch:
    """One sampled batch as a `JaggedBatch`: ids -> dense item rows (unknown -> 0).

    The history keeps its most recent `max_seq_len` items; candidates are never cut.
    """
    if max_seq_len < 1:
        raise NegseqError(f"max_seq_len must be >= 1, got {max_seq_len}")
    uih_ids, uih_counts = flatten_id_column(column_of(record_batch, uih_field), column=uih_field)
    uih_ids, uih_counts = truncate_recent(uih_ids, uih_counts, max_seq_len)
    timestamps = None
    if timestamp_field is not None:
        ts, ts_counts = flatten_id_column(column_of(record_batch, timestamp_field), column=timestamp_field)
        ts, ts_counts = truncate_recent(ts, ts_counts, max_seq_len)
        if not np.array_equal(ts_counts, uih_counts):
            row = int(np.flatnonzero(ts_counts != uih_counts)[0])
            raise NegseqError(f"row {row}: {timestamp_field!r} and {uih_field!r} differ in length")
        timestamps = torch.from_numpy(ts)

    cand_ids, cand_counts = flatten_id_column(
        column_of(record_batch, candidate_field), column=candidate_field
    )
    pos_counts = column_of(record_batch, CAND_POS_LENGTHS).fill_null(0).to_numpy(zero_copy_only=False)
    pos_counts = pos_counts.astype(np.int64)

    neg_per_pos = num_shared = num_hard = 0
    hard_indices = None
    if layout == "interleaved":
        neg_per_pos = _interleaved_neg_per_pos(cand_counts, pos_counts)
    elif layout == "suffix":
        extra = cand_counts - pos_counts
        if len(extra) and (extra[:-1].any() or extra[-1] < 0):
            row = int(np.flatnonzero(extra[:-1])[0]) if extra[:-1].any() else len(extra) - 1
            raise NegseqError(
                f"suffix candidates, row {row}: {int(cand_counts[row])} ids but "
                f"{int(pos_counts[row])} positives (only the last row carries negatives)"
            )
        names = record_batch.schema.names
        if HARD_NEG_INDICES in names:
            pairs, _ = flatten_id_column(column_of(record_batch, HARD_NEG_INDICES), column=HARD_NEG_INDICES)
            hard_indices = torch.from_numpy(pairs.reshape(-1, 2).astype(np.int32))
            num_hard = hard_indices.shape[0]
        num_shared = (int(extra[-1]) if len(extra) else 0) - num_hard
        if num_shared < 0:
            raise NegseqError(f"suffix candidates hold fewer negatives than {num_hard} hard ones")
    else:
        raise NegseqError(f"layout must be 'interleaved' or 'suffix', got {layout!r}")

    uih = JaggedFeature(
        torch.from_numpy(items.dense_rows(uih_ids).astype(np.int64)),
        torch.from_numpy(_offsets(uih_counts)),
        timestamps,
    )
    candidate = JaggedFeature(
        torch.from_numpy(items.dense_rows(cand_ids).astype(np.int64)),
        torch.from_numpy(_offsets(cand_counts)),
    )
    return JaggedBatch(
        uih=uih,
        candidate=candidate,
        cand_pos_lengths=torch.from_numpy(pos_counts.astype(np.int32)),
        layout=layout,
        neg_per_pos=neg_per_pos,
        num_shared_negatives=num_shared,
        num_hard_negatives=num_hard,
        hard_neg_indices=hard_indices,
    )
