"""SampledBatch and its two encoders: `to_jagged` (training arrays) against a plain-Python reader of
`to_arrow` (TorchEasyRec's columns), both layouts, string / list / int positives, hard negatives;
the Arrow transport of JaggedArrays and JaggedBatch.from_arrays."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from negseq.batch import JaggedBatch
from negseq.candidates import (
    BatchKey,
    CandidateSpec,
    JaggedArrays,
    arrays_from_table,
    arrays_to_table,
    jagged_from_arrow,
    sample_batch,
)
from negseq.candidates.jagged_arrays import truncate_recent
from negseq.errors import NegseqError
from negseq.sampler import EdgeTable, HardNegativeSampler, ItemTable, NegativeSampler

IDS = np.arange(1, 41, dtype=np.int64)
WEIGHTS = np.linspace(1.0, 3.0, len(IDS))


class DictItems:
    """Dense rows 1..N for known ids, 0 for unknown (the ItemTable.dense_rows contract)."""

    def __init__(self, ids):
        self.rows = {int(i): r + 1 for r, i in enumerate(ids)}

    def dense_rows(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.rows.get(int(i), 0) for i in ids], dtype=np.int64)


VOCAB = DictItems(range(0, 60, 2))  # even ids known, odd ids unknown


def _items() -> ItemTable:
    return ItemTable.from_arrow(pa.table({"id": IDS, "weight": WEIGHTS}))


def _sampler(hard: bool) -> NegativeSampler:
    if not hard:
        return NegativeSampler(_items(), num_sample=5, item_id_field="pos", user_id_field="user", seed=7)
    edges = EdgeTable.from_arrow(
        pa.table({"userid": [1, 1, 2, 3, 3, 3], "itemid": [4, 5, 6, 7, 8, 9], "weight": [3.0, 2, 1, 9, 8, 7]})
    )
    return HardNegativeSampler(
        _items(), edges, num_hard_sample=2, num_sample=5, item_id_field="pos", user_id_field="user", seed=7
    )


def _column(rows, kind: str) -> pa.Array:
    if kind == "string":
        return pa.array([None if r is None else ";".join(map(str, r)) for r in rows], pa.string())
    if kind == "int":
        return pa.array([None if r is None else r[0] for r in rows], pa.int64())
    return pa.array(rows, pa.list_(pa.int64()))


def _ids_of(column: pa.Array) -> list[list[int]]:
    """The reference reader of a candidate column: every row's ids (a null row: none)."""
    out = []
    for value in column.to_pylist():
        if value is None:
            out.append([])
        elif isinstance(value, str):
            out.append([int(t) for t in value.split(";")] if value else [])
        else:
            out.append([int(v) for v in value])
    return out


positives = st.lists(st.integers(1, 40), min_size=1, max_size=3)
rows = st.lists(st.none() | positives | st.just([]), min_size=1, max_size=7)


