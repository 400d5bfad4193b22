"""Evaluation on Ray Data actors (the embedded Ray): the in-process metrics exactly, on one actor
or two, the files of `predict` from the same pass, and bad splits refused before any actor
starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from negseq.errors import NegseqError  # noqa: E402
from negseq.executors.ray_data import ActorPool  # noqa: E402
from negseq.executors.ray_eval import evaluate_on_ray  # noqa: E402
from negseq.io.sources import Source  # noqa: E402
from negseq.model.export import predict  # noqa: E402
from negseq.model.hstu_match import HSTUMatch, STUConfig  # noqa: E402
from negseq.model.metrics import evaluate  # noqa: E402
from negseq.sampler import ItemTable  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.usefixtures("local_ray", "one_torch_thread"),
]
NUM_ITEMS = 200


@pytest.fixture(scope="module")
def items() -> ItemTable:
    return ItemTable.from_arrow(pa.table({"id": np.arange(1000, 1000 + NUM_ITEMS, dtype=np.int64)}))


@pytest.fixture(scope="module")
def model() -> HSTUMatch:
    torch.manual_seed(2)
    return HSTUMatch(NUM_ITEMS, 16, stu=STUConfig(num_heads=2), max_seq_len=6, num_time_buckets=8).eval()


def _split(folder: Path, items: ItemTable, rows: int) -> Source:
    rng = np.random.default_rng(5)
    ids = items.ids
    lengths = rng.integers(0, 7, rows)
    uih = [rng.choice(ids, int(n), replace=False).tolist() for n in lengths]
    table = pa.table(
        {
            "user_id": np.arange(rows, dtype=np.int64) * 3,
            "uih": pa.array(uih, pa.list_(pa.int64())),
            "uih_ts": pa.array([list(range(0, 100 * len(h), 100)) for h in uih], pa.list_(pa.int64())),
            "target": rng.choice(np.append(ids, [7]), rows),  # 7: an id outside the corpus
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.slice(0, rows // 2), folder / "part-0.parquet", row_group_size=40)
    pq.write_table(table.slice(rows // 2), folder / "part-1.parquet", row_group_size=40)
    return Source.open(str(folder))


def test_ray_evaluation_gives_the_in_process_metrics_and_predicts_files_on_one_or_two_actors(
    tmp_path, items, model
):
    split = _split(tmp_path / "eval", items, rows=500)
    here = evaluate(model, split, items, ks=(1, 10, 50), batch_size=64)
    assert here["num_users"] == 500 and 0 < here["model"]["MRR"] < 1
    local = predict(model, split, items, tmp_path / "here", batch_size=64)
    there = evaluate_on_ray(
        model,
        split,
        items,
        ks=(1, 10, 50),
        batch_size=64,
        pool=ActorPool(2, 2, 0.5),
        embeddings_to=tmp_path / "there",
    )
    nodes = there.pop("nodes")
    assert there == here
    assert list(nodes.values()) == [500] and set(nodes) == {ray.get_runtime_context().get_node_id()}
    for name in ("user_embeddings.arrow", "item_embeddings.arrow"):
        a = pa.ipc.open_file(tmp_path / "here" / name).read_all()
        b = pa.ipc.open_file(tmp_path / "there" / name).read_all()
        assert a.schema.equals(b.schema) and a.column(0).equals(b.column(0))  # ids, in split order
        np.testing.assert_array_equal(
            np.stack(a.column("embedding").to_numpy(zero_copy_only=False)),
            np.stack(b.column("embedding").to_numpy(zero_copy_only=False)),
        )
    assert sorted(p.name for p in local.values()) == sorted(p.name for p in (tmp_path / "there").iterdir())
    counts = np.arange(NUM_ITEMS + 1)  # given counts: the baseline ranks by them, on one actor too
    want = evaluate(model, split, items, ks=(5,), counts=counts)
    one = evaluate_on_ray(
        model, split, items, ks=(5,), counts=counts, batch_size=100, pool=ActorPool(1, 1, 0.5)
    )
    assert one["model"] == want["model"] and one["most_popular"] == want["most_popular"]


def test_ray_evaluation_refuses_a_bad_split_before_it_starts(tmp_path, items, model):
    table = pa.table({"user_id": [1], "uih": pa.array([[1000]], pa.list_(pa.int64())), "target": [1001]})
    pq.write_table(table, tmp_path / "no_ts.parquet")
    with pytest.raises(NegseqError, match=r"no column\(s\) \['uih_ts'\]"):
        evaluate_on_ray(model, Source.open(str(tmp_path / "no_ts.parquet")), items)
    with pytest.raises(NegseqError, match=r"no column\(s\) \['uih_ts'\]"):
        evaluate_on_ray(
            model, Source.open(str(tmp_path / "no_ts.parquet")), items, embeddings_to=tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()
    empty = table.append_column("uih_ts", pa.array([[5]], pa.list_(pa.int64()))).slice(0, 0)
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(NegseqError, match="is empty: nothing to evaluate"):
        evaluate_on_ray(model, Source.open(str(tmp_path / "empty.parquet")), items)
