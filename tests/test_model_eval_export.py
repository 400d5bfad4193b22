"""Full-corpus metrics, the most-popular baseline, export round trip and predict."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from negseq.batch import JaggedFeature
from negseq.errors import NegseqError
from negseq.io.sources import Source
from negseq.model.export import export, load_tower, padded_history, predict
from negseq.model.hstu_match import HSTUMatch, STUConfig
from negseq.model.inputs import history_feature, list_column
from negseq.model.metrics import chunked_target_ranks, evaluate, item_counts, rank_metrics, target_ranks
from negseq.sampler import ItemTable

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def items():
    ids = np.array([100, 200, 300, 400, 500, 600], dtype=np.int64)
    return ItemTable.from_arrow(pa.table({"id": ids, "weight": np.ones(6)}))


def sequences(uih, target, user_ids=None, ts=True):
    cols = {
        "user_id": pa.array(user_ids or list(range(len(uih))), pa.int64()),
        "uih": pa.array(uih, pa.list_(pa.int64())),
        "target": pa.array(target, pa.int64()),
    }
    if ts:
        cols["uih_ts"] = pa.array(
            [None if r is None else [10 * i for i in range(len(r))] for r in uih], pa.list_(pa.int64())
        )
    return pa.table(cols)


def test_target_ranks_exclude_history_but_not_the_target():
    # columns: 0 (unknown), 1..5
    scores = torch.tensor([[9.0, 5.0, 4.0, 3.0, 2.0, 1.0], [9.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    targets = torch.tensor([3, 2])
    history = torch.tensor([1, 3, 2])  # row 0 saw items 1 and 3 (its own target), row 1 saw 2
    ranks = target_ranks(scores, targets, history, torch.tensor([0, 2, 3]))
    # row 0: item 1 removed, item 2 ahead -> rank 1; row 1: its target is in its history: kept, rank 1
    assert ranks.tolist() == [1, 1]


def test_ties_break_by_item_row_and_unknown_targets_miss():
    scores = torch.zeros(2, 5)
    ranks = target_ranks(
        scores, torch.tensor([3, 0]), torch.zeros(0, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)
    )
    assert ranks.tolist() == [2, 5]


def test_rank_metrics_by_hand():
    m = rank_metrics(torch.tensor([0, 3, 12]), ks=(1, 10))
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx((1.0 + 1 / math.log2(5)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 4 + 1 / 13) / 3)


def test_list_column_handles_nulls_slices_and_rejects_bad_types():
    table = sequences([[100, 200], None, [], [300]], [1, 2, 3, 4]).slice(1)
    values, offsets = list_column(table, "uih")
    assert values.tolist() == [300] and offsets.tolist() == [0, 0, 0, 1]
    with pytest.raises(NegseqError, match="column 'target' must be a list"):
        list_column(table, "target")
    with pytest.raises(NegseqError, match="no column 'nope'"):
        list_column(table, "nope")


def test_evaluate_most_popular_baseline_by_hand(items):
    model = HSTUMatch(len(items), 8, max_seq_len=4)
    table = sequences([[100, 200], [100], [300, 100]], [300, 200, 600])
    counts = np.array([0, 10, 9, 8, 7, 6, 5])  # dense rows 1..6 = ids 100..600
    out = evaluate(model, table, items, ks=(1, 3), counts=counts)
    # user 0: 100, 200 excluded -> 300 first (rank 0); user 1: 100 excluded -> 200 first;
    # user 2: 300 and 100 excluded -> 200, 400, 500 ahead of 600 (rank 3)
    assert out["most_popular"]["HR@1"] == pytest.approx(2 / 3)
    assert out["most_popular"]["HR@3"] == pytest.approx(2 / 3)
    assert out["most_popular"]["MRR"] == pytest.approx((1 + 1 + 1 / 4) / 3)
    assert out["num_users"] == 3
    assert set(out["model"]) == {"HR@1", "NDCG@1", "HR@3", "NDCG@3", "MRR"}
    # default counts: the eval table's own histories
    assert item_counts(table, items).tolist() == [0, 3, 1, 1, 0, 0, 0]
    with pytest.raises(NegseqError, match="eval table is empty"):
        evaluate(model, table.slice(0, 0), items)


def test_evaluate_ranks_with_the_models_own_scores(items):
    torch.manual_seed(0)
    model = HSTUMatch(len(items), 8, max_seq_len=4).eval()
    table = sequences([[100, 200], [400]], [300, 600])
    out = evaluate(model, table, items, ks=(6,))
    uih = history_feature(table, items, with_timestamps=False)
    scores = model.user_embeddings(uih) @ model.item_embeddings(torch.arange(7)).T
    ranks = target_ranks(scores, torch.tensor([3, 6]), uih.values, uih.offsets)
    assert out["model"]["MRR"] == pytest.approx(float((1.0 / (ranks + 1.0)).mean()))
    assert out["model"]["HR@6"] == 1.0  # 6 items, some excluded: every target is in the top 6


def trained_like_model(num_time_buckets=0):
    torch.manual_seed(1)
    model = HSTUMatch(6, 8, stu=STUConfig(num_heads=2), max_seq_len=5, num_time_buckets=num_time_buckets)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


FRESH_SERVER = """
import json, sys
import pyarrow as pa
import torch

