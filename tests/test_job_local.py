"""`negseq run` with `[ray] executor = "local"`: the in-process executor, with Ray made unimportable."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from negseq.io.sinks import read_manifest, verify_outputs

REPO = Path(__file__).resolve().parents[1]
RUN_WITHOUT_RAY = """
import json, sys
sys.modules["ray"] = None  # any `import ray` now raises ImportError
from negseq.config import load_config
from negseq.job import run_job
result = run_job(load_config(sys.argv[1], command="run"), quiet=True)
print(json.dumps({"train": result["train"], "model": result["model"]}))
"""


def _run_without_ray(job: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_RAY, str(job)], capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
def test_the_local_executor_runs_a_job_without_ray_and_repeats_it(tmp_path):
    text = (REPO / "tests" / "data" / "tiny_job.toml").read_text()
    text = text.replace("OUTPUT_DIR", str(tmp_path / "out")).replace("[ray]\n", '[ray]\nexecutor = "local"\n')
    text = text.replace("write_samples = false", "write_samples = true")
    job = tmp_path / "job.toml"
    job.write_text(text)
    result = _run_without_ray(job)
    assert result["train"]["step"] == 3  # [train] max_steps
    assert math.isfinite(result["train"]["loss"]) and result["train"]["rows"] > 0
    assert 0.0 <= result["model"]["HR@10"] <= 1.0
    samples = tmp_path / "out" / "samples"
    assert verify_outputs(str(samples)) == []
    assert read_manifest(str(samples))["sampler_stats"]["draws"] > 0
    # [train] seed (default 0) fixes the initial weights: a second run trains and scores the same
    again = _run_without_ray(job)
    for key in ("step", "loss", "mean_loss", "rows"):
        assert again["train"][key] == result["train"][key], key
    assert again["model"] == result["model"]
