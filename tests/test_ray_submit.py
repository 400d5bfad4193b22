"""`ray job submit` runs `negseq run` on a cluster started with `ray start --head` (127.0.0.1).

Its own module, so no embedded Ray from another test module is alive beside the cluster."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")

from test_job_local import reference_metrics  # noqa: E402

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
def test_ray_job_submit_runs_negseq_run_on_a_started_cluster(tmp_path):
    import ray

    ray.shutdown()  # the session's embedded Ray, if an earlier module started one: one cluster at a time
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    gcs, dashboard, agent_http, agent_grpc, metrics, client = (_free_port() for _ in range(6))
    job = tmp_path / "job.toml"
    job.write_text(
        (REPO / "tests" / "data" / "tiny_job.toml").read_text().replace("OUTPUT_DIR", str(tmp_path / "out"))
    )
    head = subprocess.Popen(
        [
            str(bin_dir / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--ray-client-server-port={client}",
            "--num-cpus=2",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        submit = [
            str(bin_dir / "ray"),
            "job",
            "submit",
            f"--address=http://127.0.0.1:{dashboard}",
            "--",
            str(bin_dir / "negseq"),
            "run",
            "--quiet",
            str(job),
        ]
        deadline = time.monotonic() + 120
        while True:  # the job API and its agent come up a little after the head
            result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=400)
            not_ready = "Connection" in result.stderr or "try again later" in result.stderr
            if result.returncode == 0 or not not_ready or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "succeeded" in result.stdout
        metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
        # evaluated on the cluster's actors: the metrics recomputed here from the written
        # embeddings, eval rows and items, as the in-process evaluation computes them
        want = reference_metrics(tmp_path / "out", ks=(10, 50, 200))
        assert metrics["model"] == pytest.approx(want["model"], abs=1e-12)
        assert metrics["most_popular"] == pytest.approx(want["most_popular"], abs=1e-12)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
