"""sample_candidates and the local executor with the real samplers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from negseq.errors import NegseqError
from negseq.pipeline import (
    LocalExecutor,
    read_manifest,
    read_table,
    sample_candidates,
    sample_candidates_and_stats,
    to_jagged_batch,
    verify_outputs,
)
from negseq.pipeline.plans import SamplingPlan
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
    out = sample_candidates(batch, sampler, layout="interleaved", epoch=1, batch_index=7)
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
    out = sample_candidates(batch, sampler, layout="interleaved", training=False)
    assert len(out.column("item_id")[0].as_py().split(";")) == 2 * (1 + 1)
    out = sample_candidates(batch, sampler, layout="interleaved", neg_per_pos=4)
    assert len(out.column("item_id")[0].as_py().split(";")) == 2 * (1 + 4)
    with pytest.raises(NegseqError, match="neg_per_pos applies to the 'interleaved' layout"):
        sample_candidates(batch, sampler, layout="suffix", neg_per_pos=4)


def test_same_key_same_output(items):
    sampler = NegativeSampler(items, num_sample=4, item_id_field="item_id", seed=9)
    batch = batch_of(["101;150", "160"])
    a = sample_candidates(batch, sampler, layout="suffix", batch_index=3)
    b = sample_candidates(batch, sampler, layout="suffix", batch_index=3)
    c = sample_candidates(batch, sampler, layout="suffix", batch_index=4)
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
    out = sample_candidates(batch, sampler, layout="suffix")
    cand = out.column("item_id").to_pylist()
    assert cand[0] == [110] and cand[1][:2] == [120, 121] and len(cand[1]) == 2 + 5 + 4
    assert cand[1][-4:] == [191, 190, 192, 192]  # user 0: by weight desc; users 1, 1
    jb = to_jagged_batch(
        out, items=items, uih_field="uih", candidate_field="item_id", max_seq_len=8, layout="suffix"
    )
    assert jb.num_shared_negatives == 5 and jb.num_hard_negatives == 4
    assert jb.hard_neg_indices.tolist() == [[0, 0], [0, 1], [1, 0], [2, 0]]
    assert jb.candidate.values[:3].tolist() == items.dense_rows(np.array([110, 120, 121])).tolist()
    with pytest.raises(NegseqError, match="suffix"):
        sample_candidates(batch, sampler, layout="interleaved")


def test_executor_writes_in_order_and_exactly_once(items, tmp_path):
    sampler = NegativeSampler(items, num_sample=2, item_id_field="item_id", seed=3)
    batches = [batch_of([f"{100 + i};{101 + i}", str(150 + i)]) for i in range(7)]
    executor = LocalExecutor(sampler, layout="interleaved", num_workers=2, max_in_flight=3)
    manifest = executor.write(batches, tmp_path, config_hash="h")
    assert manifest["rows_in"] == manifest["rows_out"] == 14 and manifest["num_files"] == 7
    assert [f["batch_index"] for f in manifest["files"]] == list(range(7))
    draws = [
        sample_candidates_and_stats(b, sampler, layout="interleaved", batch_index=i)[1]["draws"]
        for i, b in enumerate(batches)
    ]
    assert manifest["sampler_stats"]["draws"] == sum(draws) > 0
    assert verify_outputs(tmp_path) == []
    first = read_table(tmp_path)
    expected = [
        sample_candidates(b, sampler, layout="interleaved", batch_index=i) for i, b in enumerate(batches)
    ]
    assert first.column("item_id").to_pylist() == [
        v for b in expected for v in b.column("item_id").to_pylist()
    ]
    # a re-run (e.g. after a crash) rewrites the same names with the same bytes' content
    executor.write(batches[:3], tmp_path, config_hash="h2")
    assert read_manifest(tmp_path)["num_files"] == 3
    assert sorted(p.name for p in tmp_path.glob("part-*")) == [f"part-00000{i}.parquet" for i in range(3)]


def test_executor_stops_on_bad_input_without_manifest(items, tmp_path):
    sampler = NegativeSampler(items, num_sample=2, item_id_field="item_id", seed=3)
    batches = [batch_of(["101"]), batch_of(["10x"])]
    with pytest.raises(NegseqError, match="token '10x'"):
        LocalExecutor(sampler, layout="interleaved").write(batches, tmp_path)
    assert not (tmp_path / "_manifest.json").exists()


def test_iter_jagged_in_order(items):
    sampler = NegativeSampler(items, num_sample=2, item_id_field="item_id", seed=3)
    batches = [
        pa.record_batch(
            {
                "uih": pa.array([[100 + i] * (i + 1)], pa.list_(pa.int64())),
                "item_id": pa.array([[101, 102]], pa.list_(pa.int64())),
            }
        )
        for i in range(5)
    ]
    executor = LocalExecutor(sampler, layout="interleaved", num_workers=2)
    out = list(executor.iter_jagged(batches, items=items, uih_field="uih", max_seq_len=3))
    assert [jb.uih.values.numel() for jb in out] == [1, 2, 3, 3, 3]
    assert all(jb.neg_per_pos == 2 and jb.candidate.values.numel() == 6 for jb in out)


def test_sampling_plan_cuts_batches_by_row_number_whatever_the_chunks():
    # chunks of 5 and 7 rows: to_batches(max_chunksize=4) would cut [0..3], [4], [5..8], [9..11]
    table = pa.concat_tables([pa.table({"x": list(range(5))}), pa.table({"x": list(range(5, 12))})])
    plan = SamplingPlan(batch_size=4, layout="interleaved")
    cut = [plan.batch(table, i).column("x").to_pylist() for i in range(plan.num_batches(table.num_rows))]
    assert cut == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(NegseqError, match="batch 3 is past the end"):
        plan.batch(table, 3)
