"""graph-learn 1.1.0 baseline for the sampler benchmark (runs in the Python 3.9 venv).

It loads the benchmark tables the way TorchEasyRec's samplers do (tzrec/datasets/sampler.py:
one gl.Graph with the user and item nodes, the positive and hard-negative edges, local
mode), then times graph-learn's samplers on the same query batches as negseq:

- NegativeSampler:       negative_sampler("item", ef, strategy="node_weight")
- NegativeSamplerV2:     negative_sampler("edge", ef, strategy="random", conditional=True)
- HardNegativeSampler:   node_weight + neighbor_sampler(["hard_neg_edge"], k, strategy="full")
- HardNegativeSamplerV2: conditional edge + the same full neighbour sampler
- hard_lookup:           the full neighbour sampler alone

Each call gathers the ids and the attributes (int and string) of what it drew; TorchEasyRec
converts those further (utf-8 decode, Arrow arrays), which is not timed here, so the
graph-learn numbers are an upper bound on what TorchEasyRec gets.

`--alias` instead draws from a 5-item table with weights 1..5 and prints the frequencies,
to show graph-learn's alias-table bug. One JSON object on stdout in every case; failures
are reported in it ("status": "error"), never as a traceback alone.

This file must stay Python 3.9 compatible and import only graph-learn and numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import traceback

import numpy as np

SAMPLERS = ("NegativeSampler", "NegativeSamplerV2", "HardNegativeSampler", "HardNegativeSamplerV2")


def rss_mib() -> float:
    """Peak resident set size of this process image so far, in MiB: VmHWM, which a process
    started by exec begins afresh. (getrusage's ru_maxrss is kept across exec: a child started
    by a large benchmark process reports at least the parent's size, so both sides of the load
    line once read the same number.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_graph(gl, data_dir: str, attr_types: list[str], attr_delimiter: str):
    """The graph of TorchEasyRec's HardNegativeSamplerV2: every table the four samplers use."""

    def path(name: str) -> str:
        return os.path.join(data_dir, name + ".tsv")

    return (
        gl.Graph()
        .node(path("users"), node_type="user", decoder=gl.Decoder(weighted=True))
        .node(
            path("items"),
            node_type="item",
            decoder=gl.Decoder(attr_types=attr_types, weighted=True, attr_delimiter=attr_delimiter),
        )
        .edge(path("pos_edges"), edge_type=("user", "item", "edge"), decoder=gl.Decoder(weighted=True))
        .edge(
            path("hard_edges"), edge_type=("user", "item", "hard_neg_edge"), decoder=gl.Decoder(weighted=True)
        )
    )


def gather(nodes) -> int:
    """Touch ids and attributes as TorchEasyRec's _parse_nodes does; returns the row count."""
    ids = nodes.ids
    _ = nodes.int_attrs
    _ = nodes.string_attrs
    return int(np.size(ids))


class GraphLearnCalls:
    """One callable a sampler: call(users, items) -> number of negative rows produced."""

    def __init__(self, g, ef: int, num_hard: int) -> None:
        self.node_weight = g.negative_sampler("item", ef, strategy="node_weight")
        self.conditional = g.negative_sampler("edge", ef, strategy="random", conditional=True)
        self.full = g.neighbor_sampler(["hard_neg_edge"], num_hard, strategy="full")

    def hard(self, users: np.ndarray) -> int:
        nodes = self.full.get(users).layer_nodes(1)
        _ = nodes.indices
        return gather(nodes)

    def call(self, sampler: str, users: np.ndarray, items: np.ndarray) -> dict[str, int]:
        if sampler == "hard_lookup":
            return {"hard": self.hard(users)}
        if sampler in ("NegativeSampler", "HardNegativeSampler"):
            rows = {"negatives": gather(self.node_weight.get(items))}
        else:
            rows = {"negatives": gather(self.conditional.get(users, items))}
        if sampler.startswith("Hard"):
            rows["hard"] = self.hard(users)
        return rows


def time_sampler(calls: GraphLearnCalls, sampler: str, batches: list, reps: int) -> dict:
    calls.call(sampler, *batches[0])  # warm-up: alias tables and lookups are built lazily
    seconds, cpu_seconds, rows = [], [], {}
    for _ in range(reps):
        rows = {}
        started, cpu_started = time.perf_counter(), time.process_time()
        for users, items in batches:
            for kind, n in calls.call(sampler, users, items).items():
                rows[kind] = rows.get(kind, 0) + n
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    return rates(seconds, cpu_seconds, rows, len(batches))


def rates(seconds: list, cpu_seconds: list, rows: dict, calls_per_rep: int) -> dict:
    """Rows / median wall seconds, and rows / median CPU seconds of the process (all threads).

    On one pinned core the CPU-time rate is what the code sustains while it runs; the
    wall rate also counts time other processes held the core.
    """
    median, median_cpu = float(np.median(seconds)), float(np.median(cpu_seconds))
    result = {
        "seconds": [round(s, 5) for s in seconds],
        "median_s": round(median, 5),
        "cpu_seconds": [round(s, 5) for s in cpu_seconds],
        "median_cpu_s": round(median_cpu, 5),
        "calls_per_rep": calls_per_rep,
        "rows_per_rep": rows,
    }
    for kind, n in rows.items():
        result[f"{kind}_per_s"] = n / median
        result[f"{kind}_per_cpu_s"] = n / median_cpu
    result["rows_per_s"] = sum(rows.values()) / median
    result["rows_per_cpu_s"] = sum(rows.values()) / median_cpu
    return result


def run_bench(args: argparse.Namespace, gl) -> dict:
    manifest = json.loads(open(os.path.join(args.data, "manifest.json")).read())
    if hasattr(gl, "set_load_graph_thread_num"):  # newer builds; TorchEasyRec sets 1 a client
        gl.set_load_graph_thread_num(1)
    baseline_rss = current_rss_mib()
    started, cpu_started = time.perf_counter(), time.process_time()
    g = build_graph(gl, args.data, manifest["attr_gl_types"], manifest["attr_delimiter"])
    g.init()
    load = {
        "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(time.process_time() - cpu_started, 3),
        "peak_rss_mib": round(rss_mib(), 1),
        "rss_before_mib": round(baseline_rss, 1),
        "rows": manifest["rows"],
    }
    queries = np.load(os.path.join(args.data, "queries.npz"))
    users, items = queries["userid"], queries["itemid"]
    bounds = [(i * args.batch, (i + 1) * args.batch) for i in range(args.calls)]
    batches = [(users[lo:hi], items[lo:hi]) for lo, hi in bounds]
    results = []
    try:
        for ef in args.ef:
            calls = GraphLearnCalls(g, ef, args.num_hard)
            for sampler in SAMPLERS + ("hard_lookup",):
                if sampler == "hard_lookup" and ef != args.ef[0]:
                    continue  # independent of ef
                entry = {
                    "sampler": sampler,
                    "ef": None if sampler == "hard_lookup" else ef,
                    "batch": args.batch,
                }
                try:
                    entry.update(time_sampler(calls, sampler, batches, args.reps))
                except Exception as error:  # report and go on with the other samplers
                    entry.update(status="error", error=f"{type(error).__name__}: {error}")
                results.append(entry)
                log(args, entry)
    finally:
        g.close()
    return {"load": load, "results": results}


def run_alias(args: argparse.Namespace, gl) -> dict:
    """Weights 1..5 for 5 items, many node_weight draws: per-item frequencies vs w/sum(w)."""
    weights = np.arange(1, 6, dtype=np.float64)
    ids = np.arange(1, 6, dtype=np.int64) * 10
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "items.tsv")
        with open(path, "w") as f:
            f.write("id:int64\tweight:float\tfeature:string\n")
            for row, item in enumerate(ids):  # (zip(strict=) is not Python 3.9)
                f.write(f"{item}\t{weights[row]}\t{item}\n")
        g = gl.Graph().node(path, node_type="item", decoder=gl.Decoder(attr_types=["int"], weighted=True))
        g.init()
        try:
            sampler = g.negative_sampler("item", 1000, strategy="node_weight")
            # The query id is not an item, so no draw is excluded as "the positive itself".
            query = np.full(100, 999_999, dtype=np.int64)
            drawn = np.concatenate(
                [sampler.get(query).ids.ravel() for _ in range(max(1, args.alias_draws // 100_000))]
            )
        finally:
            g.close()
    counts = [int(np.count_nonzero(drawn == item)) for item in ids]
    return {
        "ids": ids.tolist(),
        "weights": weights.tolist(),
        "counts": counts,
        "draws": int(len(drawn)),
        "frequencies": [round(c / len(drawn), 5) for c in counts],
        "expected": [round(w / weights.sum(), 5) for w in weights],
    }


def log(args: argparse.Namespace, entry: dict) -> None:
    if not args.quiet:
        rate = entry.get("rows_per_s")
        text = f"{rate / 1e6:.3f}M rows/s" if rate else entry.get("error")
        print(f"graph-learn {entry['sampler']} ef={entry['ef']}: {text}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a data set directory written by bench_data.py")
    parser.add_argument("--ef", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--batch", type=int, default=4096, help="positives a call")
    parser.add_argument("--calls", type=int, default=2, help="calls (distinct batches) a rep")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--num-hard", type=int, default=16, help="num_hard_sample")
    parser.add_argument("--alias", action="store_true", help="run the alias-table check instead")
    parser.add_argument("--alias-draws", type=int, default=1_000_000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    report: dict = {"runner": "graphlearn", "python": sys.version.split()[0], "pid": os.getpid()}
    try:
        import graphlearn as gl
    except Exception as error:  # not installed or its shared library does not load
        report.update(status="unavailable", reason=f"import graphlearn failed: {error!r}")
        emit(report)
        return
    report["graphlearn_version"] = getattr(gl, "__version__", "unknown")
    report["numpy_version"] = np.__version__
    try:
        if args.alias:
            report["alias"] = run_alias(args, gl)
        else:
            if not args.data:
                raise SystemExit("--data is required")
            report.update(run_bench(args, gl))
        report["status"] = "ok"
    except Exception as error:
        report.update(
            status="error", reason=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(limit=5)
        )
    emit(report)


def emit(report: dict) -> None:
    """One JSON line on stdout, then leave without graph-learn's C++ teardown (it can abort)."""
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
