"""The four samplers: distribution, exclusion, exact sizes, determinism, hard negatives, errors."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from negseq.errors import NegseqError
from negseq.sampler import (
    EdgeTable,
    HardNegativeSampler,
    HardNegativeSamplerV2,
    ItemTable,
    NegativeSampler,
    NegativeSamplerV2,
    build_sampler,
    expand_factor,
)

NUM_ITEMS = 500
NUM_USERS = 40


def _catalogue() -> ItemTable:
    rng = np.random.default_rng(7)
    ids = np.arange(NUM_ITEMS, dtype=np.int64) * 10 + 3
    return ItemTable.from_arrow(
        pa.table(
            {
                "id": ids,
                "weight": rng.random(NUM_ITEMS) + 0.1,
                "title": pa.array([f"t{i}" for i in ids]),
                "cate": pa.array(ids % 7, pa.int32()),
            }
        )
    )


def _edges(items: ItemTable, per_user: int, seed: int) -> EdgeTable:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(NUM_USERS, dtype=np.int64) + 1000, per_user)
    picks = np.concatenate([rng.choice(len(items), per_user, replace=False) for _ in range(NUM_USERS)])
    return EdgeTable.from_arrow(
        pa.table({"userid": users, "itemid": items.ids[picks], "weight": rng.random(len(users)).round(1)})
    )


ITEMS = _catalogue()
POS_EDGES = _edges(ITEMS, 30, seed=1)
HARD_EDGES = _edges(ITEMS, 6, seed=2)
COMMON = dict(attr_fields=["item_id", "title", "cate"], item_id_field="item_id")


def _samplers(num_sample: int) -> dict:
    hard = dict(num_hard_sample=4, user_id_field="user_id")
    return {
        "v1": NegativeSampler(ITEMS, num_sample=num_sample, **COMMON),
        "v2": NegativeSamplerV2(ITEMS, POS_EDGES, num_sample=num_sample, user_id_field="user_id", **COMMON),
        "hard": HardNegativeSampler(ITEMS, HARD_EDGES, num_sample=num_sample, **hard, **COMMON),
        "hard_v2": HardNegativeSamplerV2(
            ITEMS, POS_EDGES, HARD_EDGES, num_sample=num_sample, **hard, **COMMON
        ),
    }


def _batch(q: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "item_id": pa.array(ITEMS.ids[rng.integers(0, NUM_ITEMS, q)]),
        "user_id": pa.array(rng.integers(1000, 1000 + NUM_USERS + 5, q)),  # some unknown users
    }


def test_alias_table_draws_exact_weights_including_the_last_item():
    # graph-learn 1.x never returns the item it loaded last; negseq draws each with w / sum(w).
    weights = np.arange(1, 6, dtype=np.float64)
    items = ItemTable.from_arrow(pa.table({"id": np.arange(5, dtype=np.int64), "weight": weights}))
    sampler = NegativeSampler(items, num_sample=200_000, item_id_field="item_id")
    ids = sampler.get({"item_id": pa.array([], pa.int64())}).ids
    counts = np.bincount(ids, minlength=5)
    expected = weights / weights.sum() * len(ids)
    assert counts[4] > 0.3 * len(ids)
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_v2_weighted_draws_follow_item_weights():
    items = ItemTable.from_arrow(
        pa.table({"id": np.arange(4, dtype=np.int64), "weight": [1.0, 2.0, 3.0, 4.0]})
    )
    edges = EdgeTable.from_arrow(pa.table({"userid": [1, 1, 1, 1], "itemid": [0, 1, 2, 3]}))
    sampler = NegativeSamplerV2(
        items, edges, num_sample=100_000, item_id_field="i", user_id_field="u", weighted=True
    )
    ids = sampler.get({"i": pa.array([], pa.int64()), "u": pa.array([], pa.int64())}).ids
    counts = np.bincount(ids, minlength=4)
    assert stats.chisquare(counts, np.array([0.1, 0.2, 0.3, 0.4]) * len(ids)).pvalue > 1e-3


def test_v1_redraws_positives_of_the_call():
    sampler = NegativeSampler(ITEMS, num_sample=5000, **COMMON)
    positives = ITEMS.ids[:100]
    result = sampler.get({"item_id": pa.array(positives)})
    kept = np.isin(result.ids, positives).sum()
    assert result.stats["redraws"] > 0
    assert kept == result.stats["collisions_kept"] == 0


def test_collisions_that_cannot_be_avoided_are_kept_and_counted():
    sampler = NegativeSampler(ITEMS, num_sample=64, max_retries=3, **COMMON)
    result = sampler.get({"item_id": pa.array(ITEMS.ids)}, per_positive=1)  # every item is a positive
    assert len(result.ids) == NUM_ITEMS
    assert result.stats == {
        "draws": NUM_ITEMS,
        "redraws": 3 * NUM_ITEMS,
        "collisions_kept": NUM_ITEMS,
        "excluded_mass": pytest.approx(1.0),
        "excluded_mass_max": pytest.approx(1.0),
    }
    # every draw is a kept collision, drawn with its proposal probability (m = 1: p m^R = p)
    np.testing.assert_allclose(sampler.probability(result), sampler.draw_probability(result.rows))


def test_v2_never_draws_the_users_positive_items():
    sampler = NegativeSamplerV2(
        ITEMS, POS_EDGES, num_sample=0, user_id_field="user_id", max_retries=20, **COMMON
    )
    batch = _batch(300, seed=3)
    result = sampler.get(batch, per_positive=8)
    users = np.repeat(batch["user_id"].to_numpy(), 8)
    positives = np.repeat(batch["item_id"].to_numpy(), 8)
    owned = set(zip(POS_EDGES.user_ids.tolist(), POS_EDGES.item_ids.tolist(), strict=True))
    assert not any((u, i) in owned for u, i in zip(users.tolist(), result.ids.tolist(), strict=True))
    assert not np.any(result.ids == positives)
    assert result.stats["collisions_kept"] == 0 and result.stats["redraws"] > 0
    assert set(result.ids.tolist()) <= set(POS_EDGES.item_ids.tolist())  # candidates: edge items only


def test_v2_shared_mode_conditions_draw_r_on_positive_r_div_ef():
    items = ItemTable.from_arrow(pa.table({"id": np.arange(1, 5, dtype=np.int64)}))
    edges = EdgeTable.from_arrow(pa.table({"userid": [7, 7, 7, 8, 8, 8], "itemid": [1, 2, 3, 2, 3, 4]}))
    sampler = NegativeSamplerV2(
        items, edges, num_sample=4, item_id_field="i", user_id_field="u", max_retries=60
    )
    result = sampler.get({"i": pa.array([2, 3]), "u": pa.array([7, 8])})
    assert result.expand_factor == 2
    assert result.ids.tolist() == [4, 4, 1, 1]


@pytest.mark.parametrize("q", [1, 3, 8, 1000, 100_000])
@pytest.mark.parametrize("kind", ["v1", "v2", "hard", "hard_v2"])
def test_exact_output_sizes_in_both_modes(kind, q):
    sampler = _samplers(num_sample=256)[kind]
    batch = _batch(q)
    shared = sampler.get(batch)
    assert len(shared.ids) == 256 and shared.negatives.num_rows == 256
    assert shared.expand_factor == expand_factor(256, q) == max(1, -(-256 // q))
    assert shared.negatives.schema.names == ["item_id", "title", "cate"]
    assert shared.negatives.column("item_id").to_numpy().tolist() == shared.ids.tolist()
    per_positive = sampler.get(batch, per_positive=3)
    assert len(per_positive.ids) == 3 * q and per_positive.expand_factor == 3


def test_attributes_are_the_sampled_items_and_keep_their_types():
    result = _samplers(num_sample=50)["v1"].get(_batch(5))
    rows = ITEMS.rows(result.ids)
    assert result.negatives.column("title").to_pylist() == [f"t{i}" for i in result.ids]
    assert result.negatives.column("cate").type == pa.int32()
    assert result.negatives.column("cate").to_pylist() == (ITEMS.ids[rows] % 7).tolist()


def test_same_key_same_negatives_other_key_other_negatives():
    sampler = _samplers(num_sample=200)["v2"]
    batch = _batch(20)
    first = sampler.get(batch, epoch=1, batch_index=5).ids
    assert np.array_equal(first, sampler.get(batch, epoch=1, batch_index=5).ids)
    assert not np.array_equal(first, sampler.get(batch, epoch=1, batch_index=6).ids)
    assert not np.array_equal(first, sampler.get(batch, epoch=2, batch_index=5).ids)


def test_determinism_across_processes(tmp_path):
    pq.write_table(ITEMS.table, tmp_path / "items.parquet")
    script = textwrap.dedent(
        f"""
        import json, numpy as np, pyarrow as pa
        from negseq.sampler import ItemTable, NegativeSampler
        items = ItemTable.read({str(tmp_path / "items.parquet")!r})
        sampler = NegativeSampler(items, num_sample=300, item_id_field="item_id", seed=11)
        batch = {{"item_id": pa.array(items.ids[:40])}}
        print(json.dumps(sampler.get(batch, epoch=3, batch_index=9).ids.tolist()))
        """
    )
    runs = [
        json.loads(
            subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        )
        for _ in range(2)
    ]
    here = NegativeSampler(ITEMS, num_sample=300, item_id_field="item_id", seed=11)
    expected = here.get({"item_id": pa.array(ITEMS.ids[:40])}, epoch=3, batch_index=9).ids.tolist()
    assert runs[0] == runs[1] == expected


def test_hard_negatives_top_by_weight_then_item_id():
    items = ItemTable.from_arrow(pa.table({"id": np.arange(1, 9, dtype=np.int64)}))
    hard = EdgeTable.from_arrow(
        pa.table(
            {
                "userid": [5, 5, 5, 5, 5, 6, 6],
                "itemid": [4, 2, 3, 8, 1, 7, 6],
                "weight": [0.5, 2.0, 2.0, 3.0, 0.1, 1.0, 1.0],
            }
        )
    )
    sampler = HardNegativeSampler(
        items, hard, num_sample=2, num_hard_sample=3, item_id_field="i", user_id_field="u"
    )
    result = sampler.get({"i": pa.array([1, 2, 3]), "u": pa.array([6, 9, 5])})
    assert result.hard_ids.tolist() == [6, 7, 8, 2, 3]
    assert result.hard_neg_indices.dtype == np.int32
    assert result.hard_neg_indices.tolist() == [[0, 0], [0, 1], [2, 0], [2, 1], [2, 2]]
    assert result.hard_negatives.column("i").to_pylist() == [6, 7, 8, 2, 3]
    assert len(result.ids) == 2
    assert sampler.estimated_sample_num(10) == 2 + 3 * 10


def test_hard_indices_absent_when_no_query_user_has_hard_edges():
    sampler = _samplers(num_sample=10)["hard"]
    result = sampler.get({"item_id": pa.array(ITEMS.ids[:3]), "user_id": pa.array([1, 2, 3])})
    assert result.hard_neg_indices is None and result.hard_negatives is None
    assert result.hard_ids.dtype == np.int64 and len(result.hard_ids) == 0


def test_num_eval_sample_replaces_num_sample_only_when_not_training():
    sampler = NegativeSampler(ITEMS, num_sample=20, num_eval_sample=7, item_id_field="item_id")
    batch = _batch(4)
    assert len(sampler.get(batch).ids) == 20
    assert len(sampler.get(batch, training=False).ids) == 7
    assert sampler.estimated_sample_num(64) == 20


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"item_id": pa.array([3, 13]), "user_id": pa.array([1000])}, "user column 'user_id' has 1 rows"),
        ({"user_id": pa.array([1000])}, "missing item id column 'item_id'"),
        ({"item_id": pa.array(["3;13"]), "user_id": pa.array([1000])}, "must hold int64 ids"),
        ({"item_id": pa.array([3, None]), "user_id": pa.array([1, 2])}, "column 'item_id', row 1: null id"),
    ],
)
def test_bad_batches_name_the_problem(batch, message):
    with pytest.raises(NegseqError, match=message):
        _samplers(num_sample=4)["v2"].get(batch)


def test_unknown_attr_field_is_rejected():
    with pytest.raises(NegseqError, match="attr field 'nope'"):
        NegativeSampler(ITEMS, num_sample=1, attr_fields=["nope"], item_id_field="item_id")


def test_edges_to_unknown_items_are_rejected():
    edges = EdgeTable.from_arrow(pa.table({"userid": [1, 2], "itemid": [3, 4]}))
    with pytest.raises(NegseqError, match=r"column 'itemid', row 1: item 4 is not in the item table"):
        NegativeSamplerV2(ITEMS, edges, num_sample=1, item_id_field="i", user_id_field="u")


def test_build_sampler_from_torcheasyrec_config(tmp_path):
    lines = ["id:int64\tweight:float\tfeature:string"] + [
        f"{i}\t{w:.3f}\t{i}:t{i}" for i, w in zip(ITEMS.ids, ITEMS.weights, strict=True)
    ]
    (tmp_path / "item_gl").write_text("\n".join(lines) + "\n")
    edges = ["userid:int64\titemid:int64\tweight:float"] + [
        f"{u}\t{i}\t{w}"
        for u, i, w in zip(HARD_EDGES.user_ids, HARD_EDGES.item_ids, HARD_EDGES.weights, strict=True)
    ]
    (tmp_path / "hard_gl").write_text("\n".join(edges) + "\n")
    config = {
        "hard_negative_sampler": {
            "item_input_path": "item_gl",
            "hard_neg_edge_input_path": "hard_gl",
            "num_sample": 16,
            "num_hard_sample": 2,
            "attr_fields": ["item_id", "title"],
            "item_id_field": "item_id",
            "user_id_field": "user_id",
            "attr_delimiter": ":",
        }
    }
    sampler = build_sampler(config, base_dir=tmp_path)
    assert isinstance(sampler, HardNegativeSampler)
    result = sampler.get(_batch(6))
    assert len(result.ids) == 16 and result.negatives.schema.names == ["item_id", "title"]
    assert result.negatives.column("item_id").type == pa.int64()
    with pytest.raises(NegseqError, match='\\[sampler.hard_negative_sampler\\] unknown key "bogus"'):
        build_sampler(
            {"hard_negative_sampler": {**config["hard_negative_sampler"], "bogus": 1}}, base_dir=tmp_path
        )
    with pytest.raises(NegseqError, match="unknown sampler \\[sampler.neg\\]"):
        build_sampler({"neg": {}})
    with pytest.raises(NegseqError, match="\\[sampler.negative_sampler\\] input_path: required, got nothing"):
        build_sampler({"negative_sampler": {"num_sample": 1, "item_id_field": "i"}})
