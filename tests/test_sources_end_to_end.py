"""`negseq sample` over one input written as one file, as shards in a folder, as a glob, as a list
and as a `file://` URI: the same rows in the same order, so the same batches and the same
sampled files (a batch's negatives depend only on its key)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negseq.cli import main
from negseq.io.sinks import read_manifest, verify_outputs
from negseq.io.sources import Source

JOB = """
[input]
path = {path}

[sampler.negative_sampler]
input_path = "{items}"
num_sample = 3
item_id_field = "target"
seed = 9

[candidates]
layout = "suffix"
batch_size = 7

[output]
dir = "{out}"
"""


def _log(rows: int) -> pa.Table:
    ids = np.arange(rows, dtype=np.int64)
    return pa.table({"user_id": ids, "target": ids % 40 + 1})


def _sampled(folder: Path) -> pa.Table:
    return Source.open(str(folder / "part-*")).read_all()


@pytest.mark.timeout(120)
def test_one_input_as_file_shards_glob_list_and_uri_samples_the_same(tmp_path, capsys):
    log = _log(30)
    pq.write_table(pa.table({"id": np.arange(1, 41, dtype=np.int64)}), tmp_path / "items.parquet")
    pq.write_table(log, tmp_path / "whole.parquet", row_group_size=4)
    shards = tmp_path / "shards"
    (shards / "nested").mkdir(parents=True)
    pieces = [(0, 11), (11, 5), (16, 14)]  # cut across batches of 7
    paths = [shards / "a.parquet", shards / "b.parquet", shards / "nested" / "c.parquet"]
    for (start, count), path in zip(pieces, paths, strict=True):
        pq.write_table(log.slice(start, count), path, row_group_size=3)
    (shards / "_SUCCESS").write_text("")
    specs = {
        "file": str(tmp_path / "whole.parquet"),
        "folder": str(shards),
        "glob": str(shards / "**" / "*.parquet"),
        "list": [str(p) for p in reversed(paths)],
        "uri": f"file://{shards}",
    }
    outputs = {}
    for name, spec in specs.items():
        out = tmp_path / f"out-{name}"
        job = tmp_path / f"{name}.toml"
        job.write_text(JOB.format(path=json.dumps(spec), items=tmp_path / "items.parquet", out=out))
        assert main(["sample", str(job), "--quiet"]) == 0, capsys.readouterr().err
        assert verify_outputs(str(out)) == []
        manifest = read_manifest(str(out))
        assert manifest["rows_in"] == 30 and manifest["num_files"] == 5, name
        outputs[name] = _sampled(out)
    for name, table in outputs.items():
        assert table.equals(outputs["file"]), name


@pytest.mark.timeout(120)
def test_an_output_inside_a_sharded_input_is_refused(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(_log(10), shards / "a.parquet")
    pq.write_table(pa.table({"id": np.arange(1, 41, dtype=np.int64)}), tmp_path / "items.parquet")
    job = tmp_path / "job.toml"
    spec = json.dumps(str(shards / "*.parquet"))
    job.write_text(JOB.format(path=spec, items=tmp_path / "items.parquet", out=shards / "out"))
    assert main(["sample", str(job), "--quiet"]) == 2
    assert "overlaps the input" in capsys.readouterr().err
    assert sorted(p.name for p in shards.iterdir()) == ["a.parquet"]