@settings(max_examples=120, deadline=None)
@given(
    pos=rows,
    kind=st.sampled_from(["string", "list", "int"]),
    layout=st.sampled_from(["interleaved", "suffix"]),
    hard=st.booleans(),
    n=st.integers(0, 3),
    max_seq_len=st.integers(1, 5),
    batch_index=st.integers(0, 1000),
)
def test_to_jagged_equals_the_dense_rows_of_to_arrow(pos, kind, layout, hard, n, max_seq_len, batch_index):
    if kind == "int":
        pos = [None if r is None or not r else r[:1] for r in pos]
    hard = hard and layout == "suffix"
    sampler = _sampler(hard)
    history = [[(3 * i + k) % 50 for k in range(i % 6)] for i in range(len(pos))]
    batch = pa.record_batch(
        {
            "user": pa.array([1 + i % 4 for i in range(len(pos))], pa.int64()),
            "uih": pa.array(history, pa.list_(pa.int64())),
            "ts": pa.array([[100 * k for k in range(len(h))] for h in history], pa.list_(pa.int64())),
            "pos": _column(pos, kind),
        }
    )
    spec = CandidateSpec(layout=layout, neg_per_pos=n if layout == "interleaved" else None)
    sampled = sample_batch(batch, sampler, spec, epoch=2, batch_index=batch_index)
    arrow = sampled.to_arrow()
    arrays = sampled.to_jagged(VOCAB, uih_field="uih", max_seq_len=max_seq_len, timestamp_field="ts")

    expected_rows = _ids_of(arrow.column("pos"))
    counts = [0 if r is None else len(r) for r in pos]
    assert arrow.column("cand_pos_lengths").to_pylist() == counts == arrays.cand_pos_lengths.tolist()
    assert arrays.candidate_values.tolist() == [VOCAB.rows.get(v, 0) for r in expected_rows for v in r]
    assert arrays.candidate_offsets.tolist() == np.cumsum([0] + [len(r) for r in expected_rows]).tolist()
    kept = [h[-max_seq_len:] for h in history]
    assert arrays.uih_values.tolist() == [VOCAB.rows.get(v, 0) for r in kept for v in r]
    assert arrays.uih_timestamps.tolist() == [100 * k for h in history for k in range(len(h))[-max_seq_len:]]
    assert arrays.key == BatchKey(7, 2, batch_index)
    flat_pos = [v for r in pos if r for v in r]
    if layout == "interleaved":
        take = sampler.num_sample if n is None else n
        assert arrays.neg_per_pos == take
        for row, expected in zip(pos, expected_rows, strict=True):
            assert expected[:: take + 1] == (row or [])  # each positive, then its negatives
    else:
        assert [v for r in expected_rows[:-1] for v in r] + expected_rows[-1][: counts[-1]] == flat_pos
        assert arrays.num_shared_negatives == (sampler.num_sample if flat_pos else 0)
        tail = expected_rows[-1][counts[-1] :]
        assert tail == sampled.negatives.tolist() + sampled.hard_negatives.tolist()
    # exact under exclude = "batch": off the batch's positives (mass m) p (1 + m + .. + m^R), on them
    # (a collision kept after R redraw rounds) p m^R
    proposal = WEIGHTS[sampled.negatives - 1] / WEIGHTS.sum()
    m, r = WEIGHTS[np.unique(np.array(flat_pos, np.int64)) - 1].sum() / WEIGHTS.sum(), sampler.max_retries
    on = np.isin(sampled.negatives, flat_pos)
    probability = np.where(on, proposal * m**r, proposal * sum(m**t for t in range(r + 1)))
    np.testing.assert_allclose(arrays.neg_probability, probability)


@settings(max_examples=80, deadline=None)
@given(
    pos=rows,
    kind=st.sampled_from(["string", "list", "int"]),
    layout=st.sampled_from(["interleaved", "suffix"]),
    hard=st.booleans(),
    n=st.integers(0, 3),
    max_seq_len=st.integers(1, 5),
)
def test_a_written_batch_reads_back_as_it_was_sampled(pos, kind, layout, hard, n, max_seq_len):
    """`jagged_from_arrow` of a part as written (through Parquet) equals `to_jagged`, but for the
    draw probabilities, which files do not hold."""
    if kind == "int":
        pos = [None if r is None or not r else r[:1] for r in pos]
    hard = hard and layout == "suffix"
    history = [[(5 * i + k) % 50 for k in range(i % 4)] for i in range(len(pos))]
    batch = pa.record_batch(
        {
            "user": pa.array([1 + i % 4 for i in range(len(pos))], pa.int64()),
            "uih": pa.array(history, pa.list_(pa.int64())),
            "ts": pa.array([[7 * k for k in range(len(h))] for h in history], pa.list_(pa.int64())),
            "pos": _column(pos, kind),
        }
    )
    spec = CandidateSpec(layout=layout, neg_per_pos=n if layout == "interleaved" else None)
    sampled = sample_batch(batch, _sampler(hard), spec, epoch=1, batch_index=3)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_batches([sampled.to_arrow()]), sink)
    part = pq.read_table(pa.BufferReader(sink.getvalue()))
    columns = dict(uih_field="uih", max_seq_len=max_seq_len, timestamp_field="ts")
    back = jagged_from_arrow(part, key=sampled.key, spec=spec, item_field="pos", vocab=VOCAB, **columns)
    _same(back, replace(sampled.to_jagged(VOCAB, **columns), neg_probability=None))


