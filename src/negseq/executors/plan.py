"""What an executor runs, as plain data, and the one function of a batch both executors apply.

`SamplingPlan`: the source's batch descriptors (planned from metadata), how each batch is
sampled, and for which epochs. `BatchWork`: sample a descriptor's rows keyed by
(seed, epoch, batch_index), write the batch's part when the epoch is the one being written,
and collate it for training. The local executor calls it on threads, the Ray executor on
actors: both produce the same files and the same arrays for the same key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import pyarrow as pa

from negseq.candidates import CandidateSpec, JaggedArrays, SampledBatch, sample_batch
from negseq.candidates.sampled import DenseRows
from negseq.io.sinks import SampledSink, config_hash
from negseq.io.sources import BatchPlan, Source


class EpochKeys(Sequence[tuple[int, int]]):
    """(epoch, batch_index) of every batch of `epochs`, epoch-major, computed when asked for (a
    run's keys are not held as a list: the driver's memory does not grow with the input)."""

    def __init__(self, epochs: Sequence[int], num_batches: int) -> None:
        self.epochs = tuple(epochs)
        self.num_batches = num_batches

    def __len__(self) -> int:
        return len(self.epochs) * self.num_batches

    @overload
    def __getitem__(self, index: int) -> tuple[int, int]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[int, int]]: ...

    def __getitem__(self, index: int | slice) -> tuple[int, int] | list[tuple[int, int]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"key {index} of {len(self)}")
        epoch, batch_index = divmod(index, self.num_batches)
        return self.epochs[epoch], batch_index


@dataclass(frozen=True)
class SamplingPlan:
    """The batches of `source` (`batch_size` rows each), sampled as `spec` says, over `epochs`."""

    source: Source
    batch_size: int
    spec: CandidateSpec
    epochs: tuple[int, ...] = (0,)
    training: bool = True
    descriptors: BatchPlan = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "descriptors", self.source.plan(self.batch_size))

    @property
    def num_batches(self) -> int:
        """Batches an epoch."""
        return len(self.descriptors)

    def keys(self) -> EpochKeys:
        """(epoch, batch_index) of every batch of the run, epoch-major."""
        return EpochKeys(self.epochs, self.num_batches)


@dataclass(frozen=True)
class Collation:
    """How a sampled batch becomes training arrays: the item vocabulary (dense rows), the history
    column, its timestamps and actions, and the history length kept."""

    vocab: DenseRows
    max_seq_len: int
    uih_field: str = "uih"
    timestamp_field: str | None = None
    action_field: str | None = None

    def __call__(self, sampled: SampledBatch) -> JaggedArrays:
        return sampled.to_jagged(
            self.vocab,
            uih_field=self.uih_field,
            max_seq_len=self.max_seq_len,
            timestamp_field=self.timestamp_field,
            action_field=self.action_field,
        )


@dataclass(frozen=True)
class BatchWork:
    """One keyed batch's rows: sample, write (`write_epoch` only), collate (when `collate` is set).

    Returns the collated arrays, or the batch's summary (the written part's, when it was
    written) when there is nothing to collate.
    """

    sampler: Any
    plan: SamplingPlan
    sink: SampledSink | None = None
    write_epoch: int = 0
    collate: Collation | None = None

    def describe(self, sampler_config: dict[str, Any]) -> dict[str, Any]:
        """What decides the written outputs, for their manifest; `config_hash` hashes the rest."""
        sampler, spec = self.sampler, self.plan.spec
        ((kind, fields),) = sampler_config.items()
        hard = getattr(sampler, "hard", None)
        num_sample = sampler.shared_sample_num(self.plan.training)
        attributes = spec.check_input(sampler, self.plan.source.schema, self.plan.source.spec)
        fields = {
            "sampler": {"type": kind, "config": fields},
            "num_sample": num_sample,
            "num_hard_sample": None if hard is None else hard.num_hard_sample,
            "layout": spec.layout,
            # the negatives each positive got (interleaved); the suffix layout shares num_sample
            "neg_per_pos": (num_sample if spec.neg_per_pos is None else spec.neg_per_pos)
            if spec.layout == "interleaved"
            else None,
            "seq_delim": spec.seq_delim,
            "seed": int(sampler.seed),
            "epoch": self.write_epoch,
            "training": self.plan.training,
            "batch_size": self.plan.batch_size,
            "input": self.plan.source.spec,
            "candidate_column": sampler.item_id_field,
            "attribute_columns": {a.name: a.field for a in attributes},
        }
        return {**fields, "config_hash": config_hash(fields)}

    def unwritten(self) -> list[int]:
        """Batches of the written epoch whose part is not staged yet (training stopped early)."""
        written = set() if self.sink is None else {s["batch_index"] for s in self.sink.written()}
        return [i for i in range(self.plan.num_batches) if i not in written]

    def __call__(self, rows: pa.RecordBatch, epoch: int, batch_index: int) -> JaggedArrays | dict[str, Any]:
        sampled = sample_batch(
            rows,
            self.sampler,
            self.plan.spec,
            epoch=epoch,
            batch_index=batch_index,
            training=self.plan.training,
        )
        summary: dict[str, Any] = {"batch_index": batch_index, "rows_in": sampled.num_rows}
        if self.sink is not None and epoch == self.write_epoch:
            summary = self.sink.write(sampled)
        return summary if self.collate is None else self.collate(sampled)