meta = json.load(open("towers.json"))
user = torch.export.load("user_tower.pt2").module()
item = torch.export.load("item_tower.pt2").module()
vocab = pa.ipc.open_file(meta["item_vocabulary"]["file"]).read_all()
row_of = dict(zip(vocab.column("item_id").to_pylist(), vocab.column("row").to_pylist()))
request = json.load(open("request.json"))
args = torch.load("inputs.pt")["args"]


def padded(rows, width):
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.int64)


histories = request["histories"]  # item ids, oldest first; the first is longer than max_seq_len
width = max(map(len, histories))
long_args = [padded([[row_of.get(i, 0) for i in h] for h in histories], width),
             torch.tensor([len(h) for h in histories])]
if "timestamps" in meta["user_tower_inputs"]:
    long_args.append(padded(request["timestamps"], width))
out = {
    "users": user(*args),
    "one": user(args[0][:1, :1], args[1][:1].clamp(max=1), *[a[:1, :1] for a in args[2:]]),
    "long": user(*long_args),
    "items": item(torch.arange(7)),
    "items_by_id": item(torch.tensor([row_of.get(i, meta["item_vocabulary"]["unknown_row"])
                                      for i in request["item_ids"]])),
}
torch.save({k: v.detach() for k, v in out.items()}, "out.pt")
assert not any(m.startswith("negseq") for m in sys.modules), "negseq was imported"
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("num_time_buckets", [0, 16])
def test_export_round_trip_without_negseq(tmp_path, items, num_time_buckets):
    model = trained_like_model(num_time_buckets)
    paths = export(model, tmp_path, item_ids=items.ids)
    meta = json.loads(paths["meta"].read_text())
    assert meta["embedding_dim"] == 8 and meta["max_seq_len"] == 5
    vocab = pa.ipc.open_file(paths["item_ids"]).read_all()
    assert vocab.column("item_id").to_pylist() == items.ids.tolist()
    assert vocab.column("row").to_pylist() == items.dense_rows(items.ids).tolist()
    table = sequences([[100, 200, 300], [], [600], [100, 200, 300, 400, 500]], [400, 100, 200, 600])
    uih = history_feature(table, items, with_timestamps=bool(num_time_buckets))
    expected_users = model.user_embeddings(uih)
    expected_items = model.item_embeddings(torch.arange(7))
    rows, lengths = padded_history(uih.values, uih.offsets)
    args = [rows, lengths]
    if num_time_buckets:
        args.append(padded_history(uih.timestamps, uih.offsets)[0])
    torch.save({"args": args}, tmp_path / "inputs.pt")
    # a history of 8 (max_seq_len 5) next to a short and an empty one; an unknown id 999
    histories = [[600, 500, 400, 300, 200, 100, 600, 200], [400, 100], []]
    timestamps = [[7 * k * k for k in range(len(h))] for h in histories]
    request = {"histories": histories, "timestamps": timestamps, "item_ids": [600, 100, 999]}
    (tmp_path / "request.json").write_text(json.dumps(request))
    # a fresh interpreter that never imports negseq loads and runs the towers
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", FRESH_SERVER], check=True, cwd=tmp_path, env=env, timeout=200)
    out = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(out["users"], expected_users, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["items"], expected_items, atol=1e-5, rtol=1e-5)
    assert torch.equal(out["users"][1], torch.zeros(8))
    one = JaggedFeature(
        torch.tensor([1]), torch.tensor([0, 1]), torch.tensor([0]) if num_time_buckets else None
    )
    torch.testing.assert_close(out["one"], model.user_embeddings(one), atol=1e-5, rtol=1e-5)
    # the long history is scored on its most recent max_seq_len items, as the model would
    kept = [h[-5:] for h in histories]
    kept_ts = [ts[-5:] for ts in timestamps]
    recent = JaggedFeature(
        torch.tensor(items.dense_rows(np.array([i for h in kept for i in h], dtype=np.int64))),
        torch.tensor([0, *np.cumsum([len(h) for h in kept]).tolist()]),
        torch.tensor([x for ts in kept_ts for x in ts]) if num_time_buckets else None,
    )
    torch.testing.assert_close(out["long"], model.user_embeddings(recent), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out["long"][0], out["users"][0])
    torch.testing.assert_close(
        out["items_by_id"], model.item_embeddings(torch.tensor([6, 1, 0])), atol=1e-5, rtol=1e-5
    )
    assert load_tower(paths["item_tower"])(torch.tensor([2])).shape == (1, 8)


