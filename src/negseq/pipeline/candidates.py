"""One call from a batch of positives to candidate sequences: flatten, sample, combine."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa

from negseq.errors import NegseqError
from negseq.pipeline.combine import (
    combine_neg_as_candidate_sequence,
    combine_negs_to_candidate_suffix,
)
from negseq.pipeline.jagged import CAND_POS_LENGTHS, HARD_NEG_INDICES
from negseq.pipeline.sampler_input import build_sampler_input, column_of

LAYOUTS = ("interleaved", "suffix")


def _hard_indices_column(num_rows: int, hard_neg_indices: np.ndarray | None) -> pa.Array:
    """list<int32>: the last row holds the flattened (query row, offset) pairs, others empty."""
    pairs = np.empty(0, np.int32) if hard_neg_indices is None else hard_neg_indices.reshape(-1)
    offsets = np.zeros(num_rows + 1, dtype=np.int32)
    if num_rows:
        offsets[-1] = len(pairs)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(pairs.astype(np.int32)))


def sample_candidates_and_stats(
    batch: pa.RecordBatch,
    sampler: Any,
    *,
    layout: Literal["interleaved", "suffix"],
    neg_per_pos: int | None = None,
    seq_delim: str = ";",
    epoch: int = 0,
    batch_index: int = 0,
    training: bool = True,
) -> tuple[pa.RecordBatch, dict[str, int]]:
    """`sample_candidates`, plus the sampler's stats for this batch (draws, redraws, ...)."""
    if layout not in LAYOUTS:
        raise NegseqError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "interleaved" and getattr(sampler, "is_hard", False):
        raise NegseqError(
            "hard negatives are shared by a batch, so they need the 'suffix' layout, not 'interleaved'"
        )
    if isinstance(batch, pa.Table):
        batch = pa.RecordBatch.from_arrays(
            [column_of(batch, name) for name in batch.schema.names], schema=batch.schema
        )
    item_field = sampler.item_id_field
    positives = column_of(batch, item_field)
    flat, counts = build_sampler_input(batch, item_field, sampler.user_id_field, seq_delim)
    num_pos = int(counts.sum())
    if layout == "suffix" and neg_per_pos is not None:
        raise NegseqError(
            "neg_per_pos applies to the 'interleaved' layout; the 'suffix' layout appends the "
            "sampler's num_sample shared negatives"
        )
    n = sampler.shared_sample_num(training) if neg_per_pos is None else int(neg_per_pos)

    stats: dict[str, int] = {}
    negs = np.empty(0, np.int64)
    hard_ids = np.empty(0, np.int64)
    hard_indices = None
    if num_pos:
        per_positive = n if layout == "interleaved" else None
        res = sampler.get(
            flat, epoch=epoch, batch_index=batch_index, per_positive=per_positive, training=training
        )
        negs, stats = res.ids, dict(res.stats)
        if res.hard_ids is not None and len(res.hard_ids):
            hard_ids, hard_indices = res.hard_ids, res.hard_neg_indices

    if layout == "interleaved":
        candidates, cand_pos_lengths = combine_neg_as_candidate_sequence(
            positives, negs, n if num_pos else 0, seq_delim
        )
    else:
        candidates, cand_pos_lengths = combine_negs_to_candidate_suffix(
            positives, negs, seq_delim, hard_negs=hard_ids
        )
    if not np.array_equal(cand_pos_lengths, counts):
        raise AssertionError("combine counted positives differently from build_sampler_input")

    names = batch.schema.names
    arrays = [candidates if name == item_field else batch.column(name) for name in names]
    fields = [pa.field(name, arr.type) for name, arr in zip(names, arrays, strict=True)]
    arrays.append(pa.array(cand_pos_lengths, type=pa.int32()))
    fields.append(pa.field(CAND_POS_LENGTHS, pa.int32()))
    if layout == "suffix" and getattr(sampler, "is_hard", False):
        arrays.append(_hard_indices_column(batch.num_rows, hard_indices))
        fields.append(pa.field(HARD_NEG_INDICES, pa.list_(pa.int32())))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields)), stats


def sample_candidates(
    batch: pa.RecordBatch,
    sampler: Any,
    *,
    layout: Literal["interleaved", "suffix"],
    neg_per_pos: int | None = None,
    seq_delim: str = ";",
    epoch: int = 0,
    batch_index: int = 0,
    training: bool = True,
) -> pa.RecordBatch:
    """Flatten the positives, draw negatives keyed by (seed, epoch, batch_index), combine.

    Returns the batch with `sampler.item_id_field` replaced by the candidate sequences (same
    type family as the input), plus `cand_pos_lengths` (int32) and, for the hard samplers
    (suffix layout only), `hard_neg_indices` (list<int32>: flattened (query row, offset) pairs on
    the last row). `neg_per_pos` defaults to `sampler.num_sample` (`num_eval_sample` when not
    training and set) negatives for each positive in the interleaved layout; the suffix layout
    appends the sampler's shared negatives. A batch without positives gets no negatives.
    """
    out, _ = sample_candidates_and_stats(
        batch,
        sampler,
        layout=layout,
        neg_per_pos=neg_per_pos,
        seq_delim=seq_delim,
        epoch=epoch,
        batch_index=batch_index,
        training=training,
    )
    return out
