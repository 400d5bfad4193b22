"""A shortened ml-100k run of benchmarks/train_ml100k.py: it must learn (the full run's
numbers are in benchmarks/RESULTS.md; this asserts learning, not the final HR)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path("/work/shared/data/ml-100k/u.data")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.timeout(600)
@pytest.mark.skipif(not DATA.exists(), reason=f"MovieLens-100K is not at {DATA} (licence: not in the repo)")
def test_short_ml100k_run_learns():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "train_ml100k.py"),
        "--data",
        str(DATA),
        "--max-users",
        "300",
        "--epochs",
        "4",
        "--neg-per-pos",
        "16",
        "--threads",
        "1",
        "--quiet",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=580, check=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["users"] == 300 and summary["epochs"] == 4
    assert summary["last_epoch_loss"] < summary["first_epoch_loss"] - 0.2
    # far better than ranking at random (HR@50 of a random ranking is about 50 / items)
    assert summary["model"]["HR@50"] > 2 * 50 / summary["items"]
    assert 0 < summary["most_popular"]["HR@10"] < 1
