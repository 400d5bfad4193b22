"""The Ray executor: `BatchWork` on a Ray Data actor pool, feeding Ray Train or writing outputs.

The work (sampler and its tables, the plan, the sink) is `ray.put` once and mapped zero-copy
by every actor on a node. Ray Data hands each actor batch keys `(epoch, batch_index)`; the
actor reads the batch's own rows from the source (the driver never holds them), samples them
keyed by `(seed, epoch, batch_index)`, writes the batch's part when the epoch is written, and
returns the batch collated to arrays: one Arrow row a sampled batch (`arrays_to_table`), so Ray
Train's standard split hands whole batches to its workers. With `deterministic=True` the
stream keeps batch order (`preserve_order`): one seed gives the same training on any number
of actors. Outputs do not depend on how many actors run or which one retries a batch after a
failure, and parts named by batch index are rewritten, never duplicated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import ray

from negseq.candidates import arrays_to_table
from negseq.executors.plan import BatchWork, EpochKeys
from negseq.io.sources import SourceReader

KEYS_PER_TASK = 4  # amortizes Ray Data's per-task overhead over several batches


@dataclass(frozen=True)
class ActorPool:
    """Sampler actor pool size and resources. Ray Data gives pool actors `max_restarts=-1` and
    `max_task_retries=-1`: a dead actor is restarted and its batches are retried."""

    min_size: int = 1
    max_size: int = 2
    num_cpus: float = 0.5

    def strategy(self) -> ray.data.ActorPoolStrategy:
        return ray.data.ActorPoolStrategy(min_size=self.min_size, max_size=self.max_size)


class SampleBatches:
    """Ray Data callable class: the work and a reader built once in `__init__`; `__call__` is a
    pure function of the keys it is given."""

    def __init__(self, work_ref: ray.ObjectRef, keys: Sequence[tuple[int, int]]) -> None:
        self.work: BatchWork = ray.get(work_ref)
        self.keys = keys
        self.reader = SourceReader(self.work.plan.source)

    def __call__(self, rows: dict[str, np.ndarray]) -> pa.Table:
        descriptors = self.work.plan.descriptors
        results = []
        for row in rows["data"].tolist():
            epoch, index = self.keys[row]
            results.append(self.work(self.reader.read(descriptors[index]), epoch, index))
        if self.work.collate is not None:
            return arrays_to_table(results)
        return pa.Table.from_pylist([{k: v for k, v in r.items() if k != "stats"} for r in results])


def sampled_dataset(
    work: BatchWork,
    pool: ActorPool,
    keys: Sequence[tuple[int, int]],
    *,
    deterministic: bool = True,
    keys_per_task: int = KEYS_PER_TASK,
) -> ray.data.Dataset:
    """`work` over the (epoch, batch_index) `keys` on the actor pool: one row a batch (its
    arrays when the work collates, else its summary), in key order when `deterministic`.

    The dataset's rows are positions in `keys` (8 bytes a batch, in the object store: unlike
    `ray.data.range`, no read task competes with the trainer and the actors for CPUs); each actor
    maps them to keys itself, so the driver ships `keys` (lazy `EpochKeys` for a whole run) and
    no list of them."""
    blocks = max(1, min(len(keys) // keys_per_task, 200))
    positions = np.array_split(np.arange(len(keys), dtype=np.int64), blocks)
    dataset = ray.data.from_numpy(positions).map_batches(
        SampleBatches,
        fn_constructor_kwargs={"work_ref": ray.put(work), "keys": keys},
        compute=pool.strategy(),
        batch_size=keys_per_task,
        batch_format="numpy",
        num_cpus=pool.num_cpus,
    )
    dataset.context.execution_options.preserve_order = deterministic
    return dataset


def write_outputs(work: BatchWork, pool: ActorPool, batches: Sequence[int] | None = None) -> int:
    """Sample and write the `work.write_epoch` batches (all, or `batches`) on the actor pool;
    returns how many were written. The caller finishes `work.sink`."""
    if work.sink is None:
        raise ValueError("write_outputs needs a BatchWork with a sink")
    writer = replace(work, collate=None)
    keys: Sequence[tuple[int, int]] = (
        EpochKeys((work.write_epoch,), work.plan.num_batches)
        if batches is None
        else [(work.write_epoch, i) for i in batches]
    )
    if not keys:
        return 0
    return sum(
        len(b["batch_index"]) for b in sampled_dataset(writer, pool, keys, keys_per_task=1).iter_batches()
    )
