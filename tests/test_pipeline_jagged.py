"""to_jagged_batch against a plain-Python reference: both layouts, strings and lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from negseq.errors import NegseqError
from negseq.pipeline import to_jagged_batch
from negseq.pipeline.jagged import truncate_recent


class DictItems:
    """Dense rows 1..N for known ids, 0 for unknown (the ItemTable.dense_rows contract)."""

    def __init__(self, ids):
        self.rows = {int(i): r + 1 for r, i in enumerate(ids)}

    def dense_rows(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.rows.get(int(i), 0) for i in ids], dtype=np.int64)


ITEMS = DictItems(range(0, 40, 2))  # even ids known, odd ids unknown
hist = st.lists(st.none() | st.lists(st.integers(0, 50), max_size=7), min_size=0, max_size=8)


def as_column(data, strings: bool):
    if strings:
        return pa.array([None if r is None else ";".join(map(str, r)) for r in data], pa.string())
    return pa.array(data, pa.list_(pa.int64()))


@settings(max_examples=150, deadline=None)
@given(
    uih=hist,
    strings=st.booleans(),
    max_seq_len=st.integers(1, 8),
    n=st.integers(0, 3),
    data=st.data(),
)
def test_interleaved_matches_reference(uih, strings, max_seq_len, n, data):
    pos = [data.draw(st.lists(st.integers(0, 50), max_size=4)) for _ in uih]
    ts = [None if r is None else [10 * i for i in range(len(r))] for r in uih]
    cands = [[v for p in r for v in [p, *[(p * 7 + k) % 50 for k in range(n)]]] for r in pos]
    batch = pa.record_batch(
        {
            "uih": as_column(uih, strings),
            "ts": pa.array(ts, pa.list_(pa.int64())),
            "cand": as_column(cands, strings),
            "cand_pos_lengths": pa.array([len(r) for r in pos], pa.int32()),
        }
    )
    jb = to_jagged_batch(
        batch,
        items=ITEMS,
        uih_field="uih",
        candidate_field="cand",
        timestamp_field="ts",
        max_seq_len=max_seq_len,
        layout="interleaved",
    )
    kept = [r[-max_seq_len:] if r else [] for r in uih]  # a null history is an empty one
    assert jb.uih.values.tolist() == [ITEMS.rows.get(v, 0) for r in kept for v in r]
    assert jb.uih.lengths.tolist() == [len(r) for r in kept]
    assert jb.uih.timestamps.tolist() == [t for r in ts if r for t in r[-max_seq_len:]]
    assert jb.candidate.values.tolist() == [ITEMS.rows.get(v, 0) for r in cands for v in r]
    assert jb.candidate.offsets.tolist() == np.concatenate([[0], np.cumsum([len(r) for r in cands])]).tolist()
    assert jb.cand_pos_lengths.dtype == torch.int32
    assert jb.cand_pos_lengths.tolist() == [len(r) for r in pos]
    if sum(map(len, pos)):
        assert jb.neg_per_pos == n


@settings(max_examples=100, deadline=None)
@given(
    pos=st.lists(st.lists(st.integers(0, 50), max_size=4), min_size=1, max_size=6),
    shared=st.lists(st.integers(0, 50), max_size=5),
    hard=st.lists(st.integers(0, 50), max_size=3),
    strings=st.booleans(),
)
def test_suffix_matches_reference(pos, shared, hard, strings):
    cands = [list(r) for r in pos]
    cands[-1] += shared + hard
    pairs = [[q, k] for k, q in enumerate(range(len(hard)))]
    batch = pa.record_batch(
        {
            "uih": pa.array([[1, 2]] * len(pos), pa.list_(pa.int64())),
            "cand": as_column(cands, strings),
            "cand_pos_lengths": pa.array([len(r) for r in pos], pa.int32()),
            "hard_neg_indices": pa.array(
                [[] for _ in pos[:-1]] + [[v for p in pairs for v in p]], pa.list_(pa.int32())
            ),
        }
    )
    jb = to_jagged_batch(
        batch, items=ITEMS, uih_field="uih", candidate_field="cand", max_seq_len=4, layout="suffix"
    )
    assert jb.num_shared_negatives == len(shared)
    assert jb.num_hard_negatives == len(hard)
    assert jb.hard_neg_indices.tolist() == pairs
    assert jb.candidate.values.tolist() == [ITEMS.rows.get(v, 0) for r in cands for v in r]


def test_empty_batch():
    batch = pa.record_batch(
        {
            "uih": pa.array([], pa.list_(pa.int64())),
            "cand": pa.array([], pa.list_(pa.int64())),
            "cand_pos_lengths": pa.array([], pa.int32()),
        }
    )
    for layout in ("interleaved", "suffix"):
        jb = to_jagged_batch(
            batch,
            items=ITEMS,
            uih_field="uih",
            candidate_field="cand",
            max_seq_len=3,
            layout=layout,
        )
        assert jb.batch_size == 0 and jb.candidate.values.numel() == 0


def test_misaligned_interleaved_rows_are_an_error():
    batch = pa.record_batch(
        {
            "uih": pa.array([[1], [2]], pa.list_(pa.int64())),
            "cand": pa.array([[1, 9, 9], [2, 9]], pa.list_(pa.int64())),
            "cand_pos_lengths": pa.array([1, 1], pa.int32()),
        }
    )
    with pytest.raises(NegseqError, match="not a multiple|row"):
        to_jagged_batch(
            batch,
            items=ITEMS,
            uih_field="uih",
            candidate_field="cand",
            max_seq_len=3,
            layout="interleaved",
        )


def test_truncate_recent_keeps_the_tail():
    values, counts = truncate_recent(np.arange(6), np.array([3, 0, 2, 1]), 2)
    assert values.tolist() == [1, 2, 3, 4, 5] and counts.tolist() == [2, 0, 2, 1]
