"""Sampler benchmark: negseq's four samplers vs numpy and graph-learn 1.1.0, on one core.

    python benchmarks/sampler_bench.py            # 1M items, 100k users (about 3-5 minutes)
    python benchmarks/sampler_bench.py --small    # 50k items, 5k users (seconds; `make run`)

It generates (or reuses) the tables of benchmarks/bench_data.py, then measures in one run:
negseq loading those tables from Parquet (time, peak RSS; in a subprocess so RSS is clean),
every sampler at each expand factor in both output modes, gathering the id and two
attribute columns, the hard-negative lookup, `numpy.random.Generator.choice(p=...)`, and
graph-learn's samplers on the same tables (benchmarks/graphlearn_runner.py in a Python 3.9
venv, built here when missing). Calls hold 4096 positive (user, item) edges drawn at random,
so the items follow the item weights: the exclusion-heavy case.

One core: the script re-executes itself pinned to `--cpu` (sched_setaffinity, inherited by
every thread and subprocess, graph-learn's included) with NUMBA_NUM_THREADS=1,
OMP_NUM_THREADS=1 and Arrow's thread pools set to 1.

Output: one JSON object a line on stdout (each measurement), the last one the summary
(ratios and acceptance checks). Progress and a readable summary go to stderr unless --quiet.
Rates are rows / median seconds of `--reps` repetitions of `--calls` calls each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data  # noqa: E402  (sibling scripts, not package modules)
import graphlearn_runner  # noqa: E402  (Python 3.9-compatible; imports graph-learn lazily)

BENCH_DIR = Path(__file__).resolve().parent
GL_VENV = BENCH_DIR / ".gl-venv"
GL_RUNNER = BENCH_DIR / "graphlearn_runner.py"
SAMPLERS = ("NegativeSampler", "NegativeSamplerV2", "HardNegativeSampler", "HardNegativeSamplerV2")
ITEM_ID_FIELD, USER_ID_FIELD = "item_id", "user_id"
ATTR_FIELDS = list(bench_data.ITEM_ATTR_FIELDS)  # the id and two attribute columns
PINNED_ENV = "NEGSEQ_BENCH_PINNED_CPU"
ONE_THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Acceptance targets of issue 2, checked at this expand factor and in shared mode.
TARGET_EF = 8
TARGETS = {"NegativeSampler": (15e6, 10.0), "NegativeSamplerV2": (5e6, 10.0)}
HARD_LOOKUP_TARGET = 5e6
LOAD_SPEEDUP_TARGET, LOAD_RSS_TARGET = 4.0, 0.5


# --------------------------------------------------------------------------- one core


def pin_to_one_core(cpu: int) -> None:
    """Re-execute this script pinned to `cpu`, so every thread and child inherits it."""
    if os.environ.get(PINNED_ENV) == str(cpu):
        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
        return
    os.sched_setaffinity(0, {cpu})
    env = dict(os.environ, **{name: "1" for name in ONE_THREAD_ENV}, **{PINNED_ENV: str(cpu)})
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


# --------------------------------------------------------------------------- timing


def time_calls(call: Callable[[int], dict[str, int]], num_calls: int, reps: int) -> dict:
    """Medians over `reps` of `num_calls` calls (wall and CPU); call(k) returns {kind: rows}."""
    call(0)  # warm-up: numba compilation, lazily built structures
    seconds, cpu_seconds, rows = [], [], {}
    for rep in range(reps):
        rows = {}
        started, cpu_started = time.perf_counter(), time.process_time()
        for k in range(num_calls):
            for kind, n in call(1 + rep * num_calls + k).items():
                rows[kind] = rows.get(kind, 0) + n
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    return graphlearn_runner.rates(seconds, cpu_seconds, rows, num_calls)


def cpu_seconds() -> float:
    """CPU time of this process, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --------------------------------------------------------------------------- negseq


def read_tables(data: bench_data.BenchData) -> tuple:
    """The benchmark's item table (with the attribute columns) and both edge tables, from Parquet."""
    from negseq import sampler as ns

    items = ns.ItemTable.read(data.parquet("items"), attr_fields=ATTR_FIELDS)
    return (
        items,
        # as build_sampler reads them: positive edges are a set, their weights unused
        ns.EdgeTable.read(data.parquet("pos_edges"), keep_weights=False),
        ns.EdgeTable.read(data.parquet("hard_edges")),
    )