def test_export_needs_the_item_ids_in_row_order(tmp_path, items):
    model = trained_like_model()
    with pytest.raises(NegseqError, match="must list the model's 6 items in embedding-row order, got shape"):
        export(model, tmp_path, item_ids=items.ids[:5])
    with pytest.raises(NegseqError, match=r"item id 100 is listed twice \(rows \[1, 6\]\)"):
        export(model, tmp_path, item_ids=np.array([100, 200, 300, 400, 500, 100]))
    assert not list(tmp_path.iterdir())  # nothing written before the check


def test_predict_writes_arrow_embeddings(tmp_path, items):
    model = trained_like_model()
    table = sequences([[100, 200], [], [300]], [400, 100, 200], user_ids=[7, 8, 9], ts=False)
    paths = predict(model, table, items, tmp_path, batch_size=2)
    users = pa.ipc.open_file(paths["users"]).read_all()
    item_table = pa.ipc.open_file(paths["items"]).read_all()
    assert users.column("user_id").to_pylist() == [7, 8, 9]
    assert users.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    got = torch.tensor(np.stack(users.column("embedding").to_numpy(zero_copy_only=False)))
    expected = model.user_embeddings(history_feature(table, items, with_timestamps=False))
    torch.testing.assert_close(got, expected)
    assert item_table.column("item_id").to_pylist() == items.ids.tolist()
    got_items = torch.tensor(np.stack(item_table.column("embedding").to_numpy(zero_copy_only=False)))
    torch.testing.assert_close(got_items, model.item_embeddings(torch.arange(1, 7)))
    assert Path(paths["items"]).name == "item_embeddings.arrow"


