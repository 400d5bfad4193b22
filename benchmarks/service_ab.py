"""Interleaved A/B of two source trees' sampler servers: CPU a request, client + server.

    python benchmarks/service_ab.py --old-src /path/to/main/src            # this tree is "new"
    python benchmarks/service_ab.py --old-src ../main/src --seconds 5 --rounds 8

On a shared host rows/s move with everyone else's work; CPU a request moves far less, and
alternating short phases (in process, old server, new server, order reversed every round) exposes
both servers to the same disturbances. One client process, running this tree's `SamplerClient`,
calls both servers (so the client must read both trees' answers); each server is `negseq serve`
from its own tree on the job of `service_load.py`. Prints one JSON object: per phase the per-round
CPU ms a request (this process + the server) and the medians, the CPU ratios (in process over
client + server) and in how many rounds the new server's total was the lower.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service_load import make_batches, measured, uptime, write_job  # noqa: E402

from negseq.sampler import build_sampler  # noqa: E402
from negseq.service import SamplerClient, ServiceJob  # noqa: E402


def start_server(src: Path, job: Path) -> tuple[subprocess.Popen, str]:
    """`negseq serve` run from the source tree `src`, and its location."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-m", "negseq.cli", "serve", "--config", str(job), "--port", "0"]
    proc = subprocess.Popen([*command, "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"negseq serve from {src} did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-src", type=Path, required=True, help="the src folder of the tree to compare")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-positive", type=int, default=32)
    args = ap.parse_args()
    uptime_before = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        job = write_job(Path(tmp), 1_000_000, 1024, ["cate"])
        sampler = build_sampler(ServiceJob.from_toml(job).sampler_config)
        batches = make_batches(16, 4096, 1_000_000)
        want = sampler.get(batches[0], epoch=0, batch_index=7, per_positive=args.per_positive)
        servers = {"old": start_server(args.old_src.resolve(), job), "new": start_server(ROOT / "src", job)}
        clients = {
            name: SamplerClient(location, keep_open=args.clients) for name, (_, location) in servers.items()
        }
        try:
            for name, client in clients.items():  # the same answers, and both servers warm
                got = client.sample(batches[0], epoch=0, batch_index=7, per_positive=args.per_positive)
                if not (np.array_equal(got.ids, want.ids) and got.negatives.equals(want.negatives)):
                    raise SystemExit(f"the {name} server's answer differs from the in-process one")
                for i in range(20):
                    client.sample(batches[i % 16], epoch=0, batch_index=i, per_positive=args.per_positive)
            calls = {
                "in_process": (
                    lambda b, i: sampler.get(b, epoch=0, batch_index=i, per_positive=args.per_positive),
                    None,
                )
            }
            for name, client in clients.items():
                calls[name] = (
                    lambda b, i, c=client: c.sample(
                        b, epoch=0, batch_index=i, per_positive=args.per_positive
                    ),
                    servers[name][0].pid,
                )
            rounds: dict[str, list[dict]] = {name: [] for name in calls}
            for r in range(args.rounds):
                for name in list(calls) if r % 2 == 0 else list(calls)[::-1]:
                    call, pid = calls[name]
                    rounds[name].append(measured(call, batches, args.clients, args.seconds, pid))
        finally:
            for client in clients.values():
                client.close()
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(60)

    def cpu(phase: dict, part: str | None = None) -> float:
        parts = phase["cpu_ms_per_request"]
        return parts[part] if part else parts["this_process"] + parts["server"]

    result: dict = {"benchmark": "service_ab", "command": " ".join(sys.argv), "uptime_before": uptime_before}
    for name, phases in rounds.items():
        result[name] = {
            "cpu_ms_per_request": statistics.median(cpu(p) for p in phases),
            "client_ms": statistics.median(cpu(p, "this_process") for p in phases),
            "server_ms": statistics.median(cpu(p, "server") for p in phases),
            "per_round": [round(cpu(p), 3) for p in phases],
            "errors": sum(p["errors"] for p in phases),
            "load1": [p["load1_before"] for p in phases],
        }
    for name in ("old", "new"):
        result[f"cpu_ratio_{name}"] = round(
            result["in_process"]["cpu_ms_per_request"] / result[name]["cpu_ms_per_request"], 3
        )
    pairs = zip(result["new"]["per_round"], result["old"]["per_round"], strict=True)
    result["rounds_new_lower"] = sum(new < old for new, old in pairs)
    result["uptime_after"] = uptime()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
