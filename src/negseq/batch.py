"""`JaggedBatch`: the one structure every stage after sampling speaks (as torchrec's JaggedTensor).

A feature group is a jagged int64 sequence per row: `values` [L] (dense item rows of the
item table, 0 for an unknown id), `offsets` [B+1], optional `timestamps` [L].
The candidate group holds the candidate sequences exactly as the layout builds them:

- interleaved: row i is `p1, n1_1..n1_n, p2, ...`; `cand_pos_lengths[i]` positives,
  each followed by `neg_per_pos` negatives.
- suffix: row i holds its `cand_pos_lengths[i]` positives; the last row then holds
  `num_shared_negatives` shared negatives, then `num_hard_negatives` hard negatives whose
  owners are given by `hard_neg_indices` [H, 2] = (query row, offset in that row's hard list).

`neg_probability` (optional, float32/float64): the probability with which the sampler drew
each sampled negative on one draw, in candidate order: interleaved [Q * neg_per_pos]
(row-major per positive), suffix [num_shared_negatives]. Hard negatives are not sampled
and have none. The model's logQ correction (`negseq.model.sampled_softmax`) reads it.
Training batches come from `JaggedBatch.from_arrays(sampled.to_jagged(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from negseq.candidates.jagged_arrays import JaggedArrays, Layout, candidate_count
from negseq.errors import NegseqError


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over `array`'s memory, or over a copy when the buffer is read-only (Arrow's)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


@dataclass(frozen=True)
class JaggedFeature:
    """One jagged feature group: `values` [L] int64, `offsets` [B+1] int64, optional `timestamps`
    and `actions` (int64 bitmask a value: bit i = action type i happened)."""

    values: torch.Tensor
    offsets: torch.Tensor
    timestamps: torch.Tensor | None = None
    actions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.values.dim() != 1 or self.offsets.dim() != 1 or self.offsets.numel() < 1:
            raise ValueError("JaggedFeature needs 1-d values and offsets with at least one entry")
        if int(self.offsets[-1]) != self.values.numel():
            raise ValueError(
                f"JaggedFeature offsets end at {int(self.offsets[-1])} but values hold {self.values.numel()}"
            )
        if self.timestamps is not None and self.timestamps.shape != self.values.shape:
            raise ValueError("JaggedFeature timestamps must have the same length as values")
        if self.actions is not None and self.actions.shape != self.values.shape:
            raise ValueError("JaggedFeature actions must have the same length as values")

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1

    @property
    def max_len(self) -> int:
        return int(self.lengths.max()) if self.batch_size else 0

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedFeature:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return JaggedFeature(
            self.values.to(device, non_blocking=non_blocking),
            self.offsets.to(device, non_blocking=non_blocking),
            move(self.timestamps),
            move(self.actions),
        )


@dataclass(frozen=True)
class JaggedBatch:
    """A training batch: user history, candidates and the layout metadata to split them."""

    uih: JaggedFeature
    candidate: JaggedFeature
    cand_pos_lengths: torch.Tensor
    layout: Layout
    neg_per_pos: int = 0
    num_shared_negatives: int = 0
    num_hard_negatives: int = 0
    hard_neg_indices: torch.Tensor | None = None
    contextual: JaggedFeature | None = None
    neg_probability: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.layout not in ("interleaved", "suffix"):
            raise ValueError(f"JaggedBatch layout must be 'interleaved' or 'suffix', got {self.layout!r}")
        batch = self.uih.batch_size
        if self.candidate.batch_size != batch or self.cand_pos_lengths.numel() != batch:
            raise ValueError(
                f"JaggedBatch rows disagree: uih {batch}, candidate {self.candidate.batch_size}, "
                f"cand_pos_lengths {self.cand_pos_lengths.numel()}"
            )
        num_pos = int(self.cand_pos_lengths.sum())
        expected = candidate_count(
            self.layout,
            num_pos,
            self.neg_per_pos,
            self.num_shared_negatives,
            self.num_hard_negatives,
        )
        if expected != self.candidate.values.numel():
            raise ValueError(
                f"JaggedBatch candidate holds {self.candidate.values.numel()} ids, "
                f"the {self.layout} layout needs {expected}"
            )
        if self.neg_probability is not None:
            self._check_neg_probability(self.neg_probability, num_pos)

    def _check_neg_probability(self, p: torch.Tensor, num_pos: int) -> None:
        """Shape and dtype always; values (0 < p <= 1) where that costs no device sync (CPU)."""
        if self.layout == "interleaved":
            expected, what = (
                num_pos * self.neg_per_pos,
                f"{num_pos} positives x neg_per_pos {self.neg_per_pos}",
            )
        else:
            expected, what = self.num_shared_negatives, "num_shared_negatives"
        if p.dim() != 1 or p.numel() != expected:
            raise NegseqError(
                f"JaggedBatch neg_probability has shape {tuple(p.shape)}, the {self.layout} layout "
                f"has {expected} sampled negatives ({what})"
            )
        if p.dtype not in (torch.float32, torch.float64):
            raise NegseqError(f"JaggedBatch neg_probability must be float32 or float64, got {p.dtype}")
        if p.device.type == "cpu":
            bad = torch.nonzero(~((p > 0) & (p <= 1))).flatten()
            if bad.numel():
                index = int(bad[0])
                raise NegseqError(
                    f"JaggedBatch neg_probability[{index}] = {float(p[index])}: a drawn negative's "
                    "probability must lie in (0, 1]"
                )

    @classmethod
    def from_arrays(cls, arrays: JaggedArrays) -> JaggedBatch:
        """A collated sampled batch as tensors (no copy where numpy owns the memory)."""
        timestamps = None if arrays.uih_timestamps is None else _tensor(arrays.uih_timestamps)
        actions = None if arrays.uih_actions is None else _tensor(arrays.uih_actions)
        return cls(
            uih=JaggedFeature(_tensor(arrays.uih_values), _tensor(arrays.uih_offsets), timestamps, actions),
            candidate=JaggedFeature(_tensor(arrays.candidate_values), _tensor(arrays.candidate_offsets)),
            cand_pos_lengths=_tensor(arrays.cand_pos_lengths),
            layout=arrays.layout,
            neg_per_pos=arrays.neg_per_pos,
            num_shared_negatives=arrays.num_shared_negatives,
            num_hard_negatives=arrays.num_hard_negatives,
            hard_neg_indices=None if arrays.hard_neg_indices is None else _tensor(arrays.hard_neg_indices),
            neg_probability=None if arrays.neg_probability is None else _tensor(arrays.neg_probability),
        )

    @property
    def batch_size(self) -> int:
        return self.uih.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedBatch:
        return replace(
            self,
            uih=self.uih.to(device, non_blocking),
            candidate=self.candidate.to(device, non_blocking),
            cand_pos_lengths=self.cand_pos_lengths.to(device, non_blocking=non_blocking),
            hard_neg_indices=None
            if self.hard_neg_indices is None
            else self.hard_neg_indices.to(device, non_blocking=non_blocking),
            contextual=None if self.contextual is None else self.contextual.to(device, non_blocking),
            neg_probability=None
            if self.neg_probability is None
            else self.neg_probability.to(device, non_blocking=non_blocking),
        )
