"""Folders `negseq sample` and `negseq run` write open unchanged in pyarrow.dataset, DuckDB
(`dir/*`, `dir/*.parquet`, `dir/**/*.parquet`) and Polars (`scan_parquet('dir/')`), and describe themselves:
the manifest (a Parquet file of the parts' schema) records the sampler, layout, counts, seed,
config hash, negseq version and the exact Arrow schema; each part its batch key (issue 16 item 4)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import negseq
from negseq.cli import main
from negseq.io.prepare import prepare
from negseq.synthetic import generate_interactions

pytestmark = pytest.mark.timeout(300)

SAMPLE_JOB = """
[input]
path = "prepared/train.parquet"

[sampler.negative_sampler]
input_path = "prepared/items.parquet"
num_sample = 4
attr_fields = ["target", "count", "weight"]
item_id_field = "target"
seed = 13

[candidates]
layout = "interleaved"
neg_per_pos = 2
batch_size = 40

[output]
dir = "sampled"
"""

RUN_JOB = """
name = "readers"

[data.synthetic]
num_users = 120
num_items = 60
min_len = 4
max_len = 9

[data]
max_seq_len = 8

[sampler.negative_sampler]
num_sample = 3
attr_fields = ["count"]

[candidates]
batch_size = 50

[model]
embedding_dim = 8
num_layers = 1

[train]
max_steps = 2
eval_ks = [10]

[ray]
executor = "local"

[output]
dir = "run"
"""


def _rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: json.dumps(r, sort_keys=True, default=str))


def _opens_everywhere(folder: Path) -> pa.Table:
    """The folder's rows as pyarrow.dataset, DuckDB and Polars read it: all the same."""
    parts = pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("part-*.parquet")))
    by_dataset = ds.dataset(folder).to_table()
    by_duckdb = duckdb.sql(f"select * from read_parquet('{folder}/*.parquet')").to_arrow_table()
    by_duckdb_deep = duckdb.sql(f"select count(*) from read_parquet('{folder}/**/*.parquet')").fetchall()
    # a bare `*` takes every file, the manifest too (a `_manifest.json` had no Parquet magic bytes)
    by_duckdb_star = duckdb.sql(f"select count(*) from read_parquet('{folder}/*')").fetchall()
    by_polars = pl.scan_parquet(f"{folder}/").collect()
    assert parts.num_rows > 0
    assert by_duckdb_deep == by_duckdb_star == [(parts.num_rows,)]
    assert by_dataset.schema.remove_metadata() == parts.schema.remove_metadata()
    assert _rows(by_dataset) == _rows(parts)
    assert by_duckdb.column_names == by_polars.columns == parts.column_names
    assert _rows(pa.table({n: by_duckdb[n].to_pylist() for n in by_duckdb.column_names})) == _rows(parts)
    assert _rows(pa.Table.from_pylist(by_polars.to_dicts())) == _rows(parts)
    return parts


def _manifest(folder: Path) -> dict:
    return json.loads(pq.read_schema(folder / "_manifest.parquet").metadata[b"negseq.manifest"])


def _describes_itself(folder: Path, parts: pa.Table) -> dict:
    manifest = _manifest(folder)
    exact = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(manifest["arrow_schema"])))
    assert exact.equals(parts.schema.remove_metadata())
    assert pq.read_schema(folder / "_manifest.parquet").remove_metadata().equals(exact)
    assert manifest["negseq_version"] == negseq.__version__ and len(manifest["config_hash"]) == 64
    for entry in manifest["files"]:
        key = json.loads(pq.read_schema(folder / entry["name"]).metadata[b"negseq.batch"])
        assert (key["batch_index"], key["rows_out"]) == (entry["batch_index"], entry["rows_out"])
        assert key["seed"] == manifest["seed"] and key["epoch"] == manifest["epoch"]
    return manifest


def test_negseq_sample_output_opens_in_pyarrow_duckdb_and_polars(tmp_path):
    prepare(generate_interactions(num_users=100, num_items=50, seed=2), tmp_path / "prepared")
    (tmp_path / "job.toml").write_text(SAMPLE_JOB)
    assert main(["sample", str(tmp_path / "job.toml"), "--quiet"]) == 0
    folder = tmp_path / "sampled"
    parts = _opens_everywhere(folder)
    assert parts.column_names[:4] == ["user_id", "uih", "uih_ts", "target"]
    assert parts.schema.field("count").type == pa.list_(pa.int64())  # the negatives' attributes
    manifest = _describes_itself(folder, parts)
    assert manifest["sampler"]["type"] == "negative_sampler"
    assert manifest["sampler"]["config"]["attr_fields"] == ["target", "count", "weight"]
    assert (manifest["layout"], manifest["neg_per_pos"], manifest["num_sample"]) == ("interleaved", 2, 4)
    assert (manifest["seed"], manifest["epoch"], manifest["batch_size"]) == (13, 0, 40)
    assert manifest["candidate_column"] == "target"
    assert manifest["attribute_columns"] == {"count": "count", "weight": "weight"}
    assert manifest["rows_in"] == manifest["rows_out"] == parts.num_rows == 100


def test_negseq_run_samples_open_in_pyarrow_duckdb_and_polars(tmp_path):
    (tmp_path / "job.toml").write_text(RUN_JOB)
    assert main(["run", str(tmp_path / "job.toml"), "--quiet"]) == 0
    folder = tmp_path / "run" / "samples"
    parts = _opens_everywhere(folder)
    assert "count" in parts.column_names  # the negatives' attr_fields reach negseq run's samples
    items = pq.read_table(tmp_path / "run" / "prepared" / "items.parquet")
    count_of = dict(zip(items["id"].to_pylist(), items["count"].to_pylist(), strict=True))
    for ids, counts in zip(parts["next_items"].to_pylist(), parts["count"].to_pylist(), strict=True):
        assert counts == [count_of[i] for i in ids]  # each candidate's own count, positives included
    manifest = _describes_itself(folder, parts)
    assert manifest["candidate_column"] == "next_items"
    assert manifest["attribute_columns"] == {"count": "count"}
    assert (manifest["layout"], manifest["neg_per_pos"], manifest["num_sample"]) == ("interleaved", 3, 3)
