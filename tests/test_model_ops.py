"""The ops package: the kernel enum and dispatcher, and the padded reference core against the
jagged reference (forward and backward), on plain Python where the math is short."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from negseq.errors import NegseqError
from negseq.model.ops import (
    Kernel,
    hstu_attention,
    padded_hstu_attention,
    pytorch_hstu_attention,
    select_kernel,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_kernel_names_and_auto_on_cpu():
    assert [k.value for k in Kernel] == ["pytorch", "triton"]
    assert Kernel("triton") is Kernel.TRITON and Kernel.PYTORCH == "pytorch"
    assert select_kernel("cpu") is Kernel.PYTORCH
    q = torch.randn(3, 1, 4)
    offsets = torch.tensor([0, 3])
    with pytest.raises(NegseqError, match="unknown attention kernel 'cuda'"):
        hstu_attention(q, q, q, offsets, 3, alpha=1.0, scaling_n=3, kernel="cuda")


def _padded(x: torch.Tensor, lengths: list[int], width: int) -> torch.Tensor:
    out = x.new_zeros(len(lengths), width, *x.shape[1:])
    start = 0
    for i, n in enumerate(lengths):
        out[i, :n] = x[start : start + n]
        start += n
    return out


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 7), min_size=1, max_size=4),
    extra=st.integers(0, 2),
    max_attn_len=st.sampled_from([0, 2]),
    contextual=st.sampled_from([0, 1]),
)
def test_padded_core_is_the_jagged_reference(lengths, extra, max_attn_len, contextual):
    """The jagged op is pad -> core -> unpad: same values and gradients, zeros past each row."""
    gen = torch.Generator().manual_seed(sum(lengths) + extra)
    total, width = sum(lengths), max(lengths) + extra
    q, k, v = (torch.randn(total, 2, d, generator=gen, requires_grad=True) for d in (4, 4, 3))
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    kw = dict(alpha=0.5, scaling_n=width + 1, max_attn_len=max_attn_len, contextual_seq_len=contextual)
    jagged = pytorch_hstu_attention(q, k, v, offsets, width, **kw)
    padded = padded_hstu_attention(
        _padded(q, lengths, width), _padded(k, lengths, width), _padded(v, lengths, width),
        torch.tensor(lengths), **kw,
    )  # fmt: skip
    assert padded.shape == (len(lengths), width, 2, 3)
    for i, n in enumerate(lengths):
        assert torch.equal(padded[i, n:], torch.zeros_like(padded[i, n:]))
    torch.testing.assert_close(_padded(jagged, lengths, width), padded, atol=1e-6, rtol=1e-5)
    weights = torch.randn(jagged.shape, generator=gen)
    grads = torch.autograd.grad((jagged * weights).sum(), (q, k, v), allow_unused=True)
    padded_grads = torch.autograd.grad(
        (padded * _padded(weights, lengths, width)).sum(), (q, k, v), allow_unused=True
    )
    for got, want in zip(grads, padded_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_core_by_hand():
    """One head, one row of two tokens, d=1: A = SiLU(alpha q_i k_j) / N on the causal mask."""
    q = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    k = torch.tensor([0.5, -1.0]).view(1, 2, 1, 1)
    v = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)

    def silu(x: float) -> float:
        return x / (1 + torch.exp(torch.tensor(-x)).item())

    out = padded_hstu_attention(q, k, v, torch.tensor([2]), alpha=2.0, scaling_n=4).flatten()
    expected = [silu(2 * 1 * 0.5) * 3 / 4, (silu(2 * 2 * 0.5) * 3 + silu(2 * 2 * -1.0) * 4) / 4]
    torch.testing.assert_close(out, torch.tensor(expected))