def _arrays(seed: int, layout: str, with_optional: bool) -> JaggedArrays:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 4, 3)
    num_pos = int(lengths.sum())
    n = 2 if layout == "interleaved" else 0
    shared = 0 if layout == "interleaved" else 3
    hard = 2 if layout == "suffix" and with_optional else 0
    cand_lengths = lengths * (1 + n)
    if layout == "suffix":
        cand_lengths[-1] += shared + hard
    uih_lengths = rng.integers(0, 5, 3)
    return JaggedArrays(
        key=BatchKey(2**64 - 1, seed, 7),
        layout=layout,
        uih_values=rng.integers(0, 9, int(uih_lengths.sum())),
        uih_offsets=np.cumsum([0, *uih_lengths]),
        candidate_values=rng.integers(0, 9, int(cand_lengths.sum())),
        candidate_offsets=np.cumsum([0, *cand_lengths]),
        cand_pos_lengths=lengths.astype(np.int32),
        neg_per_pos=n,
        num_shared_negatives=shared,
        num_hard_negatives=hard,
        uih_timestamps=rng.integers(0, 99, int(uih_lengths.sum())) if with_optional else None,
        hard_neg_indices=np.array([[0, 0], [2, 1]], np.int32) if hard else None,
        neg_probability=rng.random(num_pos * n + shared) if with_optional else None,
    )


def _same(a: JaggedArrays, b: JaggedArrays) -> None:
    for name in a.__dataclass_fields__:
        left, right = getattr(a, name), getattr(b, name)
        if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
            assert (left is None) == (right is None), name
            np.testing.assert_array_equal(left, right, err_msg=name)
        else:
            assert left == right, name


@settings(max_examples=40, deadline=None)
@given(seeds=st.lists(st.integers(0, 10**6), min_size=1, max_size=4), data=st.data())
def test_arrays_cross_arrow_unchanged(seeds, data):
    batches = [
        _arrays(s, data.draw(st.sampled_from(["interleaved", "suffix"])), data.draw(st.booleans()))
        for s in seeds
    ]
    table = arrays_to_table(batches)
    assert table.num_rows == len(batches)
    back = list(arrays_from_table(table.slice(0)))
    assert len(back) == len(batches)
    for before, after in zip(batches, back, strict=True):
        _same(before, after)
    torch_batch = JaggedBatch.from_arrays(back[0])
    assert torch_batch.candidate.values.tolist() == batches[0].candidate_values.tolist()
    assert torch_batch.uih.offsets.dtype == torch.int64 and torch_batch.cand_pos_lengths.dtype == torch.int32


def test_an_already_sampled_input_is_refused():
    sampler = _sampler(hard=False)
    batch = pa.record_batch(
        {"user": pa.array([1]), "pos": pa.array([3]), "cand_pos_lengths": pa.array([1], pa.int32())}
    )
    with pytest.raises(NegseqError, match=r"batch 4: input column\(s\) \['cand_pos_lengths'\]"):
        sample_batch(batch, sampler, CandidateSpec(), batch_index=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layout": "zigzag"}, "layout must be one of"),
        ({"layout": "suffix", "neg_per_pos": 2}, "neg_per_pos applies to the 'interleaved' layout"),
        ({"neg_per_pos": -3}, "neg_per_pos must be >= 0, got -3"),
        ({"seq_delim": ""}, "seq_delim must not be empty"),
    ],
)
def test_bad_candidate_specs_are_named(kwargs, message):
    with pytest.raises(NegseqError, match=message):
        CandidateSpec(**kwargs)


def test_hard_negatives_need_the_suffix_layout():
    with pytest.raises(NegseqError, match="need the 'suffix' layout"):
        CandidateSpec(layout="interleaved").check_sampler(_sampler(hard=True))


def test_candidate_counts_that_break_the_layout_are_an_error():
    good = _arrays(1, "interleaved", False)
    with pytest.raises(NegseqError, match="candidate ids, the interleaved layout needs"):
        JaggedArrays(**{**good.__dict__, "neg_per_pos": 3})


def test_truncate_recent_keeps_the_tail():
    values, counts = truncate_recent(np.arange(6), np.array([3, 0, 2, 1]), 2)
    assert values.tolist() == [1, 2, 3, 4, 5] and counts.tolist() == [2, 0, 2, 1]
