"""Candidate-sequence throughput: the vectorized combines against a TorchEasyRec-style row loop,
and `negseq sample` end to end. Prints one JSON object a line; medians over --reps runs.

    PYTHONPATH=src python benchmarks/pipeline_bench.py [--rows 1000000] [--reps 7] [--skip-e2e]

Combines run pinned to one core (os.sched_setaffinity) with Arrow on one thread; the end-to-end
run uses the cores given by --e2e-cores (default 2) and --workers threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negseq.candidates import combine_neg_as_candidate_sequence, combine_negs_to_candidate_suffix

NUM_ITEMS = 1_000_000


def baseline_interleaved(pos_data: pa.Array, neg_ids: pa.Array, n: int, delim: str) -> pa.Array:
    """The row loop as TorchEasyRec writes its interleaved combine: cast the negatives to
    strings, split the positives, then per row and positive slice the negatives and join."""
    negs = pc.cast(neg_ids, pa.string()).to_pylist()
    rows = pc.split_pattern(pos_data, delim).to_pylist()
    out = []
    q = 0
    for row in rows:
        if row is None:
            out.append(None)
            continue
        parts = []
        for pos in row:
            parts.append(pos)
            parts.extend(negs[q * n : (q + 1) * n])
            q += 1
        out.append(delim.join(parts))
    return pa.array(out, type=pa.string())


def baseline_suffix(pos_data: pa.Array, neg_ids: pa.Array, delim: str) -> pa.Array:
    """TorchEasyRec master's suffix combine as a loop: all rows copied, the last one extended."""
    rows = pos_data.to_pylist()
    rows[-1] = delim.join([rows[-1], *pc.cast(neg_ids, pa.string()).to_pylist()])
    return pa.array(rows, type=pa.string())


def positives(batch: int, rng: np.random.Generator) -> tuple[list[list[int]], int]:
    counts = rng.integers(1, 9, batch)
    ids = rng.integers(1, NUM_ITEMS, counts.sum())
    splits = np.split(ids, np.cumsum(counts)[:-1])
    return [s.tolist() for s in splits], int(counts.sum())


def median_time(fn, reps: int) -> float:
    fn()  # warm up (numba compile, caches)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def emit_timing(bench: str, column: str, seconds: float, common: dict, loop_s: float | None = None) -> None:
    """One combine timing; `ratio_vs_loop` when compared with the row loop's `loop_s`."""
    ratio = {} if loop_s is None else {"ratio_vs_loop": loop_s / seconds}
    emit(
        bench=bench,
        column=column,
        median_s=seconds,
        tokens_per_s=common["tokens"] / seconds,
        **ratio,
        **common,
    )


def bench_combines(batch: int, neg_per_pos: int, shared: int, reps: int) -> None:
    rng = np.random.default_rng(0)
    rows, num_pos = positives(batch, rng)
    strings = pa.array([";".join(map(str, r)) for r in rows], pa.string())
    lists = pa.array(rows, pa.list_(pa.int64()))
    negs = rng.integers(1, NUM_ITEMS, num_pos * neg_per_pos)
    neg_arrow = pa.array(negs)
    tokens = num_pos * (1 + neg_per_pos)

    expected = baseline_interleaved(strings, neg_arrow, neg_per_pos, ";")
    assert combine_neg_as_candidate_sequence(strings, negs, neg_per_pos)[0].equals(expected)
    base = median_time(lambda: baseline_interleaved(strings, neg_arrow, neg_per_pos, ";"), reps)
    cast_only = median_time(lambda: pc.cast(neg_arrow, pa.string()), reps)
    ours = median_time(lambda: combine_neg_as_candidate_sequence(strings, negs, neg_per_pos), reps)
    ours_list = median_time(lambda: combine_neg_as_candidate_sequence(lists, negs, neg_per_pos), reps)
    common = {"rows": batch, "positives": num_pos, "neg_per_pos": neg_per_pos, "tokens": tokens}
    emit_timing("interleaved_baseline_loop", "string", base, common)
    emit(bench="arrow_int_to_string_cast", median_s=cast_only, share_of_loop=cast_only / base, **common)
    emit_timing("interleaved_combine", "string", ours, common, loop_s=base)
    emit_timing("interleaved_combine", "list", ours_list, common, loop_s=base)

    shared_negs = rng.integers(1, NUM_ITEMS, shared)
    shared_arrow = pa.array(shared_negs)
    suffix_tokens = num_pos + shared
    assert combine_negs_to_candidate_suffix(strings, shared_negs)[0].equals(
        baseline_suffix(strings, shared_arrow, ";")
    )
    base_s = median_time(lambda: baseline_suffix(strings, shared_arrow, ";"), reps)
    ours_s = median_time(lambda: combine_negs_to_candidate_suffix(strings, shared_negs), reps)
    ours_sl = median_time(lambda: combine_negs_to_candidate_suffix(lists, shared_negs), reps)
    common = {"rows": batch, "positives": num_pos, "shared_negatives": shared, "tokens": suffix_tokens}
    emit_timing("suffix_baseline_loop", "string", base_s, common)
    emit_timing("suffix_combine", "string", ours_s, common, loop_s=base_s)
    emit_timing("suffix_combine", "list", ours_sl, common, loop_s=base_s)


