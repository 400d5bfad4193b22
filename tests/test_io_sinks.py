"""Sampled-output sinks: parts and a Parquet manifest that pyarrow, DuckDB and Polars open unchanged,
and the data-safety rules of DESIGN §9 (foreign files, overlapping inputs, failed and interrupted
runs leave what was there)."""

from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import negseq
from negseq.candidates import CandidateSpec, sample_batch
from negseq.errors import NegseqError
from negseq.io.sinks import SampledSink, read_manifest, verify_outputs
from negseq.sampler import ItemTable, NegativeSampler

DESCRIBE = {"seed": 3, "layout": "interleaved"}


def _sampled(batches: int, rows: int = 4, seed: int = 3):
    items = ItemTable.from_arrow(pa.table({"id": np.arange(1, 51, dtype=np.int64)}))
    sampler = NegativeSampler(items, num_sample=2, item_id_field="target", seed=seed)
    out = []
    for index in range(batches):
        batch = pa.record_batch(
            {
                "user_id": pa.array(np.arange(rows) + 10 * index, pa.int64()),
                "target": pa.array((np.arange(rows) + index) % 50 + 1, pa.int64()),
                "name": pa.array([f"名前{i}" for i in range(rows)]),
            }
        )
        out.append(sample_batch(batch, sampler, CandidateSpec(), batch_index=index))
    return out


def _run(out, batches, fmt="parquet", inputs=()):
    sink = SampledSink.create(str(out), format=fmt, inputs=inputs)
    for sampled in batches:
        sink.write(sampled)
    return sink.finish(expected_batches=range(len(batches)), describe=DESCRIBE)


def _snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_finished_folder_opens_in_pyarrow_duckdb_and_polars(tmp_path):
    manifest = _run(tmp_path / "out", _sampled(3))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "_manifest.parquet",
        "part-000000.parquet",
        "part-000001.parquet",
        "part-000002.parquet",
    ]
    assert manifest["rows_in"] == manifest["rows_out"] == 12 and manifest["num_files"] == 3
    assert manifest["negseq_version"] == negseq.__version__ and manifest["seed"] == 3
    assert ds.dataset(out).count_rows() == 12
    assert duckdb.sql(f"select count(*) from read_parquet('{out}/*.parquet')").fetchall() == [(12,)]
    assert duckdb.sql(f"select count(*) from read_parquet('{out}/**/*.parquet')").fetchall() == [(12,)]
    assert pl.scan_parquet(f"{out}/").collect().height == 12
    # the manifest's Arrow schema is the parts' schema, exactly
    part_schema = pq.read_schema(out / "part-000001.parquet")
    assert pq.read_schema(out / "_manifest.parquet").remove_metadata() == part_schema.remove_metadata()
    key = json.loads(part_schema.metadata[b"negseq.batch"])
    assert key == {
        "seed": 3,
        "epoch": 0,
        "batch_index": 1,
        "rows_in": 4,
        "rows_out": 4,
        "stats": key["stats"],
    }
    assert read_manifest(str(out)) == manifest and verify_outputs(str(out)) == []


def test_ipc_outputs_have_an_arrow_manifest(tmp_path):
    manifest = _run(tmp_path / "out", _sampled(2), fmt="ipc")
    assert manifest["format"] == "ipc"
    assert (tmp_path / "out" / "_manifest.arrow").exists()
    assert ds.dataset(tmp_path / "out", format="ipc").count_rows() == 8
    assert verify_outputs(str(tmp_path / "out")) == []


def test_a_rerun_replaces_the_previous_output_exactly(tmp_path):
    _run(tmp_path / "out", _sampled(3))
    manifest = _run(tmp_path / "out", _sampled(2, seed=9))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "_manifest.parquet",
        "part-000000.parquet",
        "part-000001.parquet",
    ]
    assert manifest["num_files"] == 2 and verify_outputs(str(tmp_path / "out")) == []


def test_a_folder_holding_foreign_files_is_refused_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-123456.parquet").write_bytes(b"not ours")
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    with pytest.raises(
        NegseqError, match="holds files negseq did not write \\(notes.txt, part-123456.parquet\\)"
    ):
        SampledSink.create(str(out))
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)


