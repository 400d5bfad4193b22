"""Where one NegativeSampler call spends its time, stage by stage, on the 1M-item bench tables.

    python benchmarks/sampler_call_parts.py [--ef 8] [--calls 200] [--cpu 0]

Times each stage of `NegativeSampler.get` on its own, with the sampler's own pieces and
the same batches as `sampler_bench.py`: the positives' id lookup, their row bitmap, the
draw kernel (draws and redraw rounds), and the gather of the ids and of each attribute
column; then whole `get` calls. Prints one JSON object: the median milliseconds of each
stage and of the whole call, and the call time 15M negatives/s would allow. The tables are
`sampler_bench.py`'s (generated here when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data  # noqa: E402  (sibling script)
import sampler_bench  # noqa: E402  (sibling script)

from negseq import sampler as ns  # noqa: E402
from negseq.sampler import gather, kernels  # noqa: E402

TARGET_NEGATIVES_PER_S = 15e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ef", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--cpu", type=int, default=0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    data = bench_data.ensure(bench_data.BenchDataSpec(), log=lambda message: print(message, file=sys.stderr))
    items, _, _ = sampler_bench.read_tables(data)
    num_sample = args.batch * args.ef
    sampler = ns.NegativeSampler(
        items,
        num_sample=num_sample,
        attr_fields=sampler_bench.ATTR_FIELDS,
        item_id_field=sampler_bench.ITEM_ID_FIELD,
    )
    batches = sampler_bench.query_batches(data, args.batch, 16)
    no_pool = np.empty(0, np.int32)
    times: dict[str, list[float]] = {}

    def timed(stage: str, started: float) -> float:
        now = time.perf_counter()
        times.setdefault(stage, []).append(now - started)
        return now

    for k in range(args.calls + 10):  # the first 10 calls warm up (numba compiles) and are dropped
        batch = batches[k % len(batches)]
        positives = batch.column(sampler_bench.ITEM_ID_FIELD).to_numpy()
        started = time.perf_counter()
        positive_rows = items.rows(positives)
        started = timed("positives id lookup", started)
        excluded = kernels.row_bitmap(positive_rows, len(items))
        started = timed("positives bitmap", started)
        rows = np.empty(num_sample, np.int64)
        kernels.draw_excluding_rows(
            rows, sampler._alias, no_pool, excluded, np.uint64(0), np.uint64(k), sampler.max_retries
        )
        started = timed("draw kernel", started)
        ids = gather.take_numpy(items.ids, rows)
        started = timed("gather ids", started)
        items.attributes(rows, sampler.attr_fields, sampler.item_id_field, ids)
        timed("gather attributes", started)
        started = time.perf_counter()
        sampler.get(batch, batch_index=k)
        timed("whole get", started)
    medians = {stage: round(statistics.median(t[10:]) * 1e3, 3) for stage, t in times.items()}
    parts = sum(v for stage, v in medians.items() if stage != "whole get")
    print(
        json.dumps(
            {
                "bench": "sampler_call_parts",
                "negatives_per_call": num_sample,
                "median_ms": medians,
                "sum_of_parts_ms": round(parts, 3),
                "negatives_per_s": round(num_sample / (medians["whole get"] / 1e3)),
                "call_ms_at_15M_per_s": round(num_sample / TARGET_NEGATIVES_PER_S * 1e3, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
