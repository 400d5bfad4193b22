"""Readers and sampled-output writers: names, atomic writes, manifest, exactly-once re-runs."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negseq.errors import NegseqError
from negseq.pipeline import (
    CsvOptions,
    iter_batches,
    read_manifest,
    read_table,
    verify_outputs,
    write_batch_output,
    write_manifest,
)
from negseq.pipeline.io import manifest_files_and_stats


def _entries(out_dir, n, rows=3, fmt="parquet"):
    entries = []
    for i in range(n):
        batch = pa.record_batch({"x": list(range(i * rows, (i + 1) * rows))})
        path = write_batch_output(out_dir, i, batch, fmt)
        entries.append({"name": path.name, "batch_index": i, "rows_in": rows, "rows_out": rows})
    return entries, batch.schema


@pytest.mark.parametrize("fmt, ext", [("parquet", "parquet"), ("ipc", "arrow")])
def test_outputs_named_by_batch_index_and_read_back(tmp_path, fmt, ext):
    entries, schema = _entries(tmp_path, 3, fmt=fmt)
    write_manifest(tmp_path, rows_in=9, files=entries, schema=schema, seed=7, config_hash="abc")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["_manifest.json"] + [f"part-00000{i}.{ext}" for i in range(3)]
    manifest = read_manifest(tmp_path)
    assert manifest["rows_in"] == 9 and manifest["rows_out"] == 9 and manifest["seed"] == 7
    assert manifest["config_hash"] == "abc" and manifest["num_files"] == 3
    assert verify_outputs(tmp_path) == []
    assert read_table(tmp_path).column("x").to_pylist() == list(range(9))
    if fmt == "parquet":  # plain pyarrow skips the manifest
        assert pq.read_table(tmp_path).column("x").to_pylist() == list(range(9))


def test_rerun_rewrites_same_names_and_drops_stale_files(tmp_path):
    entries, schema = _entries(tmp_path, 4)
    write_manifest(tmp_path, rows_in=12, files=entries, schema=schema, seed=0, config_hash="a")
    entries, schema = _entries(tmp_path, 2)  # a smaller re-run into the same folder
    write_manifest(tmp_path, rows_in=6, files=entries, schema=schema, seed=0, config_hash="b")
    assert sorted(p.name for p in tmp_path.glob("part-*")) == [
        "part-000000.parquet",
        "part-000001.parquet",
    ]
    assert verify_outputs(tmp_path) == []
    assert not list(tmp_path.glob(".*tmp*"))


def test_verify_reports_missing_extra_and_wrong_counts(tmp_path):
    entries, schema = _entries(tmp_path, 2)
    write_manifest(tmp_path, rows_in=6, files=entries, schema=schema, seed=0, config_hash="a")
    (tmp_path / "part-000000.parquet").unlink()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "part-000001.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "part-000009.parquet")
    problems = verify_outputs(tmp_path)
    assert any("part-000000.parquet: listed in the manifest but missing" in p for p in problems)
    assert any("part-000001.parquet: 1 rows, manifest says 3" in p for p in problems)
    assert any("part-000009.parquet: not listed" in p for p in problems)


def test_crashed_write_leaves_no_half_file(tmp_path):
    class Boom:
        num_rows = 1
        schema = pa.schema([("x", pa.int64())])

    with pytest.raises(TypeError):
        write_batch_output(tmp_path, 0, Boom(), "parquet")
    assert list(tmp_path.iterdir()) == []


def test_manifest_missing_is_an_error(tmp_path):
    with pytest.raises(NegseqError, match="no manifest"):
        read_manifest(tmp_path)


def test_unknown_output_format(tmp_path):
    with pytest.raises(NegseqError, match="unknown output format 'csv'"):
        write_batch_output(tmp_path, 0, pa.record_batch({"x": [1]}), "csv")


def test_csv_with_delimiter_and_column_names(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    csv = CsvOptions(delimiter="\t", column_names=["user_id", "item_id", "rating", "timestamp"])
    table = read_table(path, format="csv", csv=csv)
    assert table.column("item_id").to_pylist() == [242, 302, 377]
    batches = list(iter_batches(path, batch_size=2, format="csv", csv=csv))
    assert [b.num_rows for b in batches] == [2, 1]


def test_iter_batches_never_exceeds_batch_size(tmp_path):
    pq.write_table(pa.table({"x": list(range(10))}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"x": list(range(10, 13))}), tmp_path / "b.parquet")
    batches = list(iter_batches(tmp_path, batch_size=4))
    assert all(b.num_rows <= 4 for b in batches)
    assert [v for b in batches for v in b.column("x").to_pylist()] == list(range(13))


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(NegseqError, match="no such file"):
        read_table(tmp_path / "nope.parquet")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(NegseqError, match="cannot tell the format"):
        read_table(tmp_path / "x.bin")


def test_manifest_is_json_with_schema(tmp_path):
    entries, schema = _entries(tmp_path, 1)
    path = write_manifest(tmp_path, rows_in=3, files=entries, schema=schema, seed=None, config_hash="")
    assert "x: int64" in json.loads(path.read_text())["schema"]


def test_manifest_files_and_stats_folds_batch_summaries():
    summaries = [
        {"name": "part-000000.parquet", "batch_index": 0, "rows_in": 3, "rows_out": 3, "stat_draws": 5},
        {
            "batch_index": 1,
            "name": "part-000001.parquet",
            "rows_in": 2,
            "rows_out": 2,
            "stat_draws": 4,
            "stat_redraws": None,  # absent in this batch (Arrow fills it with null)
            "schema": b"ignored",
        },
    ]
    files, totals = manifest_files_and_stats(summaries)
    assert files == [
        {"name": "part-000000.parquet", "batch_index": 0, "rows_in": 3, "rows_out": 3},
        {"name": "part-000001.parquet", "batch_index": 1, "rows_in": 2, "rows_out": 2},
    ]
    assert list(files[1]) == ["name", "batch_index", "rows_in", "rows_out"]
    assert totals == {"draws": 9}


def test_folder_format_is_detected_from_the_files_it_reads(tmp_path):
    # `_`-prefixed and hidden files are skipped when reading, so they must not decide the format
    (tmp_path / "_notes.csv").write_text("x\n1\n")
    (tmp_path / ".part-000000.parquet.tmp-1-abc.csv").write_text("x\n2\n")
    pq.write_table(pa.table({"x": [5, 6]}), tmp_path / "a.parquet")
    assert read_table(tmp_path).column("x").to_pylist() == [5, 6]