def test_a_foreign_file_beside_a_previous_output_is_refused(tmp_path):
    _run(tmp_path / "out", _sampled(2))
    (tmp_path / "out" / "part-000007.parquet").write_bytes(b"someone else's")
    with pytest.raises(NegseqError, match="part-000007.parquet"):
        SampledSink.create(str(tmp_path / "out"))
    assert (tmp_path / "out" / "part-000007.parquet").read_bytes() == b"someone else's"


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_an_output_overlapping_the_input_is_refused(tmp_path, where):
    data = tmp_path / "data"
    data.mkdir()
    out = {"same": data, "inside": data / "sampled", "around": tmp_path}[where]
    with pytest.raises(NegseqError, match="overlaps the input"):
        SampledSink.create(str(out), inputs=[str(data)])
    assert sorted(p.name for p in data.iterdir()) == []


def test_a_failed_run_leaves_the_previous_output_as_it_was(tmp_path):
    _run(tmp_path / "out", _sampled(3))
    before = _snapshot(tmp_path / "out")
    sink = SampledSink.create(str(tmp_path / "out"))
    for sampled in _sampled(2, seed=5):
        sink.write(sampled)
    sink.abort()  # the run failed after writing two parts
    assert _snapshot(tmp_path / "out") == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(before)
    assert verify_outputs(str(tmp_path / "out")) == []


def test_finish_refuses_a_run_that_missed_batches(tmp_path):
    sink = SampledSink.create(str(tmp_path / "out"))
    sink.write(_sampled(2)[1])
    with pytest.raises(NegseqError, match=r"missing \[0\], unexpected \[\]"):
        sink.finish(expected_batches=[0, 1], describe=DESCRIBE)


class _CutAfter(pafs.LocalFileSystem):
    """A filesystem whose `move` fails after `moves` calls: a swap cut short (SIGKILL, disk full)."""

    def __init__(self, moves: int) -> None:
        super().__init__()
        self.moves = moves

    def move(self, src, dest):
        if self.moves == 0:
            raise OSError("cut")
        self.moves -= 1
        return super().move(src, dest)


@pytest.mark.parametrize("moves", [1, 2, 3])
def test_a_swap_cut_short_is_unfinished_and_the_next_run_recovers(tmp_path, moves):
    out = tmp_path / "out"
    _run(out, _sampled(4))
    sink = SampledSink.create(str(out))
    for sampled in _sampled(2, seed=11):
        sink.write(sampled)
    cut = SampledSink(sink.out, _CutAfter(moves + 2), sink.format, sink.staging, sink.label)  # 2 writes moved
    cut.filesystem.moves = moves
    with pytest.raises(OSError, match="cut"):
        cut.finish(expected_batches=[0, 1], describe=DESCRIBE)
    with pytest.raises(
        NegseqError, match="no _manifest.parquet or _manifest.arrow: a run is in progress or was cut"
    ):
        read_manifest(str(out))
    manifest = _run(out, _sampled(1, seed=12))  # every file left behind is provably negseq's
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.parquet", "part-000000.parquet"]
    assert manifest["num_files"] == 1 and verify_outputs(str(out)) == []


def test_verify_reports_missing_extra_and_wrong_counts(tmp_path):
    out = tmp_path / "out"
    _run(out, _sampled(3))
    os.remove(out / "part-000001.parquet")
    pq.write_table(pq.read_table(out / "part-000002.parquet").slice(0, 1), out / "part-000002.parquet")
    pq.write_table(pq.read_table(out / "part-000000.parquet"), out / "part-000009.parquet")
    problems = verify_outputs(str(out))
    assert problems == [
        "part-000001.parquet: listed in the manifest but missing",
        "part-000002.parquet: 1 rows, manifest says 4",
        "part-000009.parquet: not listed in the manifest",
    ]


def test_unknown_output_format_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(NegseqError, match="unknown output format 'csv'"):
        SampledSink.create(str(tmp_path / "out"), format="csv")
    assert not (tmp_path / "out").exists()
