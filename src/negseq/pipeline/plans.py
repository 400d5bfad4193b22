"""What a run fixes before it starts, as plain data: how batches are sampled, how the model trains.

Both executors and Ray Train read these; they live apart from the Ray modules so that the
in-process executor runs without Ray installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import torch

from negseq.errors import NegseqError
from negseq.model.hstu_match import HSTUMatch, STUConfig


@dataclass(frozen=True)
class SamplingPlan:
    """How a source table is cut into keyed batches and how each is sampled."""

    batch_size: int
    layout: Literal["interleaved", "suffix"]
    neg_per_pos: int | None = None
    seq_delim: str = ";"
    training: bool = True

    def num_batches(self, num_rows: int) -> int:
        return -(-num_rows // self.batch_size)

    def batch(self, source: pa.Table, batch_index: int) -> pa.RecordBatch:
        """Source rows [i * batch_size, (i + 1) * batch_size) as one batch: every executor cuts
        them here, so a (seed, epoch, batch_index) key samples the same rows on any of them."""
        rows = source.slice(batch_index * self.batch_size, self.batch_size).combine_chunks().to_batches()
        if not rows:
            raise NegseqError(f"batch {batch_index} is past the end of the source table")
        return rows[0]


@dataclass(frozen=True)
class TrainSettings:
    """What every worker needs to build the model and read its shard.

    `model` holds `HSTUMatch`'s keyword arguments (with `max_seq_len` and `layout`, which the
    shard's collation reads from there too) and `stu` those of its `STUConfig`."""

    model: dict[str, Any]
    candidate_field: str
    stu: dict[str, Any] = field(default_factory=dict)
    uih_field: str = "uih"
    timestamp_field: str | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    max_steps: int | None = None
    seed: int = 0  # the model's initial weights and dropout draws

    @property
    def max_seq_len(self) -> int:
        return self.model["max_seq_len"]

    @property
    def layout(self) -> str:
        return self.model["layout"]


def build_model(settings: TrainSettings) -> HSTUMatch:
    """The model with its initial weights drawn from `settings.seed` (the same on every worker)."""
    torch.manual_seed(settings.seed)
    return HSTUMatch(**settings.model, stu=STUConfig(**settings.stu))
