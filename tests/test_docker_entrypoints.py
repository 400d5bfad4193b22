"""Each image's entrypoint, run directly outside Docker (no engine here) to prove it starts:
the compose `sampler` command with the image's job file and health probe, and the compose
`ray-head` + `job` commands (`ray start --head`, `ray health-check`, `ray job submit -- negseq run`)
with token auth as compose sets it up."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from certs import make_pki

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration


def _compose_service(name: str) -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"][name]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN))
    assert found, f"{name} not installed next to {sys.executable}"
    return found


def _health(address: str, token_file: Path | None, ca: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NEGSEQ_HEALTH_ADDRESS": address}
    for name in (
        "NEGSEQ_TOKEN_FILE",
        "NEGSEQ_TLS_ROOT_CERTS",
        "NEGSEQ_TLS_CLIENT_CERT",
        "NEGSEQ_TLS_CLIENT_KEY",
    ):
        env.pop(name, None)
    if token_file is not None:
        env["NEGSEQ_TOKEN_FILE"] = str(token_file)
    if ca is not None:
        env["NEGSEQ_TLS_ROOT_CERTS"] = str(ca)
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.timeout(120)
def test_sampler_entrypoint_serves_tls_is_healthy_and_stops_on_sigterm(tmp_path):
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"id": np.arange(1, 1001, dtype=np.int64), "weight": np.ones(1000)}), items)
    job = tmp_path / "sampler.toml"  # the image's job file, with the data volume's path swapped
    job.write_text((DOCKER / "sampler.toml").read_text().replace("/data/items.parquet", str(items)))
    token = tmp_path / "sampler_token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)  # as docs/deploy.md has the secret files made
    pki = make_pki(tmp_path)
    command = list(_compose_service("sampler")["command"])
    assert command[:2] == ["negseq", "serve"]
    command[0] = _tool("negseq")
    swap = {
        "--config": str(job),
        "--host": "127.0.0.1",  # 0.0.0.0 inside the container
        "--port": "0",
        "--token-file": str(token),
        "--tls-cert": str(pki.server.cert_file),
        "--tls-key": str(pki.server.key_file),
        "--metrics-port": "0",
    }
    assert set(swap) <= set(command), command
    for flag, value in swap.items():
        command[command.index(flag) + 1] = value

    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address, metrics, seen = None, None, []
        for line in server.stdout:
            seen.append(line)
            if "listening on " in line:
                address = line.split("listening on ", 1)[1].strip()
            if "metrics on " in line:
                metrics = line.split("metrics on ", 1)[1].strip()
                break
        assert address and address.startswith("grpc+tls://127.0.0.1:"), "".join(seen)
        assert metrics and metrics.startswith("http://127.0.0.1:"), "".join(seen)
        # the compose probe's address names localhost, which the certificate names too
        address = address.replace("127.0.0.1", "localhost")

        healthy = _health(address, token, pki.ca.cert_file)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert healthy.stdout.strip() == f"{address}: ok"
        wrong = tmp_path / "wrong_token"
        wrong.write_text("not-the-token")
        wrong.chmod(0o600)
        refused = _health(address, wrong, pki.ca.cert_file)
        assert refused.returncode == 1 and "unhealthy" in refused.stderr
        assert _health(address, None, pki.ca.cert_file).returncode == 1
        untrusted = _health(address, token, pki.other_ca.cert_file)
        assert untrusted.returncode == 1 and "handshake" in untrusted.stderr.lower()
        with urllib.request.urlopen(metrics, timeout=10) as response:
            assert "negseq_requests_total" in response.read().decode()

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert _health(address, token, pki.ca.cert_file).returncode == 1  # down


@pytest.mark.timeout(300)
def test_ray_head_and_job_entrypoints_run_negseq_under_token_auth(tmp_path):
    head_cmd = " ".join(_compose_service("ray-head")["command"].split())
    job_cmd = " ".join(_compose_service("job")["command"].split())
    kind, head_health = _compose_service("ray-head")["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    assert head_cmd.startswith("ray start --head --port=6379 --dashboard-host=0.0.0.0 --dashboard-port=8265")
    assert job_cmd.startswith("ray job submit --address http://ray-head:8265 -- negseq run ")

    token = tmp_path / "ray_auth_token"
    token.write_text(os.urandom(32).hex())
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",  # what compose sets on every Ray container and the client
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    gcs, dashboard = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="nsq", dir="/tmp")  # unix socket paths must stay short
    head = subprocess.Popen(
        [
            _tool("ray"), "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
            f"--temp-dir={temp_dir}", "--block",
        ],
        cwd=tmp_path,  # the job driver's working directory, as /outputs is in the image
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        probe = head_health.replace("127.0.0.1:6379", f"127.0.0.1:{gcs}").replace(":8265", f":{dashboard}")
        while True:  # the compose health check of ray-head: GCS up and job API up
            if subprocess.run(probe, shell=True, env=env, capture_output=True).returncode == 0:
                break
            assert head.poll() is None and time.monotonic() < deadline, "ray head did not become healthy"
            time.sleep(2)
        submit = subprocess.run(
            [
                _tool("ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                "--", "negseq", "run", "--help",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout + submit.stderr
        assert "usage: negseq run" in submit.stdout

        no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        refused = subprocess.run(
            [_tool("ray"), "job", "list", "--address", f"http://127.0.0.1:{dashboard}"],
            env=no_token,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0 and "authentication" in (refused.stdout + refused.stderr).lower()
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its node on exit
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
