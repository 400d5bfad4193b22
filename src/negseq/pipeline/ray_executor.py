"""The Ray executor: sampler actors over Ray Data, writing outputs or feeding Ray Train.

Work is planned as batch descriptors `(epoch, batch_index)` over a source table that is
`ray.put` once, like the sampler: every actor on a node maps both from the object store
(numpy and Arrow buffers are not copied). An actor slices its batch out of the table and
samples it keyed by `(seed, epoch, batch_index)`, so the outputs do not depend on how many
actors run or which one retries a batch after a failure, and files named by batch index
are rewritten, never duplicated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from negseq.errors import NegseqError
from negseq.pipeline.candidates import sample_candidates_and_stats
from negseq.pipeline.io import (
    STAT_PREFIX,
    manifest_files_and_stats,
    output_name,
    remove_manifest,
    write_batch_output,
    write_manifest,
)
from negseq.pipeline.plans import SamplingPlan

BATCH_INDEX = "batch_index"
EPOCH = "epoch"
# Streamed rows carry their sampled batch's key, so a consumer can cut blocks back into batches
# however Ray Data bundles them (the suffix layout's shared negatives sit on a batch's last row).
BATCH_KEY = "_negseq_batch"
DESCRIPTORS_PER_TASK = 4  # amortizes Ray Data's per-task overhead over several batches


@dataclass(frozen=True)
class ActorPool:
    """Sampler actor pool size and resources. Ray Data gives pool actors `max_restarts=-1` and
    `max_task_retries=-1`: a dead actor is restarted and its batches are retried."""

    min_size: int = 1
    max_size: int = 2
    num_cpus: float = 1.0

    def strategy(self) -> ray.data.ActorPoolStrategy:
        return ray.data.ActorPoolStrategy(min_size=self.min_size, max_size=self.max_size)


class SampleAndCombine:
    """Ray Data callable class: state (sampler, source table) fetched once in `__init__`;
    `__call__` samples the descriptor batches it is given, a pure function of them."""

    def __init__(
        self,
        sampler_ref: ray.ObjectRef,
        source_ref: ray.ObjectRef,
        plan: SamplingPlan,
        out_dir: str | None = None,
        out_format: str = "parquet",
    ) -> None:
        self.sampler = ray.get(sampler_ref)
        self.source: pa.Table = ray.get(source_ref)
        self.plan = plan
        self.out_dir = out_dir
        self.out_format = out_format

    def sample(self, epoch: int, batch_index: int) -> tuple[pa.Table, dict[str, int], int]:
        batch = self.plan.batch(self.source, batch_index)
        out, stats = sample_candidates_and_stats(
            batch,
            self.sampler,
            layout=self.plan.layout,
            neg_per_pos=self.plan.neg_per_pos,
            seq_delim=self.plan.seq_delim,
            epoch=epoch,
            batch_index=batch_index,
            training=self.plan.training,
        )
        return pa.Table.from_batches([out]), stats, batch.num_rows

    def __call__(self, descriptors: pa.Table) -> pa.Table:
        epochs = descriptors.column(EPOCH).to_pylist()
        indices = descriptors.column(BATCH_INDEX).to_pylist()
        if self.out_dir is None:  # streaming to a trainer: the sampled rows, keyed by batch
            tables = []
            for epoch, index in zip(epochs, indices, strict=True):
                out = self.sample(epoch, index)[0]
                key = pa.array(np.full(out.num_rows, (epoch << 32) | index, np.int64))
                tables.append(out.append_column(BATCH_KEY, key))
            return pa.concat_tables(tables)
        rows = []
        for epoch, index in zip(epochs, indices, strict=True):
            out, stats, rows_in = self.sample(epoch, index)
            path = write_batch_output(self.out_dir, index, out, self.out_format)
            rows.append(
                {
                    BATCH_INDEX: index,
                    "name": path.name,
                    "rows_in": rows_in,
                    "rows_out": out.num_rows,
                    "schema": out.schema.serialize().to_pybytes(),
                    **{f"{STAT_PREFIX}{k}": int(v) for k, v in stats.items()},
                }
            )
        return pa.Table.from_pylist(rows)


def _sampled(
    epochs: list[int], num_batches: int, pool: ActorPool, per_task: int, **actor_kwargs: Any
) -> ray.data.Dataset:
    """`SampleAndCombine(**actor_kwargs)` on the actor pool over every (epoch, batch_index),
    `per_task` descriptors a task."""
    descriptors = ray.data.from_items(
        [{EPOCH: e, BATCH_INDEX: i} for e in epochs for i in range(num_batches)],
        override_num_blocks=max(1, min(len(epochs) * num_batches, 200)),
    )
    return descriptors.map_batches(
        SampleAndCombine,
        fn_constructor_kwargs=actor_kwargs,
        compute=pool.strategy(),
        batch_size=per_task,
        batch_format="pyarrow",
        num_cpus=pool.num_cpus,
    )


def sampled_dataset(
    sampler_ref: ray.ObjectRef,
    source_ref: ray.ObjectRef,
    num_rows: int,
    plan: SamplingPlan,
    pool: ActorPool,
    *,
    epochs: list[int],
) -> ray.data.Dataset:
    """Sampled rows of every (epoch, batch_index), for a trainer; cut them back into batches
    with `split_sampled_batches`."""
    return _sampled(
        epochs,
        plan.num_batches(num_rows),
        pool,
        DESCRIPTORS_PER_TASK,
        sampler_ref=sampler_ref,
        source_ref=source_ref,
        plan=plan,
    )


def split_sampled_batches(block: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """(key, batch) for the sampled batches in a block of `sampled_dataset`, whole and in order;
    key = epoch << 32 | batch_index, the key column dropped from the batch."""
    keys = block.column(BATCH_KEY).to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    ends = np.append(starts[1:], len(keys))
    body = block.drop_columns([BATCH_KEY])
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        yield int(keys[start]), body.slice(start, end - start)


def write_sampled_outputs(
    sampler_ref: ray.ObjectRef,
    source_ref: ray.ObjectRef,
    out_dir: str | Path,
    plan: SamplingPlan,
    pool: ActorPool,
    *,
    seed: int,
    epoch: int = 0,
    out_format: str = "parquet",
    config_hash: str = "",
) -> dict[str, Any]:
    """Sample every batch of the source table on the actor pool, one file a batch, manifest last.

    `sampler_ref` and `source_ref` are `ray.put` results, shared with any later dataset;
    `seed` is the sampler's, for the manifest (the driver need not fetch the sampler back)."""
    source_rows = ray.get(source_ref).num_rows
    out_dir = Path(out_dir).resolve()
    output_name(0, out_format)  # reject an unknown format before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_manifest(out_dir)
    num_batches = plan.num_batches(source_rows)
    summaries = _sampled(
        [epoch],
        num_batches,
        pool,
        1,
        sampler_ref=sampler_ref,
        source_ref=source_ref,
        plan=plan,
        out_dir=str(out_dir),
        out_format=out_format,
    ).to_arrow_refs()
    table = pa.concat_tables(ray.get(summaries)).sort_by(BATCH_INDEX)
    entries = table.to_pylist()
    indices = [e[BATCH_INDEX] for e in entries]
    if indices != list(range(num_batches)):
        raise NegseqError(f"the actor pool returned batches {indices}, expected 0..{num_batches - 1}")
    schemas = {e["schema"] for e in entries}
    if len(schemas) > 1:
        raise NegseqError("sampled batches disagree on their output schema")
    files, totals = manifest_files_and_stats(entries)
    schema = pa.ipc.read_schema(pa.py_buffer(entries[0]["schema"])) if entries else None
    write_manifest(
        out_dir,
        rows_in=source_rows,
        files=files,
        schema=schema,
        seed=seed,
        config_hash=config_hash,
        extra={"format": out_format, "layout": plan.layout, "epoch": epoch, "sampler_stats": totals},
    )
    return {"files": files, "rows_in": source_rows, "rows_out": sum(f["rows_out"] for f in files)}
