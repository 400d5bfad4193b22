"""Flatten and both combines against plain-Python references (DESIGN §4)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from negseq.candidates import (
    build_sampler_input,
    combine_neg_as_candidate_sequence,
    combine_negs_to_candidate_suffix,
    flatten_id_column,
)
from negseq.errors import NegseqError

ids = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(0, 10**6)
rows = st.lists(st.none() | st.lists(ids, max_size=6), max_size=12)
string_types = st.sampled_from([pa.string(), pa.large_string()])
list_types = st.sampled_from([pa.list_(pa.int64()), pa.large_list(pa.int64()), pa.list_(pa.int32())])
delims = st.sampled_from([";", ",", "|", "::"])


def to_strings(data: list[list[int] | None], delim: str) -> list[str | None]:
    return [None if r is None else delim.join(str(v) for v in r) for r in data]


def fit(data, typ):
    """Clamp values into the list's value type (int32 lists)."""
    if pa.types.is_int32(getattr(typ, "value_type", pa.int64())):
        return [None if r is None else [int(np.int32(v % 2**31)) for v in r] for r in data]
    return data


def ref_interleaved(data, negs, n):
    out, q = [], 0
    for r in data:
        if r is None:
            out.append(None)
            continue
        row = []
        for p in r:
            row += [p, *negs[q * n : (q + 1) * n]]
            q += 1
        out.append(row)
    return out


def ref_suffix(data, negs):
    out = [None if r is None else list(r) for r in data]
    if negs:
        out[-1] = (out[-1] or []) + list(negs)
    return out


def maybe_slice(arr: pa.Array, cut: bool) -> pa.Array:
    """Exercise Arrow offsets: the same rows as a slice of a longer array."""
    if not cut:
        return arr
    padded = pa.concat_arrays([pa.array([arr.type.__class__ and None], type=arr.type), arr])
    return padded.slice(1)


# ---- DESIGN §4 vectors ---------------------------------------------------------------------


def test_interleaved_vectors():
    out, lengths = combine_neg_as_candidate_sequence(pa.array(["1", "2", "3"]), np.arange(101, 107), 2)
    assert out.to_pylist() == ["1;101;102", "2;103;104", "3;105;106"]
    assert lengths.dtype == np.int32 and lengths.tolist() == [1, 1, 1]
    out, lengths = combine_neg_as_candidate_sequence(
        pa.array(["1;2", "3;4;5"]), np.array([10, 20, 30, 40, 50]), 1
    )
    assert out.to_pylist() == ["1;10;2;20", "3;30;4;40;5;50"]
    assert lengths.tolist() == [2, 3]


def test_suffix_vector():
    out, lengths = combine_negs_to_candidate_suffix(
        pa.array(["1;2", "3"]), np.array([10, 20, 30]), hard_negs=np.array([100, 200])
    )
    assert out.to_pylist() == ["1;2", "3;10;20;30;100;200"]
    assert lengths.dtype == np.int32 and lengths.tolist() == [2, 1]


def test_interleaved_length_mismatch_is_an_error():
    with pytest.raises(NegseqError, match="3 positives x 2 negatives = 6 negative ids, got 5"):
        combine_neg_as_candidate_sequence(pa.array(["1", "2", "3"]), np.arange(5), 2)
    with pytest.raises(NegseqError, match="got 5"):
        combine_neg_as_candidate_sequence(pa.array([[1], [2], [3]]), np.arange(5), 2)


@pytest.mark.parametrize(
    "value, token",
    [
        ("1;x", "x"),
        ("1;;2", ""),
        ("1;2;", ""),
        ("99999999999999999999", "99999999999999999999"),
        (" 1", " 1"),
        ("1.5", "1.5"),
        ("-", "-"),
    ],
)
def test_bad_token_names_row_and_token(value, token):
    batch = pa.record_batch({"item": pa.array(["7", value])})
    with pytest.raises(NegseqError, match=rf"column 'item', row 1: token {token!r}"):
        build_sampler_input(batch, "item")
    with pytest.raises(NegseqError, match="row 1"):
        combine_neg_as_candidate_sequence(batch.column("item"), np.arange(10), 1)


def test_null_inside_a_list_is_an_error():
    with pytest.raises(NegseqError, match="row 1: list holds a null id"):
        flatten_id_column(pa.array([[1], [2, None]]), column="x")


def test_unsupported_type_is_an_error():
    with pytest.raises(NegseqError, match="column 'x' has type double"):
        flatten_id_column(pa.array([1.5]), column="x")


def test_int_column_gives_lists():
    out, lengths = combine_neg_as_candidate_sequence(pa.array([5, None, 7]), np.arange(4), 2)
    assert out.type == pa.list_(pa.int64())
    assert out.to_pylist() == [[5, 0, 1], None, [7, 2, 3]]
    assert lengths.tolist() == [1, 0, 1]


def test_suffix_null_last_row_carries_the_negatives():
    out, lengths = combine_negs_to_candidate_suffix(pa.array(["1", None]), np.array([9]))
    assert out.to_pylist() == ["1", "9"] and lengths.tolist() == [1, 0]
    out, _ = combine_negs_to_candidate_suffix(pa.array(["1", None]), np.array([], np.int64))
    assert out.to_pylist() == ["1", None]


def test_suffix_empty_batch():
    out, lengths = combine_negs_to_candidate_suffix(pa.array([], pa.string()), np.array([], np.int64))
    assert len(out) == 0 and out.type == pa.string() and len(lengths) == 0
    with pytest.raises(NegseqError, match="empty batch"):
        combine_negs_to_candidate_suffix(pa.array([], pa.string()), np.array([1]))


