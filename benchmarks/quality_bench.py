"""Model quality of a shipped job: HR@10 / NDCG@10 against most-popular, and the wall time.

    python benchmarks/quality_bench.py [--job examples/ml100k.toml] [--repeat] [--exclude none user batch]
                                       [--parallel]

Runs `negseq run` on the job as shipped, then its suffix-layout variant (the same job with
`[candidates] layout = "suffix"`: the sampler's `num_sample` shared negatives a batch instead of
`neg_per_pos` own negatives a positive), and with `--exclude`, the job under each named
exclusion policy (`[sampler.*] exclude`). `--repeat` runs the shipped job a second time and
says whether its metrics are identical. Each run writes under `--out` (a fresh folder a run).
Prints one JSON line a run (wall seconds, steps, best validation epoch, test metrics and
most-popular's on the same users), then a summary line. `--parallel` runs them at the same time,
one process each (a loaded shared host finishes sooner; each run's wall time grows). Wall times
depend on the host's load: record `uptime` beside them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _variant(raw: dict[str, Any], *, layout: str | None = None, exclude: str | None = None) -> dict[str, Any]:
    job = copy.deepcopy(raw)
    if layout == "suffix":
        job["candidates"]["layout"] = "suffix"
        job["candidates"].pop("neg_per_pos", None)
    if exclude is not None:
        ((kind, sampler),) = job["sampler"].items()
        sampler["exclude"] = exclude
    return job


def _override(raw: dict[str, Any], assignment: str) -> None:
    """`table.key=value` (the value in TOML syntax; `sampler.key` is the job's one sampler's);
    `table.key=` removes the key."""
    path, sep, value = assignment.partition("=")
    *tables, key = path.strip().split(".")
    if not sep or not tables:
        raise SystemExit(f"quality_bench: --set {assignment!r}: expected TABLE.KEY=VALUE")
    table = raw
    for name in tables:
        table = table.setdefault(name, {})
        if name == "sampler":
            ((_, table),) = table.items()
    if not value.strip():
        table.pop(key, None)
        return
    table[key] = tomllib.loads(f"v = {value}")["v"]


def _run(name: str, raw: dict[str, Any], job_path: Path, out: Path) -> dict[str, Any]:
    from negseq.config import load_config
    from negseq.job import run_job

    folder = out / name  # negseq reclaims its own folder of an earlier run
    job = copy.deepcopy(raw)
    job.setdefault("output", {})["dir"] = str(folder)
    job["output"]["write_samples"] = False
    config = load_config(job, command="run", source=str(job_path))
    started, cpu = time.perf_counter(), _cpu_seconds()
    result = run_job(config, quiet=True)
    line = _line(name, result, time.perf_counter() - started)
    # this process's CPU time (all of a local run; Ray's workers not included): wall time on a
    # loaded host says more about the host than the run
    line["process_cpu_s"] = round(_cpu_seconds() - cpu, 1)
    return line


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _line(name: str, result: dict[str, Any], wall: float) -> dict[str, Any]:
    """A run's result line from what `run_job` returned (or its metrics.json)."""
    model, pop = result["model"], result["most_popular"]
    validation = result.get("validation") or {}
    best = validation.get("best") or {}
    return {
        "run": name,
        "wall_s": round(wall, 1),
        "steps": result["train"].get("step"),
        "best_epoch": best.get("epoch"),
        "stopped_early": validation.get("stopped_early"),
        "HR@10": model["HR@10"],
        "NDCG@10": model["NDCG@10"],
        "MRR": model["MRR"],
        "most_popular_HR@10": pop["HR@10"],
        "most_popular_NDCG@10": pop["NDCG@10"],
        "HR@10_ratio": round(model["HR@10"] / max(pop["HR@10"], 1e-12), 3),
        "metrics": {"model": model, "most_popular": pop},
    }


def _in_parallel(names: list[str], argv: list[str]) -> list[dict[str, Any]]:
    """Each named run in its own process, all at once; their result lines in `names` order."""
    base = [a for a in argv if a != "--parallel"]
    procs = [
        subprocess.Popen([sys.executable, __file__, *base, "--only", name], stdout=subprocess.PIPE, text=True)
        for name in names
    ]
    results = []
    for name, proc in zip(names, procs, strict=True):
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"quality_bench: run {name!r} failed with exit code {proc.returncode}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default=str(REPO / "examples" / "ml100k.toml"))
    parser.add_argument("--out", default=str(REPO / "runs" / "quality_bench"))
    parser.add_argument("--repeat", action="store_true", help="run the shipped job twice")
    parser.add_argument("--no-suffix", action="store_true", help="skip the suffix-layout variant")
    parser.add_argument("--exclude", nargs="*", default=[], choices=["batch", "user", "none"])
    parser.add_argument("--parallel", action="store_true", help="one process a run, all at once")
    parser.add_argument(
        "--executor", choices=["ray", "local"], help="[ray] executor for every run (default: the job's)"
    )
    parser.add_argument(
        "--from-runs", action="store_true", help="summarise the runs' metrics.json under --out, run nothing"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="set a job key in every run (VALUE in TOML: train.epochs=30, layout='suffix'; empty: remove)",
    )
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one run, its full line (--parallel's child)
    args = parser.parse_args()
    job_path = Path(args.job).resolve()
    raw = tomllib.loads(job_path.read_text())
    if args.executor is not None:
        raw.setdefault("ray", {})["executor"] = args.executor
    for assignment in args.set:
        _override(raw, assignment)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = [("job", raw)]
    if args.repeat:
        runs.append(("job_again", raw))
    if not args.no_suffix:
        runs.append(("suffix", _variant(raw, layout="suffix")))
    runs += [(f"exclude_{policy}", _variant(raw, exclude=policy)) for policy in args.exclude]
    if args.from_runs:  # what earlier runs of these variants wrote (their metrics.json)
        results = []
        for name, _ in runs:
            result = json.loads((out / name / "metrics.json").read_text())
            results.append(_line(name, result, result["seconds"]))
    elif args.only is not None:
        print(json.dumps(_run(args.only, dict(runs)[args.only], job_path, out)), flush=True)
        return
    elif args.parallel:
        results = _in_parallel([name for name, _ in runs], sys.argv[1:])
    else:
        results = [_run(name, job, job_path, out) for name, job in runs]
    for line in results:
        print(json.dumps({k: v for k, v in line.items() if k != "metrics"}), flush=True)
    by_name = {r["run"]: r for r in results}
    summary: dict[str, Any] = {
        "bench": "quality_bench",
        "job": str(job_path.relative_to(REPO) if job_path.is_relative_to(REPO) else job_path),
        "executor": raw.get("ray", {}).get("executor", "ray"),
        "load_avg": os.getloadavg(),
        "cpus": os.cpu_count(),
        "job_HR@10": by_name["job"]["HR@10"],
        "job_HR@10_ratio": by_name["job"]["HR@10_ratio"],
        "job_wall_s": by_name["job"]["wall_s"],
    }
    if "job_again" in by_name:
        summary["repeat_identical"] = by_name["job_again"]["metrics"] == by_name["job"]["metrics"]
    if "suffix" in by_name:
        summary["suffix_HR@10"] = by_name["suffix"]["HR@10"]
        summary["suffix_at_least_interleaved"] = by_name["suffix"]["HR@10"] >= by_name["job"]["HR@10"]
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
