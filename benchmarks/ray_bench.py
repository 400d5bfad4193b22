"""Ray sampling stage vs the local executor on the same input, and whether the trainer waits on data.

Prints one JSON object a line:
- {"bench": "sampling", "executor": "local"|"ray", "actors": n, "rows_per_s": ...} (median of
  --repeats runs over the same prepared rows; the Ray figure includes the dataset's start-up);
- {"bench": "trainer", "data_wait_fraction": ...}: a short Ray Train run fed by the actor pool;
  the fraction of step time spent blocked on the data iterator.

    python benchmarks/ray_bench.py [--rows 20000] [--repeats 3] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import pyarrow as pa
import ray

from negseq.pipeline.local_executor import LocalExecutor
from negseq.pipeline.plans import SamplingPlan, TrainSettings
from negseq.pipeline.ray_executor import ActorPool, sampled_dataset, split_sampled_batches
from negseq.pipeline.ray_trainer import fit
from negseq.pipeline.sequences import prepare_sequences
from negseq.sampler import ItemTable, NegativeSampler
from negseq.synthetic import generate_interactions

NEG_PER_POS = 32
BATCH = 256
PLAN = SamplingPlan(batch_size=BATCH, layout="interleaved", neg_per_pos=NEG_PER_POS)


def _inputs(rows: int) -> tuple[pa.Table, NegativeSampler]:
    log = generate_interactions(num_users=rows, num_items=5000, min_len=10, max_len=40, seed=1)
    train, _ = prepare_sequences(
        log, user_field="user_id", item_field="item_id", time_field="timestamp", max_seq_len=50
    )
    ids = np.unique(log.column("item_id").to_numpy())
    items = ItemTable.from_arrow(pa.table({"id": ids}))
    return train, NegativeSampler(items, num_sample=NEG_PER_POS, item_id_field="next_items")


def _local_rate(train: pa.Table, sampler: NegativeSampler) -> float:
    executor = LocalExecutor(sampler, layout="interleaved", neg_per_pos=NEG_PER_POS, num_workers=2)
    start = time.perf_counter()
    rows = sum(b.num_rows for b in executor.iter_sampled(train.to_batches(max_chunksize=BATCH)))
    return rows / (time.perf_counter() - start)


def _ray_rate(train: pa.Table, sampler_ref, source_ref, actors: int) -> tuple[float, float]:
    """(rows/s including the pool's start-up, rows/s after the first batch arrived)."""
    pool = ActorPool(min_size=actors, max_size=actors, num_cpus=0.5)
    start = time.perf_counter()
    dataset = sampled_dataset(sampler_ref, source_ref, train.num_rows, PLAN, pool, epochs=[0])
    rows, first, first_at = 0, 0, 0.0
    for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        size = sum(b.num_rows for _, b in split_sampled_batches(block))
        if not rows:
            first, first_at = size, time.perf_counter()
        rows += size
    end = time.perf_counter()
    return rows / (end - start), (rows - first) / (end - first_at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    train, sampler = _inputs(args.rows)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    sampler_ref, source_ref = ray.put(sampler), ray.put(train)
    lines = []
    local = statistics.median(_local_rate(train, sampler) for _ in range(args.repeats))
    lines.append(
        {
            "bench": "sampling",
            "executor": "local",
            "threads": 2,
            "rows": train.num_rows,
            "rows_per_s": round(local),
        }
    )
    for actors in (1, 2):
        runs = [_ray_rate(train, sampler_ref, source_ref, actors) for _ in range(args.repeats)]
        with_startup = statistics.median(r[0] for r in runs)
        steady = statistics.median(r[1] for r in runs)
        lines.append(
            {
                "bench": "sampling",
                "executor": "ray",
                "actors": actors,
                "rows": train.num_rows,
                "rows_per_s": round(with_startup),
                "steady_rows_per_s": round(steady),
                "ratio_to_local": round(with_startup / local, 3),
                "steady_ratio_to_local": round(steady / local, 3),
            }
        )
    dataset = sampled_dataset(sampler_ref, source_ref, train.num_rows, PLAN, ActorPool(1, 2, 0.5), epochs=[0])
    settings = TrainSettings(
        model={
            "num_items": len(sampler.items),
            "embedding_dim": 64,
            "num_layers": 2,
            "max_seq_len": 50,
            "layout": "interleaved",
            "objective": "autoregressive",
        },
        candidate_field="next_items",
        checkpoint_every=10_000,
        max_steps=args.train_steps,
    )
    _, metrics = fit(
        settings, dataset, sampler.items, storage_path="runs/ray_bench", name="bench", use_gpu=False
    )
    lines.append(
        {
            "bench": "trainer",
            "steps": metrics["step"],
            "train_seconds": round(metrics["train_seconds"], 2),
            "data_wait_seconds": round(metrics["data_wait_seconds"], 2),
            "data_wait_fraction": round(metrics["data_wait_fraction"], 3),
        }
    )
    ray.shutdown()
    for line in lines:
        print(json.dumps(line))
    if not args.quiet:
        print("\n".join(f"# {json.dumps(line)}" for line in lines), file=sys.stderr)


if __name__ == "__main__":
    main()
