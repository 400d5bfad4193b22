"""The Ray path against the in-process executor on the same CPUs. Prints one JSON object a line:

- {"bench": "sampling", ...}: steady rows/s of sampled batches collated for training (what the
  trainer consumes), the local executor (2 threads) against the Ray actor pool (1 and 2 actors),
  medians of --repeats runs, each after its first batch arrived (start-up apart);
- {"bench": "job", ...}: the wall time of `negseq run` on a job file on the embedded Ray and with
  `[ray] executor = "local"`, and the trainer's data-wait fraction on each (`make run`'s job by
  default), with the wait for the first batch (the data path's start-up) apart;
- {"bench": "two_step_job", ...}: the wall time of a 2-step job on 50 synthetic users on the
  embedded Ray (the fixed cost of the Ray path).

Every line carries the host's load average when it was measured.

    python benchmarks/ray_bench.py [--rows 20000] [--repeats 3] [--job examples/synthetic.toml]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negseq.candidates import CandidateSpec
from negseq.executors.local import LocalExecutor
from negseq.executors.plan import BatchWork, Collation, SamplingPlan
from negseq.executors.ray_data import ActorPool, sampled_dataset
from negseq.executors.ray_logs import quiet_ray
from negseq.io.prepare import prepare_sequences
from negseq.io.sources import Source
from negseq.sampler import ItemTable, NegativeSampler
from negseq.synthetic import generate_interactions

NEG_PER_POS = 32
BATCH = 256
REPO = Path(__file__).resolve().parents[1]
TWO_STEP_JOB = """
name = "two_step"
[data.synthetic]
num_users = 50
num_items = 100
min_len = 4
max_len = 10
[data]
max_seq_len = 10
[sampler.negative_sampler]
num_sample = 4
[candidates]
neg_per_pos = 4
batch_size = 16
[model]
embedding_dim = 16
num_layers = 1
[train]
epochs = 1
max_steps = 2
[output]
dir = "{out}"
write_samples = false
"""


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _work(rows: int, folder: Path) -> BatchWork:
    log = generate_interactions(num_users=rows, num_items=5000, min_len=10, max_len=40, seed=1)
    train = prepare_sequences(
        log, user_field="user_id", item_field="item_id", time_field="timestamp", max_seq_len=50
    ).train
    pq.write_table(train, folder / "train.parquet")
    items = ItemTable.from_arrow(pa.table({"id": pa.array(sorted(set(log.column("item_id").to_pylist())))}))
    sampler = NegativeSampler(items, num_sample=NEG_PER_POS, item_id_field="next_items")
    plan = SamplingPlan(
        Source.open(str(folder / "train.parquet")), BATCH, CandidateSpec(neg_per_pos=NEG_PER_POS)
    )
    return BatchWork(sampler, plan, collate=Collation(items, max_seq_len=50))


def _steady_rate(batches, rows_of) -> float:
    """Rows/s after the first batch arrived."""
    iterator = iter(batches)
    next(iterator)
    start, rows = time.perf_counter(), 0
    for batch in iterator:
        rows += rows_of(batch)
    return rows / (time.perf_counter() - start)


def _local_rate(work: BatchWork) -> float:
    return _steady_rate(LocalExecutor(work, num_workers=2).run(0), lambda arrays: arrays.num_rows)


def _ray_rate(work: BatchWork, actors: int) -> float:
    dataset = sampled_dataset(work, ActorPool(actors, actors, 0.5), work.plan.keys())
    blocks = dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=4)
    return _steady_rate(
        blocks, lambda block: pc.sum(pc.list_value_length(block.column("cand_pos_lengths"))).as_py()
    )


def bench_sampling(rows: int, repeats: int) -> list[dict]:
    import ray

    quiet_ray()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        work = _work(rows, Path(folder))
        local = statistics.median(_local_rate(work) for _ in range(repeats))
        lines.append({"bench": "sampling", "executor": "local", "threads": 2, "rows_per_s": round(local)})
        for actors in (1, 2):
            steady = statistics.median(_ray_rate(work, actors) for _ in range(repeats))
            lines.append(
                {
                    "bench": "sampling",
                    "executor": "ray",
                    "actors": actors,
                    "rows_per_s": round(steady),
                    "ratio_to_local": round(steady / local, 3),
                }
            )
        for line in lines:
            line.update(rows=work.plan.source.num_rows, batch_size=BATCH, load=_load())
    ray.shutdown()
    return lines


def _run_job(job: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "negseq.cli", "run", "--quiet", str(job)], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def _toml(table: dict, prefix: str = "") -> str:
    """A job dict as TOML (scalars and lists of scalars; tables nest)."""
    scalars = [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    body = "\n".join(([f"[{prefix}]"] if prefix and scalars else []) + scalars) + "\n"
    for key, value in table.items():
        if isinstance(value, dict):
            body += _toml(value, f"{prefix}.{key}" if prefix else key)
    return body


def bench_job(job: Path, folder: Path) -> dict:
    """`negseq run` of `job` on the embedded Ray and on the local executor, output in `folder`."""
    raw = tomllib.loads(job.read_text())
    walls, waits = {}, {}
    for executor in ("ray", "local"):
        variant = dict(raw, ray={**raw.get("ray", {}), "executor": executor})
        variant["output"] = {**raw.get("output", {}), "dir": str(folder / executor)}
        if "interactions" in variant.get("data", {}):  # relative to the original job file
            variant["data"] = {
                **variant["data"],
                "interactions": str(job.parent / variant["data"]["interactions"]),
            }
        path = folder / f"{executor}.toml"
        path.write_text(_toml(variant))
        walls[executor], _ = _run_job(path)
        train = json.loads((folder / executor / "metrics.json").read_text())["train"]
        first = train["first_batch_wait_seconds"]
        waits[executor] = {
            "data_wait_fraction": round(train["data_wait_fraction"], 3),
            "first_batch_wait_s": round(first, 2),
            "after_first_batch_wait_fraction": round(
                (train["data_wait_seconds"] - first) / (train["train_seconds"] - first), 3
            ),
        }
    return {
        "bench": "job",
        "job": str(job),
        "ray_wall_s": round(walls["ray"], 1),
        "local_wall_s": round(walls["local"], 1),
        "wall_ratio": round(walls["ray"] / walls["local"], 2),
        "ray_data_wait": waits["ray"],
        "local_data_wait": waits["local"],
        "load": _load(),
    }


def bench_two_step(folder: Path) -> dict:
    job = folder / "two_step.toml"
    job.write_text(TWO_STEP_JOB.format(out=folder / "two_step"))
    wall, _ = _run_job(job)
    return {"bench": "two_step_job", "wall_s": round(wall, 1), "load": _load()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000, help="users in the synthetic sampling input")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job", type=Path, default=REPO / "examples" / "synthetic.toml")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sampling", "job", "two_step"])
    args = parser.parse_args()
    lines = []
    if "sampling" not in args.skip:
        lines += bench_sampling(args.rows, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        if "two_step" not in args.skip:
            lines.append(bench_two_step(Path(folder)))
        if "job" not in args.skip:
            lines.append(bench_job(args.job.resolve(), Path(folder)))
    for line in lines:
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
