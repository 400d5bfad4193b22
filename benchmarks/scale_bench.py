"""The driver's peak memory against the input's size (issue 14): `negseq prepare --ray` of a
synthetic log and `negseq run` from the prepared sharded folder (a few training steps), each
against a Ray head this script starts with `ray start --head` (so Ray's workers are the
raylet's children, not the driver's), at 1x and 8x the log. Prints one JSON object a line: one
a command and scale, then a summary with the growth from 1x to 8x (target: under 15%).

The driver's peak is its own process image's VmHWM, read by the driver itself at exit
(`--measure`): getrusage's ru_maxrss would include this script's own size, which exec keeps.
The log grows in users (8x the users, the same catalogue): the tables the model needs whole
(items, the model) stay the size of the catalogue.

    PYTHONPATH=src python benchmarks/scale_bench.py [--users 20000] [--scales 1,8]
"""

from __future__ import annotations

import atexit
import json
import os
import sys


def _measure(out: str, argv: list[str]) -> None:
    """Run `negseq argv` in this process; at exit, write this process's peak RSS to `out`."""

    def report() -> None:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        peak_kib = int(fields["VmHWM"].split()[0])
        with open(out, "w") as handle:
            json.dump({"peak_rss_mib": round(peak_kib / 1024, 1)}, handle)

    atexit.register(report)  # registered first: runs after Ray's own exit handlers
    from negseq.cli import main

    sys.exit(main(argv))


if len(sys.argv) > 2 and sys.argv[1] == "--measure":
    _measure(sys.argv[2], sys.argv[3:])

import argparse  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

RUN_JOB = """
name = "scale"

[data]
prepared = "{prepared}"
max_seq_len = {max_seq_len}

[sampler.negative_sampler]
num_sample = 32

[candidates]
neg_per_pos = 8
batch_size = 256

[model]
embedding_dim = 32
num_layers = 1

[train]
epochs = 1
max_steps = {steps}

[ray]
min_actors = 1
max_actors = 1

[output]
dir = "{out}"
write_samples = false
"""
GROWTH_TARGET = 0.15
RAY = str(Path(sys.executable).with_name("ray"))  # the Ray of this Python's environment


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def ray_env(**extra: str) -> dict[str, str]:
    """The head and its drivers without token authentication (one private machine; Ray 2.60
    turns it on when ~/.ray/auth_token exists, and then every client needs the mode set)."""
    return dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **extra)


class RayHead:
    """`ray start --head --block` in its own process group: stopped by signalling that group
    alone (never `ray stop`, which stops every Ray on the machine)."""

    def __init__(self, cpus: int, temp_dir: str) -> None:
        self.address = f"127.0.0.1:{_free_port()}"
        command = [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={self.address.split(':')[1]}",
            f"--num-cpus={cpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ]
        self.log = Path(temp_dir) / "ray-start.log"  # a file: a full pipe would block `ray start`
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=log, env=ray_env(), start_new_session=True
            )
        deadline = time.monotonic() + 180
        while True:
            try:
                probe = subprocess.run(
                    [RAY, "status", f"--address={self.address}"],
                    capture_output=True,
                    env=ray_env(),
                    timeout=60,
                )
                if probe.returncode == 0:
                    break
            except subprocess.TimeoutExpired:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head failed: {self.log.read_text()[-2000:]}")
            time.sleep(2)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # anything of the group still running
        except ProcessLookupError:
            pass


def _write_log(folder: Path, users: int, items: int, shards: int, seed: int) -> int:
    """The synthetic log in `shards` Parquet files (a subprocess: this script stays small)."""
    code = (
        "import sys, pyarrow.parquet as pq\n"
        "from negseq.synthetic import generate_interactions\n"
        "folder, users, items, shards, seed = sys.argv[1], *map(int, sys.argv[2:])\n"
        "log = generate_interactions(num_users=users, num_items=items, min_len=10, max_len=50, seed=seed)\n"
        "step = -(-log.num_rows // shards)\n"
        "for i in range(shards):\n"
        "    pq.write_table(log.slice(i * step, step), f'{folder}/part-{i:04d}.parquet')\n"
        "print(log.num_rows)\n"
    )
    folder.mkdir(parents=True)
    args = [str(folder), str(users), str(items), str(shards), str(seed)]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return int(proc.stdout.strip().splitlines()[-1])


