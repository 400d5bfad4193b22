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

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import pyarrow as pa
import ray

from negseq.candidates import JaggedArrays, arrays_to_table
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
    pure function of the keys it is given. A batch's summary (when the work does not collate)
    names the node that sampled it; the sampled files never do, so they are the same bytes
    whichever node wrote them."""

    def __init__(self, work_ref: ray.ObjectRef, keys: Sequence[tuple[int, int]]) -> None:
        self.work: BatchWork = ray.get(work_ref)
        self.keys = keys
        self.reader = SourceReader(self.work.plan.source)
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, rows: dict[str, np.ndarray]) -> pa.Table:
        descriptors = self.work.plan.descriptors
        results = []
        for row in rows["data"].tolist():
            epoch, index = self.keys[row]
            results.append(self.work(self.reader.read(descriptors[index]), epoch, index))
        if self.work.collate is not None:  # the work returns arrays when it collates, else summaries
            return arrays_to_table([cast(JaggedArrays, r) for r in results])
        return pa.Table.from_pylist([_report(cast(dict, r), self.node_id) for r in results])


def _report(summary: dict[str, Any], node_id: str) -> dict[str, Any]:
    """A batch's summary as one row: its sampler stats as JSON (their keys vary by sampler)."""
    row = {k: v for k, v in summary.items() if k != "stats"}
    return {**row, "node_id": node_id, "stats": json.dumps(summary.get("stats", {}), sort_keys=True)}


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


def write_outputs(
    work: BatchWork,
    pool: ActorPool,
    batches: Sequence[int] | None = None,
    *,
    reports: list[dict[str, Any]] | None = None,
) -> int:
    """Sample and write the `work.write_epoch` batches (all, or `batches`) on the actor pool;
    returns how many were written. The caller finishes `work.sink`. `reports`, when given, gets
    each written batch's summary: name, batch_index, rows, the node that sampled it (`node_id`)
    and its sampler stats (`stats`), in the order the batches finished."""
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
    written = 0
    dataset = sampled_dataset(writer, pool, keys, keys_per_task=1)
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        block = cast(pa.Table, batch)
        written += block.num_rows
        if reports is not None:
            reports.extend({**r, "stats": json.loads(r["stats"])} for r in block.to_pylist())
    return written


def by_node(reports: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """`write_outputs` reports summed per node: batches, rows in and out, sampler stats."""
    nodes: dict[str, dict[str, int]] = {}
    for report in reports:
        node = nodes.setdefault(report["node_id"], {"batches": 0, "rows_in": 0, "rows_out": 0})
        node["batches"] += 1
        for key in ("rows_in", "rows_out"):
            node[key] += int(report.get(key, 0))
        for key, value in report["stats"].items():
            if isinstance(value, int):  # counts add up; a mass or a maximum does not
                node[key] = node.get(key, 0) + value
    return nodes
