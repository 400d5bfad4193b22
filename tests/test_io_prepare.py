"""prepare_sequences against a plain-Python leave-last-out reference (train, valid, eval)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from negseq.errors import NegseqError
from negseq.io.prepare import SEQUENCE_SCHEMA, prepare_sequences

events = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 20), st.integers(0, 10)), max_size=60)


def reference(rows, max_seq_len, min_len):
    by_user: dict[int, list[tuple[int, int]]] = {}
    for user, item, ts in rows:
        by_user.setdefault(user, []).append((ts, item))
    train, valid, evals = [], [], []
    for user in sorted(by_user):
        seq = sorted(by_user[user])
        if len(seq) < min_len:
            continue
        for table, cut in ((evals, len(seq) - 1), (valid, len(seq) - 2), (train, len(seq) - 3)):
            hist = seq[max(0, cut - max_seq_len) : cut]
            target_ts, target = seq[cut]
            uih = [i for _, i in hist]
            table.append(
                {
                    "user_id": user,
                    "uih": uih,
                    "uih_ts": [t for t, _ in hist],
                    "target": target,
                    "target_ts": target_ts,
                    "next_items": (uih[1:] + [target]) if uih else [],
                }
            )
    return train, valid, evals


@settings(max_examples=200, deadline=None)
@given(rows=events, max_seq_len=st.integers(1, 6), min_len=st.integers(3, 5))
def test_prepare_matches_reference(rows, max_seq_len, min_len):
    table = pa.table(
        {
            "u": pa.array([r[0] for r in rows], pa.int64()),
            "i": pa.array([r[1] for r in rows], pa.int32()),
            "t": pa.array([r[2] for r in rows], pa.int64()),
        }
    )
    splits = prepare_sequences(
        table,
        user_field="u",
        item_field="i",
        time_field="t",
        max_seq_len=max_seq_len,
        min_len=min_len,
    )
    for got, expected in zip(splits, reference(rows, max_seq_len, min_len), strict=True):
        assert got.schema == SEQUENCE_SCHEMA
        assert got.to_pylist() == expected


def test_ties_in_time_broken_by_item_id():
    table = pa.table({"u": [1, 1, 1, 1], "i": [30, 10, 20, 5], "t": [5, 5, 5, 4]})
    train, valid, evals = prepare_sequences(
        table, user_field="u", item_field="i", time_field="t", max_seq_len=10
    )
    assert evals.column("uih").to_pylist() == [[5, 10, 20]]
    assert evals.column("target").to_pylist() == [30]
    assert valid.column("target").to_pylist() == [20]
    assert train.column("uih").to_pylist() == [[5]]
    assert train.column("target").to_pylist() == [10]
    assert train.column("next_items").to_pylist() == [[10]]


def test_bad_input_names_column_and_row():
    table = pa.table({"u": [1, None], "i": [1, 2], "t": [1, 2]})
    with pytest.raises(NegseqError, match="column 'u', row 1: null"):
        prepare_sequences(table, user_field="u", item_field="i", time_field="t", max_seq_len=5)
    with pytest.raises(NegseqError, match="no column 'x'"):
        prepare_sequences(table, user_field="x", item_field="i", time_field="t", max_seq_len=5)
    with pytest.raises(NegseqError, match="min_len must be >= 3"):
        prepare_sequences(table, user_field="u", item_field="i", time_field="t", max_seq_len=5, min_len=2)
