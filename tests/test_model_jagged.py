"""Jagged helpers: fbgemm and the PyTorch fallback agree with each other and with plain Python."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from negseq.model import jagged

lengths_st = st.lists(st.integers(0, 6), min_size=0, max_size=6)


def python_padded(rows: list[list[list[float]]], max_len: int, dim: int, pad: float):
    return [[row[p] if p < len(row) else [pad] * dim for p in range(max_len)] for row in rows]


def make_rows(lengths: list[int], dim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(sum(lengths), dim, generator=gen)
    offsets = torch.tensor([0] + list(torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()))
    rows = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(lengths))]
    return values, offsets, rows


def test_backend_is_fbgemm_here():
    # fbgemm-gpu-cpu is a pinned dependency: the fallback must not be picked silently
    assert jagged.BACKEND == "fbgemm"


@settings(max_examples=40, deadline=None)
@given(lengths=lengths_st)
def test_cumsum(lengths):
    t = torch.tensor(lengths, dtype=torch.int64)
    expected = [0]
    for n in lengths:
        expected.append(expected[-1] + n)
    assert jagged.asynchronous_complete_cumsum(t).tolist() == expected
    assert jagged.torch_asynchronous_complete_cumsum(t).tolist() == expected


@settings(max_examples=40, deadline=None)
@given(
    lengths=lengths_st,
    max_len=st.integers(1, 7),
    dim=st.integers(1, 3),
    pad=st.sampled_from([0.0, -1.5]),
)
def test_to_padded_matches_python_and_each_other(lengths, max_len, dim, pad):
    values, offsets, rows = make_rows(lengths, dim, seed=len(lengths) + max_len)
    expected = torch.tensor(python_padded(rows, max_len, dim, pad)).view(len(lengths), max_len, dim)
    fast = jagged.jagged_to_padded_dense(values, offsets, max_len, pad)
    ref = jagged.torch_jagged_to_padded_dense(values, offsets, max_len, pad)
    assert torch.equal(fast, expected)
    assert torch.equal(ref, expected)


@settings(max_examples=40, deadline=None)
@given(lengths=lengths_st, extra=st.integers(0, 2), dim=st.integers(1, 3))
def test_to_jagged_matches_python_and_each_other(lengths, extra, dim):
    width = (max(lengths) if lengths else 0) + extra
    _, offsets, _ = make_rows(lengths, dim, seed=0)
    dense = torch.randn(len(lengths), width, dim)
    expected = [dense[i, p].tolist() for i, n in enumerate(lengths) for p in range(n)]
    fast = jagged.dense_to_jagged(dense, offsets)
    ref = jagged.torch_dense_to_jagged(dense, offsets)
    assert fast.tolist() == expected
    assert ref.tolist() == expected


def test_one_dimensional_values_round_trip():
    values = torch.tensor([3.0, 4.0, 5.0])
    offsets = torch.tensor([0, 1, 1, 3])
    padded = jagged.jagged_to_padded_dense(values, offsets, 2)
    assert padded.tolist() == [[3.0, 0.0], [0.0, 0.0], [4.0, 5.0]]
    assert jagged.dense_to_jagged(padded, offsets).tolist() == [3.0, 4.0, 5.0]


def test_gradients_agree():
    values, offsets, _ = make_rows([3, 0, 1, 5], 4, seed=1)
    grads = []
    for fn in (jagged.jagged_to_padded_dense, jagged.torch_jagged_to_padded_dense):
        v = values.clone().requires_grad_()
        out = fn(v, offsets, 4)  # the 5-long row is cut: its last value gets no gradient
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        grads.append(v.grad)
    assert torch.equal(grads[0], grads[1])
    assert torch.all(grads[0][-1] == 0)
    dense = torch.randn(4, 5, 4)
    grads = []
    for fn in (jagged.dense_to_jagged, jagged.torch_dense_to_jagged):
        d = dense.clone().requires_grad_()
        (fn(d, offsets) ** 2).sum().backward()
        grads.append(d.grad)
    assert torch.equal(grads[0], grads[1])


def test_torch_dense_to_jagged_rejects_rows_longer_than_dense():
    with pytest.raises(ValueError, match="holds 3 values, dense has 2"):
        jagged.torch_dense_to_jagged(torch.zeros(1, 2, 1), torch.tensor([0, 3]))


@settings(max_examples=30, deadline=None)
@given(lengths=lengths_st, width=st.integers(0, 3))
def test_prepend_rows(lengths, width):
    values, offsets, rows = make_rows(lengths, 2, seed=3)
    prefix = torch.randn(len(lengths), width, 2)
    out, new_offsets = jagged.prepend_rows(values, offsets, prefix)
    expected = [prefix[i].tolist() + rows[i] for i in range(len(lengths))]
    assert new_offsets.tolist() == [sum(len(r) for r in expected[:i]) for i in range(len(lengths) + 1)]
    assert out.tolist() == [v for row in expected for v in row]
    slots = jagged.row_slots(offsets, width)
    assert torch.equal(out[slots], values)


def test_fallback_is_chosen_when_fbgemm_cannot_load(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "fbgemm_gpu", None)  # `import fbgemm_gpu` now raises
    fallback = importlib.reload(jagged)
    try:
        assert fallback.BACKEND == "torch"
        values, offsets, rows = make_rows([2, 0, 3], 2, seed=5)
        padded = fallback.jagged_to_padded_dense(values, offsets, 3)
        assert padded.tolist() == python_padded(rows, 3, 2, 0.0)
        assert torch.equal(fallback.dense_to_jagged(padded, offsets), values)
        assert fallback.asynchronous_complete_cumsum(torch.tensor([2, 0, 3])).tolist() == [0, 2, 2, 5]
    finally:
        monkeypatch.undo()
        assert importlib.reload(jagged).BACKEND == "fbgemm"
