"""`negseq run` with `[ray] executor = "local"`: the in-process executor, with Ray made unimportable."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

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


def _ranks(scores: np.ndarray, targets: np.ndarray, histories: list[list[int]]) -> np.ndarray:
    """0-based rank of each row's target column among all items, its history removed (not the
    target itself), ties going to the lower column: a plain loop over the rows."""
    ranks = np.empty(len(targets), np.int64)
    for row, (target, history) in enumerate(zip(targets, histories, strict=True)):
        line = scores[row].astype(np.float64)
        line[[h for h in history if h != target]] = -np.inf
        ahead = (line > line[target]) | ((line == line[target]) & (np.arange(len(line)) < target))
        ranks[row] = int(ahead.sum())
    return ranks


def _rank_metrics(ranks: np.ndarray, ks) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"HR@{k}"] = float(np.mean(ranks < k))
        out[f"NDCG@{k}"] = float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))
    out["MRR"] = float(np.mean(1.0 / (ranks + 1.0)))
    return out


def reference_metrics(out: Path, ks) -> dict[str, dict[str, float]]:
    """HR/NDCG/MRR of the written user and item embeddings on the prepared eval rows, and of
    ranking by the eval histories' item counts: negseq's evaluation redone with numpy."""
    items = pq.read_table(out / "prepared" / "items.parquet")["id"].to_pylist()
    column = {item: c for c, item in enumerate(items)}
    evaluation = pq.read_table(out / "prepared" / "eval.parquet")
    users = pa.ipc.open_file(out / "embeddings" / "user_embeddings.arrow").read_all()
    vectors = pa.ipc.open_file(out / "embeddings" / "item_embeddings.arrow").read_all()
    assert users["user_id"].to_pylist() == evaluation["user_id"].to_pylist()
    assert vectors["item_id"].to_pylist() == items
    user_emb = np.stack(users["embedding"].to_numpy(zero_copy_only=False))
    item_emb = np.stack(vectors["embedding"].to_numpy(zero_copy_only=False))
    targets = np.array([column[t] for t in evaluation["target"].to_pylist()])
    histories = [[column[i] for i in h] for h in evaluation["uih"].to_pylist()]
    scores = (torch.from_numpy(user_emb) @ torch.from_numpy(item_emb).T).numpy()
    counts = np.bincount([i for h in histories for i in h], minlength=len(items)).astype(np.float64)
    return {
        "model": _rank_metrics(_ranks(scores, targets, histories), ks),
        "most_popular": _rank_metrics(_ranks(np.tile(counts, (len(targets), 1)), targets, histories), ks),
    }


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
    # the metrics, recomputed here from what the run wrote (embeddings, eval rows, items)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    want = reference_metrics(tmp_path / "out", ks=(10, 50, 200))
    assert metrics["model"] == pytest.approx(want["model"], abs=1e-12)
    assert metrics["most_popular"] == pytest.approx(want["most_popular"], abs=1e-12)
    assert result["model"] == metrics["model"]
    samples = tmp_path / "out" / "samples"
    assert verify_outputs(str(samples)) == []
    assert read_manifest(str(samples))["sampler_stats"]["draws"] > 0
    # [train] seed (default 0) fixes the initial weights: a second run trains and scores the same
    again = _run_without_ray(job)
    for key in ("step", "loss", "mean_loss", "rows"):
        assert again["train"][key] == result["train"][key], key
    assert again["model"] == result["model"]
