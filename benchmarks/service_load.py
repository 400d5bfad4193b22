"""Load test of `negseq serve`: N concurrent clients for S seconds against in-process sampling,
over plain gRPC and over TLS.

    python benchmarks/service_load.py                          # 8 clients, 3 x 30 s a phase
    python benchmarks/service_load.py --seconds 10 --repeats 1 # a quick look

Every phase uses the same sampler, the same 4096-positive batches and the same concurrency: the
in-process phase calls `sampler.get` from N threads; the service phases call `negseq serve`
(a subprocess on 127.0.0.1, one plain and one with a TLS certificate made for the run) from N
threads sharing one `SamplerClient`. Phases alternate (in-process, plain, TLS, in-process, ...) so
that a noisy host disturbs them alike, and each records the 1-minute load average around it.
Prints one JSON object: per phase requests/s, rows/s (positives), negatives/s, client-side
p50/p99 latency and errors (must be 0); the medians over --repeats; the service/in-process rows/s
ratios (median of the per-repeat ratios, plain and TLS) and the CPU ratios (in-process CPU a
request over client + server CPU a request: what the rows/s ratio tends to on a quiet 2-core
host); `uptime` before and after; the servers' own stats. The TLS phase needs the `cryptography`
package (the dev extra): tests/certs.py makes the certificates. Each phase also records the CPU a
request cost the benchmark process (the clients, or the in-process sampling) and the server
process: on a shared host those move far less than rows/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

from negseq.sampler import build_sampler  # noqa: E402
from negseq.service import SamplerClient, ServiceJob  # noqa: E402
from negseq.service.client import DEFAULT_KEEP_OPEN  # noqa: E402


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
    load_before = os.getloadavg()[0]
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
        "load1_before": round(load_before, 2),
        "load1_after": round(os.getloadavg()[0], 2),
    }


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, or of process `pid` (from /proc; NaN without it)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(
    call, batches: list[pa.RecordBatch], clients: int, seconds: float, server_pid: int | None
) -> dict:
    """`run_load`, plus the CPU a request cost this process (the clients, or the in-process
    sampling) and the server process: noise on a shared host moves rows/s far more than this."""
    mine, server = cpu_seconds(), cpu_seconds(server_pid) if server_pid else 0.0
    result = run_load(call, batches, clients, seconds)
    requests = max(result["requests"], 1)
    result["cpu_ms_per_request"] = {
        "this_process": round((cpu_seconds() - mine) * 1e3 / requests, 3),
        "server": round((cpu_seconds(server_pid) - server) * 1e3 / requests, 3) if server_pid else 0.0,
    }
    return result


def start_server(job: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "negseq.cli", "serve", "--config", str(job), "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--log-level", "WARNING", *extra], stdout=subprocess.PIPE, text=True, env=env
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


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def make_tls(folder: Path):
    """Throwaway certificates for the TLS phase (tests/certs.py; needs `cryptography`)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from certs import make_pki

    return make_pki(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rows", type=int, default=4096, help="positives a request")
    ap.add_argument("--per-positive", type=int, default=32, help="negatives a positive; 0: shared mode")
    ap.add_argument("--num-sample", type=int, default=1024, help="shared-mode negatives a request")
    ap.add_argument("--num-items", type=int, default=1_000_000)
    ap.add_argument("--attr-fields", default="cate", help="attribute columns sent back (ids always are)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (in-process, plain, TLS) phases")
    ap.add_argument("--no-tls", action="store_true", help="skip the TLS phase")
    args = ap.parse_args()
    per_positive = args.per_positive or None
    attr_fields = [f for f in args.attr_fields.split(",") if f]
    keep_open = max(DEFAULT_KEEP_OPEN, args.clients)  # one open exchange a client thread
    uptime_before = uptime()

    with tempfile.TemporaryDirectory() as tmp:
        job = write_job(Path(tmp), args.num_items, args.num_sample, attr_fields)
        served = ServiceJob.from_toml(job)  # the servers' own job file: every phase, one sampler
        sampler = build_sampler(served.sampler_config)
        batches = make_batches(16, args.rows, args.num_items)
        sampler.get(batches[0], per_positive=per_positive)  # compile the kernels before timing
        want = sampler.get(batches[0], epoch=0, batch_index=7, per_positive=per_positive)

        servers: dict[str, tuple[subprocess.Popen, SamplerClient]] = {}
        proc, location = start_server(job)
        servers["service"] = (proc, SamplerClient(location, keep_open=keep_open))
        if not args.no_tls:
            pki = make_tls(Path(tmp))
            tls_flags = ("--tls-cert", str(pki.server.cert_file), "--tls-key", str(pki.server.key_file))
            proc, location = start_server(job, *tls_flags)
            client = SamplerClient(location, keep_open=keep_open, tls_root_certs=pki.ca.cert)
            servers["service_tls"] = (proc, client)
        deterministic = {}
        for name, (_, client) in servers.items():
            check = client.sample(batches[0], epoch=0, batch_index=7, per_positive=per_positive)
            deterministic[name] = bool(
                np.array_equal(check.ids, want.ids) and check.negatives.equals(want.negatives)
            )

        calls = {
            "in_process": lambda batch, index: sampler.get(
                batch, epoch=0, batch_index=index, per_positive=per_positive
            )
        }
        for name, (_, client) in servers.items():
            calls[name] = lambda batch, index, c=client: c.sample(
                batch, epoch=0, batch_index=index, per_positive=per_positive
            )
        pids = {name: proc.pid for name, (proc, _) in servers.items()}
        phases = []
        for _ in range(args.repeats):
            round_ = {
                name: measured(call, batches, args.clients, args.seconds, pids.get(name))
                for name, call in calls.items()
            }
            for name in servers:
                round_[f"ratio_{name}_to_in_process"] = round(
                    round_[name]["rows_per_s"] / round_["in_process"]["rows_per_s"], 3
                )
                # what the rows/s ratio tends to when the CPUs are the limit (2 cores): in-process CPU
                # over client + server CPU a request; far steadier than rows/s on a loaded host
                cpu = round_[name]["cpu_ms_per_request"]
                round_[f"cpu_ratio_{name}_to_in_process"] = round(
                    round_["in_process"]["cpu_ms_per_request"]["this_process"]
                    / max(cpu["this_process"] + cpu["server"], 1e-9),
                    3,
                )
            phases.append(round_)
        server_stats, exit_codes = {}, {}
        for name, (proc, client) in servers.items():
            server_stats[name] = client.stats()
            client.close()
            proc.send_signal(signal.SIGTERM)
            exit_codes[name] = proc.wait(120)

    def medians(phase: str) -> dict[str, Any]:
        keys = ("requests_per_s", "rows_per_s", "negatives_per_s", "latency_p50_ms", "latency_p99_ms")
        out: dict[str, Any] = {k: statistics.median(p[phase][k] for p in phases) for k in keys}
        cpu = {
            k: statistics.median(p[phase]["cpu_ms_per_request"][k] for p in phases)
            for k in ("this_process", "server")
        }
        return out | {"cpu_ms_per_request": cpu, "errors": sum(p[phase]["errors"] for p in phases)}

    result = {
        "benchmark": "service_load",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "uptime_before": uptime_before,
        "uptime_after": uptime(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
        },
        "config": {
            "clients": args.clients,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "rows_per_request": args.rows,
            "per_positive": per_positive,
            "num_sample": args.num_sample if per_positive is None else None,
            "num_items": args.num_items,
            "attr_fields": attr_fields,
            "sampler": "NegativeSampler",
            "client_keep_open": keep_open,
        },
        "deterministic_over_wire": deterministic,
        "in_process": medians("in_process"),
    }
    for name in servers:
        result[name] = medians(name)
        for ratio in (f"ratio_{name}_to_in_process", f"cpu_ratio_{name}_to_in_process"):
            result[ratio] = statistics.median(p[ratio] for p in phases)
    result |= {"server_stats": server_stats, "server_exit_codes": exit_codes, "phases": phases}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