JOB = """
[input]
path = "input.parquet"
batch_size = {batch_size}

[sampler.negative_sampler]
input_path = "items.parquet"
num_sample = {num_sample}
item_id_field = "item_id"
seed = 0

[candidates]
layout = "{layout}"

[output]
path = "out"
format = "parquet"

[run]
workers = {workers}
"""


def bench_end_to_end(rows: int, workers: int, batch_size: int, num_sample: int, reps: int) -> None:
    from negseq.cli import main

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        pq.write_table(
            pa.table({"id": np.arange(1, NUM_ITEMS + 1), "weight": rng.random(NUM_ITEMS) + 0.01}),
            tmp_path / "items.parquet",
        )
        item_ids = rng.integers(1, NUM_ITEMS + 1, rows)
        pq.write_table(
            pa.table({"user_id": rng.integers(0, rows // 10, rows), "item_id": item_ids}),
            tmp_path / "input.parquet",
        )
        strings = pa.array(item_ids.astype(str), pa.string())
        pq.write_table(
            pa.table({"user_id": rng.integers(0, rows // 10, rows), "item_id": strings}),
            tmp_path / "input_str.parquet",
        )
        for layout, column, source in (
            ("interleaved", "int64", "input.parquet"),
            ("interleaved", "string", "input_str.parquet"),
        ):
            job = tmp_path / "job.toml"
            job.write_text(
                JOB.format(batch_size=batch_size, num_sample=num_sample, layout=layout, workers=workers)
            )
            argv = ["sample", str(job), "--quiet", "--input", str(tmp_path / source)]
            times, cpu = [], []
            for _ in range(reps):
                t, c = time.perf_counter(), time.process_time()
                assert main(argv) == 0
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
            assert manifest["rows_out"] == rows
            median = statistics.median(times)
            out_bytes = sum(p.stat().st_size for p in (tmp_path / "out").glob("part-*"))
            emit(
                bench="negseq_sample_end_to_end",
                layout=layout,
                column=column,
                rows=rows,
                neg_per_pos=num_sample,
                workers=workers,
                batch_size=batch_size,
                cores=len(os.sched_getaffinity(0)),
                median_s=median,
                rows_per_s=rows / median,
                runs_s=times,
                cpu_s=statistics.median(cpu),
                load_avg_1m=os.getloadavg()[0],
                output_mb=out_bytes / 2**20,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--neg-per-pos", type=int, default=32)
    parser.add_argument("--shared", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--e2e-reps", type=int, default=3)
    parser.add_argument("--e2e-cores", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--e2e-batch-size", type=int, default=32768)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()

    all_cores = sorted(os.sched_getaffinity(0))
    emit(
        bench="machine",
        platform=platform.platform(),
        python=platform.python_version(),
        cpus_available=len(all_cores),
        pyarrow=pa.__version__,
        numpy=np.__version__,
        load_avg_1m=os.getloadavg()[0],
    )
    os.sched_setaffinity(0, all_cores[:1])
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    bench_combines(args.batch, args.neg_per_pos, args.shared, args.reps)
    if not args.skip_e2e:
        os.sched_setaffinity(0, all_cores[: args.e2e_cores])
        pa.set_cpu_count(args.e2e_cores)
        pa.set_io_thread_count(args.e2e_cores)
        bench_end_to_end(args.rows, args.workers, args.e2e_batch_size, args.neg_per_pos, args.e2e_reps)


if __name__ == "__main__":
    main()