def test_build_sampler_input_does_not_mutate_and_aligns_users():
    batch = pa.record_batch({"item": pa.array(["1;2", None, "", "3"]), "user": [10, 20, 30, 40]})
    before = batch.to_pylist()
    flat, counts = build_sampler_input(batch, "item", "user")
    assert batch.to_pylist() == before
    assert flat["item"].to_pylist() == [1, 2, 3]
    assert flat["user"].to_pylist() == [10, 10, 40]
    assert counts.dtype == np.int32 and counts.tolist() == [2, 0, 0, 1]
    source = {"item": pa.array([[4, 5]]), "user": pa.array([1])}
    flat, _ = build_sampler_input(source, "item", "user")
    assert set(source) == {"item", "user"} and source["item"].to_pylist() == [[4, 5]]


def test_missing_column_is_an_error():
    with pytest.raises(NegseqError, match="column 'nope' not in batch"):
        build_sampler_input(pa.record_batch({"item": [1]}), "nope")


# ---- property tests ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=rows, typ=string_types | list_types, delim=delims, cut=st.booleans())
def test_flatten_matches_reference(data, typ, delim, cut):
    data = fit(data, typ)
    values = to_strings(data, delim) if pa.types.is_string(typ) or pa.types.is_large_string(typ) else data
    arr = maybe_slice(pa.array(values, type=typ), cut)
    users = pa.array(range(len(data)), type=pa.int64())
    flat, counts = build_sampler_input({"item": arr, "user": users}, "item", "user", delim)
    expected = [v for r in data if r for v in r]
    assert flat["item"].to_pylist() == expected
    assert counts.tolist() == [len(r) if r else 0 for r in data]
    assert flat["user"].to_pylist() == [u for u, r in enumerate(data) if r for _ in r]


@settings(max_examples=150, deadline=None)
@given(
    data=rows,
    typ=string_types | list_types,
    delim=delims,
    n=st.integers(0, 4),
    cut=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_interleaved_matches_reference(data, typ, delim, n, cut, seed):
    data = fit(data, typ)
    is_string = pa.types.is_string(typ) or pa.types.is_large_string(typ)
    values = to_strings(data, delim) if is_string else data
    arr = maybe_slice(pa.array(values, type=typ), cut)
    num_pos = sum(len(r) for r in data if r)
    negs = np.random.default_rng(seed).integers(-(2**63), 2**63 - 1, num_pos * n, dtype=np.int64)
    out, lengths = combine_neg_as_candidate_sequence(arr, negs, n, delim)
    expected = ref_interleaved(data, negs.tolist(), n)
    if is_string:
        assert out.type == typ
        assert out.to_pylist() == to_strings(expected, delim)
    else:
        assert pa.types.is_large_list(out.type) == pa.types.is_large_list(typ)
        assert out.to_pylist() == expected
    assert lengths.tolist() == [len(r) if r else 0 for r in data]


@settings(max_examples=150, deadline=None)
@given(
    data=rows.filter(bool),
    typ=string_types | list_types,
    delim=delims,
    cut=st.booleans(),
    negs=st.lists(ids, max_size=8),
    hard=st.lists(ids, max_size=4),
)
def test_suffix_matches_reference(data, typ, delim, cut, negs, hard):
    data = fit(data, typ)
    is_string = pa.types.is_string(typ) or pa.types.is_large_string(typ)
    values = to_strings(data, delim) if is_string else data
    arr = maybe_slice(pa.array(values, type=typ), cut)
    out, lengths = combine_negs_to_candidate_suffix(
        arr, np.array(negs, np.int64), delim, hard_negs=np.array(hard, np.int64)
    )
    expected = ref_suffix(data, negs + hard)
    if is_string:
        expected = to_strings(expected, delim)
        # an empty last row gets the negatives without a leading delimiter
        assert out.type == typ
    assert out.to_pylist() == expected
    assert lengths.tolist() == [len(r) if r else 0 for r in data]


def test_one_row_and_empty_batches():
    out, lengths = combine_neg_as_candidate_sequence(pa.array([], pa.string()), np.array([], np.int64), 3)
    assert out.to_pylist() == [] and lengths.tolist() == []
    out, lengths = combine_neg_as_candidate_sequence(pa.array([[]], pa.list_(pa.int64())), [], 3)
    assert out.to_pylist() == [[]] and lengths.tolist() == [0]
    out, lengths = combine_negs_to_candidate_suffix(pa.array([""]), np.array([1, 2]))
    assert out.to_pylist() == ["1;2"] and lengths.tolist() == [0]


@settings(max_examples=100, deadline=None)
@given(data=st.lists(st.none() | ids, max_size=12), n=st.integers(0, 3))
def test_int_column_matches_reference(data, n):
    arr = pa.array(data, pa.int64())
    flat, counts = build_sampler_input({"item": arr}, "item")
    assert flat["item"].to_pylist() == [v for v in data if v is not None]
    assert counts.tolist() == [0 if v is None else 1 for v in data]
    negs = np.arange(len(flat["item"]) * n, dtype=np.int64)
    out, lengths = combine_neg_as_candidate_sequence(arr, negs, n)
    assert out.to_pylist() == ref_interleaved([None if v is None else [v] for v in data], negs.tolist(), n)
    assert lengths.tolist() == counts.tolist()