def load_negseq(data: bench_data.BenchData, num_sample: int, num_hard: int, exclude: str = "batch") -> dict:
    """The tables and the four samplers that serve every benchmark call (`exclude`: the V1 ones')."""
    from negseq import sampler as ns

    items, pos_edges, hard_edges = read_tables(data)
    common = {"num_sample": num_sample, "attr_fields": ATTR_FIELDS, "item_id_field": ITEM_ID_FIELD}
    with_user = {**common, "user_id_field": USER_ID_FIELD}
    samplers = (
        ns.NegativeSampler(items, exclude=exclude, **common),
        ns.NegativeSamplerV2(items, pos_edges, **with_user),
        ns.HardNegativeSampler(items, hard_edges, num_hard_sample=num_hard, exclude=exclude, **with_user),
        ns.HardNegativeSamplerV2(items, pos_edges, hard_edges, num_hard_sample=num_hard, **with_user),
    )
    return {"samplers": dict(zip(SAMPLERS, samplers, strict=True)), "items": items, "hard_edges": hard_edges}


def load_probe(data_dir: Path, num_hard: int) -> dict:
    """Run in a fresh subprocess: time and peak RSS of loading what graph-learn loads.

    Everything graph-learn's one graph serves: items with attributes, the V1 alias table,
    the positive-edge CSR and V2 pool, and the hard-negative CSR (HardNegativeSamplerV2
    plus NegativeSampler; the hard V1 sampler's index is the same one again).
    """
    from negseq import sampler as ns  # import cost is not load time

    data = bench_data.BenchData(data_dir, bench_data.BenchDataSpec())
    rss_before = current_rss_mib()
    started, cpu_started = time.perf_counter(), cpu_seconds()
    items, pos_edges, hard_edges = read_tables(data)
    read_s = time.perf_counter() - started
    common = {"num_sample": 4096, "attr_fields": ATTR_FIELDS, "item_id_field": ITEM_ID_FIELD}
    samplers = [
        ns.NegativeSampler(items, **common),
        ns.HardNegativeSamplerV2(
            items, pos_edges, hard_edges, num_hard_sample=num_hard, user_id_field=USER_ID_FIELD, **common
        ),
    ]
    total_s = time.perf_counter() - started
    return {
        "seconds": round(total_s, 3),
        "cpu_seconds": round(cpu_seconds() - cpu_started, 3),
        "read_s": round(read_s, 3),
        "build_s": round(total_s - read_s, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_before_mib": round(rss_before, 1),
        "samplers_built": len(samplers),
    }


def run_load_probe(data: bench_data.BenchData, num_hard: int) -> dict:
    command = [sys.executable, __file__, "--load-probe", str(data.root), "--num-hard", str(num_hard)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"status": "error", "reason": proc.stderr.strip()[-2000:]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def query_batches(data: bench_data.BenchData, batch: int, count: int) -> list[pa.RecordBatch]:
    queries = np.load(data.queries)
    users, items = queries["userid"], queries["itemid"]
    if len(users) < batch * count:
        raise SystemExit(f"{data.root}: {len(users)} query pairs, need {batch * count}")
    bounds = [(i * batch, (i + 1) * batch) for i in range(count)]
    return [
        pa.RecordBatch.from_arrays(
            [pa.array(items[lo:hi]), pa.array(users[lo:hi])], names=[ITEM_ID_FIELD, USER_ID_FIELD]
        )
        for lo, hi in bounds
    ]


def negseq_cases(loaded: dict, batches: list, args: argparse.Namespace) -> Iterator[tuple]:
    """(entry, call) pairs: every sampler, expand factor and mode, the lookup, numpy."""
    from negseq import sampler as ns

    num_batches = len(batches)
    for name, sampler in loaded["samplers"].items():
        for ef in args.ef:
            for mode in ("shared", "per_positive"):
                stats = {"calls": 0, "draws": 0, "redraws": 0, "collisions_kept": 0}

                def call(k, sampler=sampler, ef=ef, mode=mode, stats=stats):
                    # shared mode: num_sample = Q * ef, so the call's dynamic ef is exactly ef
                    sampler.num_sample = args.batch * ef
                    per_positive = ef if mode == "per_positive" else None
                    res = sampler.get(batches[k % num_batches], batch_index=k, per_positive=per_positive)
                    if args.with_probability:  # what sample_batch adds: each negative's exact p
                        sampler.probability(res)
                    rows = {"negatives": len(res.ids)}
                    if sampler.is_hard:
                        rows["hard"] = len(res.hard_ids)
                    stats["calls"] += 1
                    stats["expand_factor"] = res.expand_factor
                    for key in ("draws", "redraws", "collisions_kept"):
                        stats[key] += res.stats.get(key, 0)
                    return rows

                yield {"sampler": name, "ef": ef, "mode": mode, "stats": stats}, call

    items = loaded["items"]
    index = ns.HardNegativeIndex(items, loaded["hard_edges"], args.num_hard)

    def lookup(k):
        users = batches[k % num_batches].column(USER_ID_FIELD).to_numpy()
        rows, _indices = index.lookup(users)
        gathered = items.attributes(rows, ATTR_FIELDS, ITEM_ID_FIELD)
        return {"hard": gathered.num_rows}

    yield {"sampler": "hard_lookup", "ef": None, "mode": "lookup+attributes"}, lookup

    probs = items.weights / items.weights.sum()
    for ef in args.ef:

        def choice(k, ef=ef, gather=False):
            rng = np.random.default_rng(k)
            rows = rng.choice(len(probs), size=args.batch * ef, p=probs)
            if gather:
                items.attributes(rows, ATTR_FIELDS, ITEM_ID_FIELD)
            return {"negatives": len(rows)}

        yield {"sampler": "numpy_choice", "ef": ef, "mode": "ids"}, choice
        yield (
            {"sampler": "numpy_choice", "ef": ef, "mode": "ids+attributes"},
            lambda k, ef=ef, choice=choice: choice(k, ef, gather=True),
        )


def chi_square(counts: list[int], weights: list[float]) -> dict:
    """Pearson's test of drawn counts against probabilities w / sum(w)."""
    from scipy.stats import chisquare

    counts_arr = np.asarray(counts, dtype=np.float64)
    expected = np.asarray(weights) / np.sum(weights) * counts_arr.sum()
    stat, p_value = chisquare(counts_arr, expected)
    return {"chi2": round(float(stat), 3), "p_value": float(p_value), "passes": bool(p_value > 1e-3)}


def negseq_alias_check(draws: int) -> dict:
    """negseq's NegativeSampler on the 5-item table with weights 1..5 (ids 10..50)."""
    from negseq import sampler as ns

    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    ids = [10, 20, 30, 40, 50]
    items = ns.ItemTable.from_arrow(pa.table({"id": pa.array(ids, pa.int64()), "weight": pa.array(weights)}))
    sampler = ns.NegativeSampler(items, num_sample=draws, item_id_field=ITEM_ID_FIELD)
    # The positive is not an item, so no draw is excluded.
    res = sampler.get({ITEM_ID_FIELD: pa.array([999_999], pa.int64())})
    counts = [int(np.count_nonzero(res.ids == i)) for i in ids]
    return {
        "ids": ids,
        "weights": weights,
        "counts": counts,
        "draws": draws,
        "frequencies": [round(c / draws, 5) for c in counts],
        "expected": [round(w / sum(weights), 5) for w in weights],
        **chi_square(counts, weights),
    }


# --------------------------------------------------------------------------- graph-learn


def ensure_graphlearn_venv(build: bool) -> str | None:
    """None when the venv imports graphlearn; else why not (after trying to build it)."""
    python = GL_VENV / "bin" / "python"
    probe = [str(python), "-c", "import graphlearn"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return None
    if not build:
        return f"{GL_VENV} is missing or broken; a full run (without --small) builds it"
    env = dict(os.environ, PYENV_VERSION="3.9.18")
    steps = [
        ["python3.9", "-m", "venv", "--clear", str(GL_VENV)],
        [str(GL_VENV / "bin" / "pip"), "install", "-q", "graph-learn==1.1.0", "numpy<2"],
        probe,
    ]
    for step in steps:
        try:
            proc = subprocess.run(step, capture_output=True, text=True, env=env, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{' '.join(step)}: {error}"
        if proc.returncode != 0:
            return f"{' '.join(step)} exited {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    return None


def run_graphlearn(runner_args: list[str], timeout: int = 900) -> dict:
    """Run graphlearn_runner.py in its venv; its one JSON line, or why there is none."""
    command = [str(GL_VENV / "bin" / "python"), str(GL_RUNNER), "--quiet", *runner_args]
    try:
        # graph-learn writes its log files into the working directory: give it a scratch one.
        with tempfile.TemporaryDirectory(prefix="graphlearn-") as scratch:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=scratch)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"graph-learn runner ran past {timeout} s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = proc.stderr.strip()[-1500:]
    return {"status": "error", "reason": f"runner exited {proc.returncode} without JSON: {tail}"}


# --------------------------------------------------------------------------- summary


def machine_info() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    import numba

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH_DIR
    ).stdout.strip()
    return {
        "cpu_model": model,
        "cpus_online": os.cpu_count(),
        "pinned_cpus": sorted(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "numba": numba.__version__,
        "git_commit": commit,
    }


def find_rate(entries: list[dict], key: str, impl: str, sampler: str, ef, mode: str | None) -> float | None:
    for entry in entries:
        if (entry["impl"], entry["sampler"], entry["ef"]) == (impl, sampler, ef) and (
            mode is None or entry.get("mode") == mode
        ):
            return entry.get(key)
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def check(name: str, value: float | None, target: float, higher_is_better: bool = True) -> dict:
    passed = None if value is None else (value >= target if higher_is_better else value <= target)
    return {"check": name, "value": value, "target": target, "pass": passed}


def summarize(entries: list[dict], load: dict, alias: dict, args: argparse.Namespace) -> dict:
    """Ratios and acceptance checks on the `--clock` rates (CPU time by default)."""
    key = "rows_per_cpu_s" if args.clock == "cpu" else "rows_per_s"
    load_key = "cpu_seconds" if args.clock == "cpu" else "seconds"

    def rate_of(*where) -> float | None:
        return find_rate(entries, key, *where)

    rows = []
    for sampler in SAMPLERS:
        for ef in args.ef:
            for mode in ("shared", "per_positive"):
                mine = rate_of("negseq", sampler, ef, mode)
                gl = rate_of("graphlearn", sampler, ef, None)
                numpy_rate = rate_of("numpy", "numpy_choice", ef, "ids+attributes")
                rows.append(
                    {
                        "sampler": sampler,
                        "ef": ef,
                        "mode": mode,
                        "negseq_rows_per_s": mine,
                        "graphlearn_rows_per_s": gl,
                        "vs_graphlearn": ratio(mine, gl),
                        "vs_numpy_choice": ratio(mine, numpy_rate),
                    }
                )
    hard_mine = rate_of("negseq", "hard_lookup", None, None)
    hard_gl = rate_of("graphlearn", "hard_lookup", None, None)
    rows.append(
        {
            "sampler": "hard_lookup",
            "ef": None,
            "mode": "lookup+attributes",
            "negseq_rows_per_s": hard_mine,
            "graphlearn_rows_per_s": hard_gl,
            "vs_graphlearn": ratio(hard_mine, hard_gl),
            "vs_numpy_choice": None,
        }
    )

    negseq_load, gl_load = load.get("negseq", {}), load.get("graphlearn", {})
    load_speedup = ratio(gl_load.get(load_key), negseq_load.get(load_key))
    rss_ratio = ratio(negseq_load.get("peak_rss_mib"), gl_load.get("peak_rss_mib"))
    checks = []
    for sampler, (min_rate, min_ratio) in TARGETS.items():
        mine = rate_of("negseq", sampler, TARGET_EF, "shared")
        gl = rate_of("graphlearn", sampler, TARGET_EF, None)
        checks.append(check(f"{sampler} ef={TARGET_EF} negatives/s", mine, min_rate))
        checks.append(check(f"{sampler} ef={TARGET_EF} x graph-learn", ratio(mine, gl), min_ratio))
    checks.append(check("hard lookup rows/s", hard_mine, HARD_LOOKUP_TARGET))
    checks.append(check("load speed-up vs graph-learn", load_speedup, LOAD_SPEEDUP_TARGET))
    checks.append(check("load peak RSS / graph-learn", rss_ratio, LOAD_RSS_TARGET, higher_is_better=False))
    return {
        "summary": {
            "size": "small" if args.small else "full",
            "clock": args.clock,
            "rates": rows,
            "load": {
                "negseq": negseq_load,
                "graphlearn": gl_load,
                "speedup": load_speedup,
                "rss_ratio": rss_ratio,
            },
            "alias": alias,
            "acceptance": checks,
            "acceptance_note": "targets are for the full size (1M items)",
        }
    }


def format_summary(summary: dict) -> str:
    def rate(value: float | None) -> str:
        return f"{value / 1e6:8.2f}M" if value else "       -"

    def times(value: float | None) -> str:
        return f"{value:7.1f}x" if value else "       -"

    clock = "CPU" if summary["clock"] == "cpu" else "wall"
    lines = [
        f"sampler benchmark ({summary['size']} size), rows per {clock} second, medians, one core",
        f"{'sampler':<22}{'ef':>4} {'mode':<13}{'negseq':>9} {'graph-learn':>11} {'x gl':>8} {'x numpy':>8}",
    ]
    for row in summary["rates"]:
        lines.append(
            f"{row['sampler']:<22}{row['ef'] or '':>4} {row['mode']:<13}"
            f"{rate(row['negseq_rows_per_s'])} {rate(row['graphlearn_rows_per_s']):>11} "
            f"{times(row['vs_graphlearn'])} {times(row['vs_numpy_choice'])}"
        )
    load = summary["load"]
    for impl in ("negseq", "graphlearn"):
        info = load[impl]
        if info.get("status") == "ok":
            lines.append(
                f"load {impl:<11}{info['seconds']:8.2f} s wall "
                f"{info.get('cpu_seconds', float('nan')):8.2f} s CPU  peak RSS "
                f"{info['peak_rss_mib']:8.1f} MiB"
            )
        else:
            lines.append(f"load {impl:<11}unavailable: {info.get('reason', '?')[:200]}")
    for impl, runs in summary["alias"].items():
        for info in runs if isinstance(runs, list) else [runs]:
            if "frequencies" in info:
                lines.append(
                    f"alias {impl:<10} weights 1..5 drawn {info['frequencies']} "
                    f"(expected {info['expected']}) chi2 p={info['p_value']:.3g}"
                )
            else:
                lines.append(f"alias {impl:<10} unavailable: {info.get('reason', '?')[:200]}")
    for item in summary["acceptance"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[item["pass"]]
        value = item["value"]
        shown = f"{value:,.2f}" if isinstance(value, float | int) else "-"
        lines.append(f"[{verdict}] {item['check']}: {shown} (target {item['target']:,})")
    if summary["size"] != "full":
        lines.append("(acceptance targets apply to the full size; run without --small)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="50k items, 5k users (seconds)")
    parser.add_argument("--quiet", action="store_true", help="JSON on stdout only")
    parser.add_argument("--ef", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--batch", type=int, default=4096, help="positives a call")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (median taken)")
    parser.add_argument("--calls", type=int, default=None, help="negseq calls a repetition")
    parser.add_argument("--gl-calls", type=int, default=None, help="graph-learn calls a rep")
    parser.add_argument("--num-hard", type=int, default=16, help="num_hard_sample")
    parser.add_argument("--cpu", type=int, default=0, help="the one core to run on")
    parser.add_argument(
        "--exclude", choices=("batch", "user", "none"), default="batch", help="the V1 samplers' policy"
    )
    parser.add_argument(
        "--with-probability", action="store_true", help="also compute each negative's exact probability"
    )
    parser.add_argument("--no-graphlearn", action="store_true", help="skip graph-learn")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="rates the summary compares: per CPU second of the process (robust "
        "to other load on the core) or per wall second; both are in the JSON",
    )
    parser.add_argument("--load-probe", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_probe:
        print(json.dumps(load_probe(args.load_probe, args.num_hard)))
        return
    pin_to_one_core(args.cpu)
    reps = args.reps or (3 if args.small else 5)
    calls = args.calls or (4 if args.small else 8)
    gl_calls = args.gl_calls or (1 if args.small else 2)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    def emit(entry: dict) -> None:
        print(json.dumps(entry), flush=True)

    spec = bench_data.BenchDataSpec.small() if args.small else bench_data.BenchDataSpec()
    data = bench_data.ensure(spec, log=log)
    emit(
        {
            "bench": "setup",
            "data": str(data.root),
            "rows": data.manifest["rows"],
            "batch": args.batch,
            "exclude": args.exclude,
            "with_probability": args.with_probability,
            "reps": reps,
            "calls_per_rep": calls,
            "graphlearn_calls_per_rep": gl_calls,
            "num_hard_sample": args.num_hard,
            "one_core": f"sched_setaffinity({{{args.cpu}}}) + NUMBA/OMP threads 1 + Arrow pools 1",
            "machine": machine_info(),
        }
    )

    log("loading tables in a subprocess (negseq, Parquet) ...")
    load = {"negseq": run_load_probe(data, args.num_hard)}
    emit({"bench": "load", "impl": "negseq", **load["negseq"]})

    loaded = load_negseq(data, args.batch, args.num_hard, args.exclude)
    batches = query_batches(
        data, args.batch, min(1 + reps * calls, data.manifest["rows"]["pos_edges"] // args.batch)
    )
    entries = []
    cases = list(negseq_cases(loaded, batches, args))
    from tqdm import tqdm

    for entry, call in tqdm(cases, desc="negseq", disable=args.quiet, file=sys.stderr):
        impl = "numpy" if entry["sampler"] == "numpy_choice" else "negseq"
        entry = {"bench": "rate", "impl": impl, "batch": args.batch, **entry}
        try:
            entry.update(time_calls(call, calls, reps))
        except Exception as error:  # one broken case must not hide the others
            entry.update(status="error", error=f"{type(error).__name__}: {error}")
        emit(entry)
        entries.append(entry)
    alias = {"negseq": negseq_alias_check(1_000_000)}
    emit({"bench": "alias", "impl": "negseq", **alias["negseq"]})

    gl_reason = None if not args.no_graphlearn else "skipped (--no-graphlearn)"
    if gl_reason is None:
        log("graph-learn: checking its venv ...")
        gl_reason = ensure_graphlearn_venv(build=not args.small)
    if gl_reason is None:
        log("graph-learn: loading and sampling the same tables (Python 3.9 subprocess) ...")
        # --small times graph-learn at the acceptance ef only: it is most of the run's time.
        gl_efs = [TARGET_EF] if args.small and TARGET_EF in args.ef else args.ef
        report = run_graphlearn(
            [
                "--data",
                str(data.root),
                "--ef",
                ",".join(map(str, gl_efs)),
                "--batch",
                str(args.batch),
                "--calls",
                str(gl_calls),
                "--reps",
                str(reps),
                "--num-hard",
                str(args.num_hard),
            ]
        )
        if report.get("status") == "ok":
            load["graphlearn"] = {"status": "ok", **report["load"]}
            for result in report["results"]:
                entry = {"bench": "rate", "impl": "graphlearn", "mode": "shared", **result}
                emit(entry)
                entries.append(entry)
            alias_runs = [run_graphlearn(["--alias"]) for _ in range(3)]
            alias["graphlearn"] = [
                {**run["alias"], **chi_square(run["alias"]["counts"], run["alias"]["weights"])}
                if run.get("status") == "ok"
                else run
                for run in alias_runs
            ]
            for run in alias["graphlearn"]:
                emit({"bench": "alias", "impl": "graphlearn", **run})
        else:
            gl_reason = report.get("reason", "graph-learn runner failed")
    if gl_reason is not None:
        load["graphlearn"] = {"status": "unavailable", "reason": gl_reason}
        alias["graphlearn"] = {"status": "unavailable", "reason": gl_reason}
        emit({"bench": "graphlearn", "status": "unavailable", "reason": gl_reason})
    emit({"bench": "load", "impl": "graphlearn", **load["graphlearn"]})

    summary = summarize(entries, load, alias, args)
    emit(summary)
    log(format_summary(summary["summary"]))


if __name__ == "__main__":
    main()
