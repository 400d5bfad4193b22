"""`SampledDataset`: a torch `IterableDataset` of `JaggedBatch`es, for a DataLoader.

Two sources, one batch for one batch index either way:
- `SampledDataset.from_folder(folder, vocab)`: the parts a `negseq sample` or `negseq run` wrote
  (one a batch), read back through their manifest's layout (`jagged_from_arrow`);
- `SampledDataset.from_source(input, sampler, vocab)`: the input's batches sampled on the fly by
  `BatchWork`, keyed by (seed, epoch, batch_index) as `negseq sample` keys them.

Sharded by DataLoader worker: worker w of W yields the batches whose index i has i % W == w, in
order, so the workers' batches are disjoint, together all of them, and each the same whichever
worker reads it. Use `DataLoader(dataset, batch_size=None)`: a batch is already a batch.
`vocab` maps item ids to embedding rows (`negseq.sampler.ItemTable`, the model's vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from torch.utils.data import IterableDataset, get_worker_info

from negseq.batch import JaggedBatch
from negseq.candidates import BatchKey, CandidateSpec, JaggedArrays, jagged_from_arrow
from negseq.candidates.sampled import DenseRows
from negseq.executors.plan import BatchWork, Collation, SamplingPlan
from negseq.io.sinks import open_output, read_manifest
from negseq.io.sources import Source, SourceReader

__all__ = ["SampledDataset"]


class SampledDataset(IterableDataset):
    """`JaggedBatch`es of a sampled folder or of a source and a sampler (see the module docstring)."""

    def __init__(
        self, batch_indices: Sequence[int], load: Callable[[list[int]], Iterator[JaggedArrays]]
    ) -> None:
        """`load(indices)` yields the arrays of those batches in order; prefer the `from_*` builders."""
        self.batch_indices = list(batch_indices)
        self._load = load

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        vocab: DenseRows,
        *,
        uih_field: str = "uih",
        max_seq_len: int = 200,
        timestamp_field: str | None = None,
    ) -> SampledDataset:
        """The batches a finished sampled folder holds (an unfinished one is an error)."""
        manifest = read_manifest(str(folder))
        fs, out = open_output(str(folder))
        spec = CandidateSpec(
            layout=manifest["layout"],
            neg_per_pos=manifest.get("neg_per_pos") if manifest["layout"] == "interleaved" else None,
            seq_delim=manifest["seq_delim"],
        )
        # manifests before `candidate_column` name it in the sampler's config
        item_field = manifest.get("candidate_column") or manifest["sampler"]["config"]["item_id_field"]
        files = {f["batch_index"]: f"{out}/{f['name']}" for f in manifest["files"]}

        def load(indices: list[int]) -> Iterator[JaggedArrays]:
            for index in indices:
                yield jagged_from_arrow(
                    _read_part(fs, files[index], manifest["format"]),
                    key=BatchKey(manifest["seed"], manifest["epoch"], index),
                    spec=spec,
                    item_field=item_field,
                    vocab=vocab,
                    uih_field=uih_field,
                    max_seq_len=max_seq_len,
                    timestamp_field=timestamp_field,
                )

        return cls(sorted(files), load)

    @classmethod
    def from_source(
        cls,
        source: str | Path | Sequence[str | Path] | Source,
        sampler: Any,
        vocab: DenseRows,
        *,
        spec: CandidateSpec | None = None,
        batch_size: int = 128,
        epoch: int = 0,
        training: bool = True,
        uih_field: str = "uih",
        max_seq_len: int = 200,
        timestamp_field: str | None = None,
    ) -> SampledDataset:
        """The batches of `source` (`batch_size` rows each) sampled by `sampler` for `epoch`, as
        `negseq sample` samples them (`spec`: default the interleaved layout, num_sample a positive)."""
        source = source if isinstance(source, Source) else Source.open(_spec(source))
        spec = spec or CandidateSpec()
        spec.check_sampler(sampler)
        source.require([f for f in (sampler.item_id_field, sampler.user_id_field) if f is not None])
        spec.check_input(sampler, source.schema, source.spec)
        plan = SamplingPlan(source, batch_size, spec, epochs=(epoch,), training=training)
        work = BatchWork(sampler, plan, collate=Collation(vocab, max_seq_len, uih_field, timestamp_field))

        def load(indices: list[int]) -> Iterator[JaggedArrays]:
            reader = SourceReader(plan.source)  # one a worker: it keeps files open
            for index in indices:
                arrays = work(reader.read(plan.descriptors[index]), epoch, index)
                assert isinstance(arrays, JaggedArrays)  # the work collates
                yield arrays

        return cls(range(plan.num_batches), load)

    @property
    def num_batches(self) -> int:
        return len(self.batch_indices)

    def __len__(self) -> int:
        return self.num_batches

    def worker_batches(self) -> list[int]:
        """The batch indices this DataLoader worker yields (all of them outside a worker)."""
        info = get_worker_info()
        if info is None:
            return self.batch_indices
        return [i for i in self.batch_indices if i % info.num_workers == info.id]

    def __iter__(self) -> Iterator[JaggedBatch]:
        for arrays in self._load(self.worker_batches()):
            yield JaggedBatch.from_arrays(arrays)


def _spec(source: str | Path | Sequence[str | Path]) -> str | list[str]:
    return str(source) if isinstance(source, str | Path) else [str(s) for s in source]


def _read_part(fs: Any, path: str, format: str) -> pa.Table:
    with fs.open_input_file(path) as handle:
        return ipc.open_file(handle).read_all() if format == "ipc" else pq.read_table(handle)
