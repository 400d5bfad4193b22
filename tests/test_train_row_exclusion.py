"""`exclude = "user"` in `negseq run`: the sampler's draw-time exclusion in the interleaved
layout, the model's per-query mask in both, and no draw-time exclusion in the suffix layout."""

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from negseq.config import SamplerConfig, load_config
from negseq.job import train_settings
from negseq.train.row_exclusion import masks_row_positives, training_sampler_config

REPO = Path(__file__).resolve().parents[1]


def _job(layout: str, exclude: str, out: str = "/tmp/unused") -> dict:
    raw = tomllib.loads((REPO / "tests" / "data" / "tiny_job.toml").read_text().replace("OUTPUT_DIR", out))
    raw["sampler"]["negative_sampler"]["exclude"] = exclude
    raw["candidates"]["layout"] = layout
    if layout == "suffix":
        del raw["candidates"]["neg_per_pos"]
    return raw


@pytest.mark.parametrize(
    ("layout", "exclude", "drawn_with", "masked"),
    [
        ("interleaved", "user", "user", True),  # redrawn at draw time, kept collisions masked
        ("suffix", "user", "none", True),  # shared draws: the model masks per query instead
        ("interleaved", "none", "none", False),
        ("suffix", "batch", "batch", False),
    ],
)
def test_user_exclusion_by_layout(layout, exclude, drawn_with, masked):
    config = load_config(_job(layout, exclude), command="run", source="job.toml")
    assert training_sampler_config(config).exclude == drawn_with
    assert masks_row_positives(config) is masked
    assert train_settings(config, 100).model["mask_row_positives"] is masked
    assert config.sampler is not None and config.sampler.exclude == exclude  # the job's, unchanged


def test_samplers_without_exclude_never_mask():
    config = load_config(_job("suffix", "user"), command="run", source="job.toml")
    v2 = SamplerConfig(kind="negative_sampler_v2", num_sample=4, item_id_field="item", user_id_field="user")
    config = dataclasses.replace(config, sampler=v2)
    assert not masks_row_positives(config)
    assert training_sampler_config(config) is v2


@pytest.mark.timeout(300)
def test_suffix_user_job_trains_with_the_mask(tmp_path):
    from negseq.io.sinks import read_manifest
    from negseq.job import run_job

    raw = _job("suffix", "user", str(tmp_path / "out"))
    raw["ray"]["executor"] = "local"
    raw["output"]["write_samples"] = True
    result = run_job(load_config(raw, command="run", source="job.toml"), quiet=True)
    assert result["train"]["step"] == 3
    # the written samples' manifest says how they were drawn: with no exclusion
    sampler = read_manifest(result["outputs"]["samples"])["sampler"]
    assert sampler["type"] == "negative_sampler" and sampler["config"]["exclude"] == "none"
    assert 0.0 <= result["model"]["HR@10"] <= 1.0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["model"] == result["model"]
