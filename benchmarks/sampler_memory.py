"""Memory of one sampler replica, for the sizing table in docs/deploy.md.

Builds an ItemTable and a NegativeSampler for N items with two attributes (a short string title,
an int32 category) and prints JSON: process RSS before/after, the size Ray's object store holds
for each (pickle protocol 5 with out-of-band buffers, as `ray.put` stores it) and, with --ray,
the plasma usage Ray itself reports after `ray.put(sampler)`.

    PYTHONPATH=src python benchmarks/sampler_memory.py --items 1000000 --ray
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import time

import numpy as np
import pyarrow as pa

from negseq.sampler import ItemTable, NegativeSampler


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def object_store_mb(obj: object) -> float:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return (len(head) + sum(b.raw().nbytes for b in buffers)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--ray", action="store_true", help="also ray.put the sampler and report plasma usage")
    args = parser.parse_args()

    baseline = rss_mb()
    rng = np.random.default_rng(0)
    ids = rng.permutation(args.items * 4)[: args.items].astype(np.int64)
    table = pa.table(
        {
            "id": ids,
            "weight": rng.random(args.items) + 0.01,
            "title": pa.array([f"item-{i}" for i in ids]),
            "cate": pa.array(ids % 1000, pa.int32()),
        }
    )
    start = time.perf_counter()
    items = ItemTable.from_arrow(table)
    built_items = time.perf_counter()
    sampler = NegativeSampler(items, num_sample=1024, attr_fields=["title", "cate"], item_id_field="item_id")
    built_sampler = time.perf_counter()
    assert len(sampler.get({"item_id": pa.array(ids[:4096])}).ids) == 1024
    input_mb = table.nbytes / 2**20
    del table
    result = {
        "items": args.items,
        "input_arrow_mb": round(input_mb, 1),
        "rss_baseline_mb": round(baseline, 1),
        "rss_after_mb": round(rss_mb(), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "object_store_itemtable_mb": round(object_store_mb(items), 1),
        "object_store_sampler_mb": round(object_store_mb(sampler), 1),
        "build_itemtable_s": round(built_items - start, 2),
        "build_sampler_s": round(built_sampler - built_items, 2),
    }
    if args.ray:
        import ray
        from ray._private.internal_api import memory_summary

        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        ref = ray.put(sampler)
        gcs = ray.get_runtime_context().gcs_address
        lines = memory_summary(address=gcs, stats_only=True).splitlines()
        result["ray_plasma"] = [line.strip() for line in lines if "Plasma memory usage" in line]
        del ref
        ray.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
