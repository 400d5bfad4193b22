"""Load test of `negseq serve`: N concurrent clients for S seconds against in-process sampling.

Both phases use the same sampler, the same 4096-positive batches and the same concurrency: the
in-process phase calls `sampler.get` from N threads; the service phase starts `negseq serve` in a
subprocess on 127.0.0.1 and calls it from N `SamplerClient` threads. Prints one JSON object:
requests/s, rows/s (positives), negatives/s, client-side p50/p99 latency, errors (must be 0), the
server's own stats, and service/in-process throughput ratios (medians over --repeats).

    python benchmarks/service_load.py --seconds 30 --clients 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from negseq.sampler import build_sampler  # noqa: E402
from negseq.service import SamplerClient, ServiceJob  # noqa: E402


def write_job(folder: Path, num_items: int, num_sample: int, attr_fields: list[str]) -> Path:
    rng = np.random.default_rng(0)
    ids = np.arange(num_items, dtype=np.int64) * 7 + 1
    pq.write_table(
        pa.table({"id": ids, "weight": rng.random(num_items) + 0.05, "cate": (ids % 101).astype(np.int32)}),
        folder / "items.parquet",
    )
    job = folder / "job.toml"
    job.write_text(
        "[sampler.negative_sampler]\n"
        'input_path = "items.parquet"\n'
        f"num_sample = {num_sample}\n"
        'item_id_field = "item_id"\n'
        f"attr_fields = {json.dumps(attr_fields)}\n"
        "[service]\nmax_rows = 1048576\n"
    )
    return job


def make_batches(count: int, rows: int, num_items: int) -> list[pa.RecordBatch]:
    rng = np.random.default_rng(1)
    return [
        pa.record_batch({"item_id": rng.integers(0, num_items, rows, dtype=np.int64) * 7 + 1})
        for _ in range(count)
    ]


def run_load(call, batches: list[pa.RecordBatch], clients: int, seconds: float) -> dict:
    """`clients` threads call `call(batch, batch_index)` in a loop for `seconds`."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    negatives = [0] * clients
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker(w: int) -> None:
        i = 0
        while time.perf_counter() < stop_at:
            batch = batches[(w + i * clients) % len(batches)]
            started = time.perf_counter()
            try:
                negatives[w] += len(call(batch, w * 1_000_000 + i).ids)
            except Exception as exc:  # counted and reported: the acceptance wants 0
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
            else:
                latencies[w].append(time.perf_counter() - started)
            i += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    lat = np.concatenate([np.array(x) for x in latencies])
    requests = len(lat)
    rows = requests * batches[0].num_rows
    return {
        "seconds": round(elapsed, 3),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 2),
        "rows_per_s": round(rows / elapsed, 1),
        "negatives_per_s": round(sum(negatives) / elapsed, 1),
        "latency_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3) if requests else None,
        "latency_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3) if requests else None,
        "errors": len(errors),
        "error_samples": errors[:3],
    }


def start_server(job: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "negseq.cli",
            "serve",
            "--config",
            str(job),
            "--port",
            "0",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"negseq serve did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rows", type=int, default=4096, help="positives a request")
    ap.add_argument("--per-positive", type=int, default=32, help="negatives a positive; 0: shared mode")
    ap.add_argument("--num-sample", type=int, default=1024, help="shared-mode negatives a request")
    ap.add_argument("--num-items", type=int, default=1_000_000)
    ap.add_argument("--attr-fields", default="cate", help="attribute columns sent back (ids always are)")
    ap.add_argument("--repeats", type=int, default=1, help="in-process/service phase pairs (medians)")
    args = ap.parse_args()
    per_positive = args.per_positive or None
    attr_fields = [f for f in args.attr_fields.split(",") if f]

    with tempfile.TemporaryDirectory() as tmp:
        job = write_job(Path(tmp), args.num_items, args.num_sample, attr_fields)
        served = ServiceJob.from_toml(job)  # the server's own job file: both phases, one sampler
        sampler = build_sampler(served.sampler_config, base_dir=served.base_dir)
        batches = make_batches(16, args.rows, args.num_items)
        sampler.get(batches[0], per_positive=per_positive)  # compile the kernels before timing
        proc, location = start_server(job)
        client = SamplerClient(location)
        check = client.sample(batches[0], epoch=0, batch_index=7, per_positive=per_positive)
        want = sampler.get(batches[0], epoch=0, batch_index=7, per_positive=per_positive)
        deterministic = bool(np.array_equal(check.ids, want.ids) and check.negatives.equals(want.negatives))

        def in_process(batch, index):
            return sampler.get(batch, epoch=0, batch_index=index, per_positive=per_positive)

        def over_service(batch, index):
            return client.sample(batch, epoch=0, batch_index=index, per_positive=per_positive)

        phases = []
        for _ in range(args.repeats):
            local = run_load(in_process, batches, args.clients, args.seconds)
            remote = run_load(over_service, batches, args.clients, args.seconds)
            phases.append(
                {
                    "in_process": local,
                    "service": remote,
                    "ratio_rows_per_s": round(remote["rows_per_s"] / local["rows_per_s"], 3),
                }
            )
        server_stats = client.stats()
        client.close()
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(120)

    def medians(phase: str) -> dict[str, float]:
        keys = ("requests_per_s", "rows_per_s", "negatives_per_s", "latency_p50_ms", "latency_p99_ms")
        return {k: statistics.median(p[phase][k] for p in phases) for k in keys}

    print(
        json.dumps(
            {
                "benchmark": "service_load",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "machine": {
                    "cpus": os.cpu_count(),
                    "cpu": cpu_model(),
                    "python": platform.python_version(),
                    "pyarrow": pa.__version__,
                },
                "config": {
                    "clients": args.clients,
                    "seconds": args.seconds,
                    "rows_per_request": args.rows,
                    "per_positive": per_positive,
                    "num_sample": args.num_sample if per_positive is None else None,
                    "num_items": args.num_items,
                    "attr_fields": attr_fields,
                    "sampler": "NegativeSampler",
                },
                "deterministic_over_wire": deterministic,
                "service": medians("service") | {"errors": sum(p["service"]["errors"] for p in phases)},
                "in_process": medians("in_process"),
                "ratio_service_to_in_process": statistics.median(p["ratio_rows_per_s"] for p in phases),
                "server_stats": server_stats,
                "server_exit_code": exit_code,
                "phases": phases,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
