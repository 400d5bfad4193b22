"""Full-corpus metrics, the most-popular baseline, export round trip and predict."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from negseq.errors import NegseqError
from negseq.model.export import export, load_tower, padded_history, predict
from negseq.model.hstu_match import HSTUMatch, STUConfig
from negseq.model.inputs import history_feature, list_column
from negseq.model.metrics import evaluate, item_counts, rank_metrics, target_ranks
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


@pytest.mark.timeout(240)
@pytest.mark.parametrize("num_time_buckets", [0, 16])
def test_export_round_trip_without_negseq(tmp_path, items, num_time_buckets):
    model = trained_like_model(num_time_buckets)
    paths = export(model, tmp_path)
    meta = json.loads(paths["meta"].read_text())
    assert meta["embedding_dim"] == 8
    table = sequences([[100, 200, 300], [], [600], [100, 200, 300, 400, 500]], [400, 100, 200, 600])
    uih = history_feature(table, items, with_timestamps=bool(num_time_buckets))
    expected_users = model.user_embeddings(uih)
    expected_items = model.item_embeddings(torch.arange(7))
    rows, lengths = padded_history(uih.values, uih.offsets)
    args = [rows, lengths]
    if num_time_buckets:
        args.append(padded_history(uih.timestamps, uih.offsets)[0])
    inputs = tmp_path / "inputs.pt"
    torch.save({"args": args}, inputs)
    # a fresh interpreter that never imports negseq loads and runs the towers
    script = (
        "import sys, torch\n"
        f"u = torch.export.load({str(paths['user_tower'])!r}).module()\n"
        f"i = torch.export.load({str(paths['item_tower'])!r}).module()\n"
        f"args = torch.load({str(inputs)!r})['args']\n"
        "out = {'users': u(*args), 'items': i(torch.arange(7)), 'one': u(*[a[:1, :1] for a in args[:1]],"
        " args[1][:1].clamp(max=1), *[a[:1, :1] for a in args[2:]])}\n"
        f"torch.save({{k: v.detach() for k, v in out.items()}}, {str(tmp_path / 'out.pt')!r})\n"
        "assert not any(m.startswith('negseq') for m in sys.modules), 'negseq was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, timeout=200)
    out = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(out["users"], expected_users, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["items"], expected_items, atol=1e-5, rtol=1e-5)
    assert torch.equal(out["users"][1], torch.zeros(8))
    assert load_tower(paths["item_tower"])(torch.tensor([2])).shape == (1, 8)


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
    with pytest.raises(NegseqError, match="history-only user towers"):
        export(model, tmp_path)