def _driver(argv: list[str], env: dict[str, str], scratch: Path, timeout: int) -> dict:
    """Run `negseq argv` as a measured driver; its wall time and peak RSS."""
    out = scratch / f"peak-{time.monotonic_ns()}.json"
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", str(out), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"negseq {' '.join(argv)} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return {"seconds": round(seconds, 1), **json.loads(out.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=20000, help="users of the 1x log (default 20000)")
    parser.add_argument("--items", type=int, default=2000, help="catalogue size, every scale (default 2000)")
    parser.add_argument("--scales", default="1,8", help="log sizes, in multiples of --users (default 1,8)")
    parser.add_argument("--steps", type=int, default=5, help="training steps of the run (default 5)")
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray head (default 2)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds a command may take")
    args = parser.parse_args()
    scales = [int(s) for s in args.scales.split(",")]

    def emit(entry: dict) -> None:
        print(json.dumps(entry), flush=True)

    machine = {
        "cpus_online": os.cpu_count(),
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    scratch = Path(tempfile.mkdtemp(prefix="negseq-scale-"))
    temp_dir = tempfile.mkdtemp(prefix="rsb-", dir="/tmp")  # short: Ray's socket paths have a limit
    head = RayHead(args.cpus, temp_dir)
    results: dict[str, dict[int, dict]] = {"prepare": {}, "run": {}}
    try:
        env = ray_env(RAY_ADDRESS=head.address)
        for scale in scales:
            users = args.users * scale
            log = scratch / f"log-{scale}x"
            rows = _write_log(log, users, args.items, shards=2 * scale, seed=scale)
            prepared = scratch / f"prepared-{scale}x"
            load = _uptime()
            prep = _driver(
                ["prepare", str(log), "--out", str(prepared), "--ray", "--quiet"], env, scratch, args.timeout
            )
            shards = len(list((prepared / "train.parquet").iterdir()))
            entry = {"bench": "scale", "command": "negseq prepare --ray", "scale": scale, "users": users}
            emit({**entry, "interactions": rows, "shards": shards, **prep, "load": load})
            results["prepare"][scale] = prep
            job = scratch / f"run-{scale}x.toml"
            job.write_text(
                RUN_JOB.format(
                    prepared=prepared,
                    max_seq_len=args.max_seq_len,
                    steps=args.steps,
                    out=scratch / f"run-{scale}x",
                )
            )
            load = _uptime()
            run = _driver(["run", str(job), "--quiet"], env, scratch, args.timeout)
            entry = {
                "bench": "scale",
                "command": "negseq run (prepared, sharded)",
                "scale": scale,
                "users": users,
            }
            emit({**entry, "interactions": rows, "steps": args.steps, **run, "load": load})
            results["run"][scale] = run
    finally:
        head.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
    low, high = min(scales), max(scales)
    growth = {
        command: round(by_scale[high]["peak_rss_mib"] / by_scale[low]["peak_rss_mib"] - 1, 4)
        for command, by_scale in results.items()
    }
    emit(
        {
            "bench": "scale_summary",
            "scales": [low, high],
            "peak_rss_mib": {c: {s: r["peak_rss_mib"] for s, r in v.items()} for c, v in results.items()},
            "growth": growth,
            "target": f"growth < {GROWTH_TARGET:.0%}",
            "pass": {command: value < GROWTH_TARGET for command, value in growth.items()},
            "machine": machine,
            "load": _uptime(),
        }
    )


if __name__ == "__main__":
    main()
