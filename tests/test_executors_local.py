"""sample_batch on strings, lists and hard negatives, and the in-process executor: batches in
order, written once, the same key giving the same output."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negseq.batch import JaggedBatch
from negseq.candidates import CandidateSpec, sample_batch
from negseq.errors import NegseqError
from negseq.executors.local import LocalExecutor
from negseq.executors.plan import BatchWork, Collation, SamplingPlan
from negseq.io.sinks import SampledSink, read_manifest, verify_outputs
from negseq.io.sources import Source
from negseq.sampler import EdgeTable, HardNegativeSampler, ItemTable, NegativeSampler

ITEM_IDS = np.arange(100, 200, dtype=np.int64)


@pytest.fixture(scope="module")
def items():
    return ItemTable.from_arrow(pa.table({"id": ITEM_IDS, "weight": np.ones(len(ITEM_IDS))}))


def batch_of(rows, users=None):
    users = users if users is not None else list(range(len(rows)))
    return pa.record_batch({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(rows, pa.string())})


def test_interleaved_strings(items):
    sampler = NegativeSampler(items, num_sample=3, item_id_field="item_id", seed=5)
    batch = batch_of(["101;102", None, "", "103"])
    out = sample_batch(batch, sampler, CandidateSpec(), epoch=1, batch_index=7).to_arrow()
    assert out.schema.names == ["user_id", "item_id", "cand_pos_lengths"]
    assert out.column("cand_pos_lengths").to_pylist() == [2, 0, 0, 1]
    rows = out.column("item_id").to_pylist()
    assert rows[1] is None and rows[2] == ""
    first = rows[0].split(";")
    assert len(first) == 8 and first[0] == "101" and first[4] == "102"
    negs = [int(t) for i, t in enumerate(first) if i % 4] + [int(t) for t in rows[3].split(";")[1:]]
    expected = sampler.get({"item_id": pa.array([101, 102, 103])}, epoch=1, batch_index=7, per_positive=3).ids
    assert negs == expected.tolist()
    assert batch.column("item_id").to_pylist() == ["101;102", None, "", "103"]  # input untouched


def test_neg_per_pos_and_eval_count(items):
    sampler = NegativeSampler(items, num_sample=3, num_eval_sample=1, item_id_field="item_id", seed=5)
    batch = batch_of(["101;102"])
    out = sample_batch(batch, sampler, CandidateSpec(), training=False).to_arrow()
    assert len(out.column("item_id")[0].as_py().split(";")) == 2 * (1 + 1)
    out = sample_batch(batch, sampler, CandidateSpec(neg_per_pos=4)).to_arrow()
    assert len(out.column("item_id")[0].as_py().split(";")) == 2 * (1 + 4)


def test_same_key_same_output(items):
    sampler = NegativeSampler(items, num_sample=4, item_id_field="item_id", seed=9)
    batch = batch_of(["101;150", "160"])
    suffix = CandidateSpec(layout="suffix")
    a = sample_batch(batch, sampler, suffix, batch_index=3).to_arrow()
    b = sample_batch(batch, sampler, suffix, batch_index=3).to_arrow()
    c = sample_batch(batch, sampler, suffix, batch_index=4).to_arrow()
    assert a.equals(b) and not a.equals(c)
    assert len(a.column("item_id").to_pylist()[-1].split(";")) == 1 + 4


def test_suffix_with_hard_negatives_round_trips_to_jagged(items):
    hard = EdgeTable.from_arrow(
        pa.table({"userid": [0, 0, 1], "itemid": [190, 191, 192], "weight": [1.0, 2.0, 1.0]})
    )
    sampler = HardNegativeSampler(
        items,
        hard,
        num_sample=5,
        num_hard_sample=2,
        item_id_field="item_id",
        user_id_field="user_id",
        seed=1,
    )
    batch = pa.record_batch(
        {
            "user_id": pa.array([0, 1], pa.int64()),
            "uih": pa.array([[100, 101], [102]], pa.list_(pa.int64())),
            "item_id": pa.array([[110], [120, 121]], pa.list_(pa.int64())),
        }
    )
    sampled = sample_batch(batch, sampler, CandidateSpec(layout="suffix"))
    cand = sampled.to_arrow().column("item_id").to_pylist()
    assert cand[0] == [110] and cand[1][:2] == [120, 121] and len(cand[1]) == 2 + 5 + 4
    assert cand[1][-4:] == [191, 190, 192, 192]  # user 0: by weight desc; users 1, 1
    jb = JaggedBatch.from_arrays(sampled.to_jagged(items, uih_field="uih", max_seq_len=8))
    assert jb.num_shared_negatives == 5 and jb.num_hard_negatives == 4
    assert jb.hard_neg_indices.tolist() == [[0, 0], [0, 1], [1, 0], [2, 0]]
    assert jb.candidate.values[:3].tolist() == items.dense_rows(np.array([110, 120, 121])).tolist()
    with pytest.raises(NegseqError, match="suffix"):
        sample_batch(batch, sampler, CandidateSpec())


def _source(tmp_path, batches: list[pa.RecordBatch]) -> Source:
    """The batches as a Parquet file of small row groups (so batches cross row groups)."""
    pq.write_table(pa.Table.from_batches(batches), tmp_path / "input.parquet", row_group_size=3)
    return Source.open(str(tmp_path / "input.parquet"))


def _write(sampler, source: Source, out, batch_size: int, **executor) -> dict:
    plan = SamplingPlan(source, batch_size, CandidateSpec())
    sink = SampledSink.create(str(out), inputs=source.roots)
    work = BatchWork(sampler, plan, sink=sink)
    assert [s["batch_index"] for s in LocalExecutor(work, **executor).run(0)] == list(range(plan.num_batches))
    return sink.finish(
        expected_batches=range(plan.num_batches), describe=work.describe({"negative_sampler": {}})
    )


def test_executor_writes_in_order_and_exactly_once(items, tmp_path):
    sampler = NegativeSampler(items, num_sample=2, item_id_field="item_id", seed=3)
    rows = [batch_of([f"{100 + i};{101 + i}", str(150 + i)], users=[2 * i, 2 * i + 1]) for i in range(7)]
    source = _source(tmp_path, rows)
    manifest = _write(sampler, source, tmp_path / "out", 2, num_workers=2, max_in_flight=3)
    assert manifest["rows_in"] == manifest["rows_out"] == 14 and manifest["num_files"] == 7
    assert [f["batch_index"] for f in manifest["files"]] == list(range(7))
    expected = [sample_batch(b, sampler, CandidateSpec(), batch_index=i) for i, b in enumerate(rows)]
    assert manifest["sampler_stats"]["draws"] == sum(e.stats["draws"] for e in expected) > 0
    assert verify_outputs(str(tmp_path / "out")) == []
    written = pq.read_table(tmp_path / "out")
    assert written.column("item_id").to_pylist() == [
        v for e in expected for v in e.to_arrow().column("item_id").to_pylist()
    ]
    # a re-run with one worker rewrites the same names with the same bytes
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")}
    _write(sampler, source, tmp_path / "out", 2, num_workers=1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("part-*")} == before
    _write(sampler, source, tmp_path / "out", 5, num_workers=2)  # fewer batches: stale parts go
    assert read_manifest(str(tmp_path / "out"))["num_files"] == 3
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == [
        f"part-00000{i}.parquet" for i in range(3)
    ]


def test_executor_stops_on_bad_input_leaving_no_output(items, tmp_path):
    sampler = NegativeSampler(items, num_sample=2, item_id_field="item_id", seed=3)
    source = _source(tmp_path, [batch_of(["101"]), batch_of(["10x"])])
    with pytest.raises(NegseqError, match="token '10x'"):
        _write(sampler, source, tmp_path / "out", 1)
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".negseq-staging-")] == []


def test_collated_batches_come_in_order(items, tmp_path):
    sampler = NegativeSampler(items, num_sample=2, item_id_field="item_id", seed=3)
    rows = [
        pa.record_batch(
            {
                "uih": pa.array([[100 + i] * (i + 1)], pa.list_(pa.int64())),
                "item_id": pa.array([[101, 102]], pa.list_(pa.int64())),
            }
        )
        for i in range(5)
    ]
    source = _source(tmp_path, rows)
    work = BatchWork(sampler, SamplingPlan(source, 1, CandidateSpec()), collate=Collation(items, 3))
    out = [JaggedBatch.from_arrays(a) for a in LocalExecutor(work, num_workers=2).run(0)]
    assert [jb.uih.values.numel() for jb in out] == [1, 2, 3, 3, 3]
    assert all(jb.neg_per_pos == 2 and jb.candidate.values.numel() == 6 for jb in out)