def test_export_refuses_contextual_models(tmp_path):
    model = HSTUMatch(6, 8, contextual_vocab_size=3, contextual_seq_len=1)
    with pytest.raises(NegseqError, match="user towers without a contextual prefix"):
        export(model, tmp_path, item_ids=np.arange(6))


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_chunked_ranks_equal_the_whole_matrix_whatever_the_chunk(chunk):
    rng = np.random.default_rng(chunk)
    scores = torch.from_numpy(rng.integers(0, 4, (9, 7)).astype(np.float32))  # many ties
    targets = torch.from_numpy(rng.integers(0, 7, 9))
    lengths = rng.integers(0, 4, 9)
    history = torch.from_numpy(rng.integers(0, 7, int(lengths.sum())))
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
    want = target_ranks(scores, targets, history, offsets)
    got = chunked_target_ranks(
        lambda rows, start, stop: scores[rows, start:stop], 7, targets, history, offsets, chunk=chunk
    )
    assert got.tolist() == want.tolist()
    # a plain loop: drop history (not the target) and column 0, count what is ahead
    for row in range(9):
        line = scores[row].double().clone()
        line[0] = float("-inf")
        for h in history[offsets[row] : offsets[row + 1]].tolist():
            if h != int(targets[row]):
                line[h] = float("-inf")
        t = int(targets[row])
        ahead = int(((line > line[t]) | ((line == line[t]) & (torch.arange(7) < t))).sum())
        assert int(want[row]) == (7 if t == 0 else ahead)


def test_evaluate_streams_a_source_and_any_batching_gives_the_same_metrics(tmp_path, items):
    model = trained_like_model()
    rng = np.random.default_rng(3)
    ids = items.ids.tolist()
    uih = [rng.choice(ids, int(n), replace=False).tolist() for n in rng.integers(0, 5, 40)]
    table = sequences(uih, rng.choice(ids + [999], 40).tolist(), ts=False)  # 999: an unknown target
    pq.write_table(table, tmp_path / "eval.parquet", row_group_size=7)
    source = Source.open(str(tmp_path / "eval.parquet"))
    whole = evaluate(model, table, items, ks=(1, 3), batch_size=1000)
    for batch_size in (1, 6, 40):
        assert evaluate(model, source, items, ks=(1, 3), batch_size=batch_size) == whole
    assert whole["num_users"] == 40
    # the plain definition: mean over users of the per-user rank metrics
    uih_rows = history_feature(table, items, with_timestamps=False)
    scores = model.user_embeddings(uih_rows) @ model.item_embeddings(torch.arange(7)).T
    targets = torch.from_numpy(items.dense_rows(table.column("target").to_numpy()).astype(np.int64))
    ranks = target_ranks(scores, targets, uih_rows.values, uih_rows.offsets).double()
    assert whole["model"]["HR@3"] == pytest.approx(float((ranks < 3).double().mean()), abs=1e-15)
    assert whole["model"]["MRR"] == pytest.approx(float((1 / (ranks + 1)).mean()), abs=1e-15)
    with pytest.raises(NegseqError, match=r"eval split .*eval.parquet has no column\(s\) \['uih_ts'\]"):
        evaluate(trained_like_model(num_time_buckets=4), source, items)


def test_predict_streams_a_source_into_the_same_files(tmp_path, items):
    model = trained_like_model()
    table = sequences(
        [[100, 200], [], [300], [600, 500, 400]], [1, 2, 3, 4], user_ids=[7, 8, 9, 10], ts=False
    )
    pq.write_table(table, tmp_path / "seq.parquet", row_group_size=3)
    from_table = predict(model, table, items, tmp_path / "a", batch_size=2)
    from_source = predict(
        model, Source.open(str(tmp_path / "seq.parquet")), items, tmp_path / "b", batch_size=3
    )
    for key in ("users", "items"):
        a = pa.ipc.open_file(from_table[key]).read_all()
        b = pa.ipc.open_file(from_source[key]).read_all()
        assert a.schema.equals(b.schema) and a.num_rows == b.num_rows
        np.testing.assert_allclose(
            np.stack(a.column("embedding").to_numpy(zero_copy_only=False)),
            np.stack(b.column("embedding").to_numpy(zero_copy_only=False)),
            rtol=1e-6,
            atol=1e-7,
        )
