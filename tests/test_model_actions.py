"""`[model]` actions and time buckets through `negseq run`: the rating column becomes each history
item's action bitmask, timestamps become time buckets, and training, evaluation and the exported
user tower all read them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import torch

from negseq.config import load_config
from negseq.errors import NegseqError
from negseq.io.prepare import prepare_sequences
from negseq.model.export import load_tower, padded_history
from negseq.model.inputs import history_feature

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _log(users: int = 40, per_user: int = 7) -> pa.Table:
    rng = np.random.default_rng(3)
    rows = users * per_user
    return pa.table(
        {
            "user_id": np.repeat(np.arange(1, users + 1), per_user),
            "item_id": rng.integers(1, 25, rows),
            "rating": rng.integers(1, 6, rows),
            "timestamp": np.tile(np.arange(per_user) * 3600, users) + 10**9,
        }
    )


def test_prepare_writes_each_history_items_action_bit():
    log = _log(users=3, per_user=5)
    train, valid, eval_ = prepare_sequences(
        log,
        user_field="user_id",
        item_field="item_id",
        time_field="timestamp",
        max_seq_len=3,
        action_field="rating",
    )
    for table in (train, valid, eval_):
        assert table.column("uih_actions").null_count == 0
        lengths = [len(r) for r in table.column("uih").to_pylist()]
        assert [len(r) for r in table.column("uih_actions").to_pylist()] == lengths
    # user 1's log in time order: eval history = its first 4 (kept: the last 3), as bits
    ratings = log.column("rating").to_numpy()[:5]
    assert eval_.column("uih_actions").to_pylist()[0] == [1 << int(r) for r in ratings[1:4]]
    without = prepare_sequences(
        log, user_field="user_id", item_field="item_id", time_field="timestamp", max_seq_len=3
    )
    assert "uih_actions" not in without.eval.column_names


@pytest.mark.parametrize("bad", [-1, 63])
def test_an_action_that_is_no_bit_is_named(bad):
    log = _log(users=2, per_user=4)
    ratings = log.column("rating").to_numpy().copy()
    ratings[5] = bad
    log = log.set_column(2, "rating", pa.array(ratings))
    with pytest.raises(NegseqError, match=rf"column 'rating', row 5: action value {bad} is not in \[0, 62\]"):
        prepare_sequences(
            log,
            user_field="user_id",
            item_field="item_id",
            time_field="timestamp",
            max_seq_len=3,
            action_field="rating",
        )


def _job(tmp_path: Path, model: str) -> Path:
    pq.write_table(_log(), tmp_path / "log.parquet")
    job = tmp_path / "job.toml"
    job.write_text(
        f"""
name = "acts"
[data]
interactions = "log.parquet"
action_field = "rating"
max_seq_len = 8
[sampler.negative_sampler]
num_sample = 4
[candidates]
batch_size = 16
[model]
embedding_dim = 8
num_layers = 1
{model}
[train]
epochs = 2
[ray]
executor = "local"
[output]
dir = "out"
write_samples = false
"""
    )
    return job


@pytest.mark.timeout(300)
def test_a_job_trains_evaluates_and_exports_with_actions_and_time_buckets(tmp_path):
    from negseq.job import run_job

    job = _job(tmp_path, "num_action_types = 6\nnum_time_buckets = 16")
    result = run_job(load_config(job, command="run"), quiet=True)
    assert np.isfinite(result["train"]["loss"]) and len(result["validation"]["curve"]) == 2
    towers = json.loads((tmp_path / "out" / "export" / "towers.json").read_text())
    assert towers["user_tower_inputs"] == ["item_rows", "lengths", "timestamps", "actions"]
    # the exported tower, fed the eval rows' items, times and actions, gives predict's embeddings
    eval_table = pq.read_table(tmp_path / "out" / "prepared" / "eval.parquet")
    from negseq.sampler import ItemTable

    items = ItemTable.read(str(tmp_path / "out" / "prepared" / "items.parquet"))
    uih = history_feature(eval_table, items, with_timestamps=True, with_actions=True)
    rows, lengths = padded_history(uih.values, uih.offsets)
    times, _ = padded_history(uih.timestamps, uih.offsets)
    actions, _ = padded_history(uih.actions, uih.offsets)
    exported = load_tower(tmp_path / "out" / "export" / "user_tower.pt2")(rows, lengths, times, actions)
    with ipc.open_file(tmp_path / "out" / "embeddings" / "user_embeddings.arrow") as reader:
        predicted = reader.read_all().column("embedding").combine_chunks().flatten().to_numpy()
    torch.testing.assert_close(
        exported, torch.from_numpy(predicted.copy()).view(exported.shape), rtol=1e-4, atol=1e-5
    )
    # the actions matter: other actions give other user embeddings
    other = load_tower(tmp_path / "out" / "export" / "user_tower.pt2")(rows, lengths, times, actions * 2)
    assert not torch.allclose(exported, other)


def test_action_types_need_an_action_column_and_room_for_its_values(tmp_path):
    from negseq.job import run_job

    job = _job(tmp_path, "num_action_types = 6")
    text = job.read_text().replace('action_field = "rating"\n', "")
    job.write_text(text)
    with pytest.raises(
        NegseqError, match=r"\[model\] num_action_types: 6 action types need \[data\] action_field"
    ):
        load_config(job, command="run")
    job.write_text(_job(tmp_path, "num_action_types = 5").read_text())
    with pytest.raises(
        NegseqError, match=r"num_action_types 5, but \[data\] action_field 'rating' holds the value 5"
    ):
        run_job(load_config(job, command="run"), quiet=True)
