"""The jagged STU (and its padded twin) against a dense reference written here, row by row.

The reference spells out DESIGN §6 with explicit loops over rows, heads and mask entries,
sharing no code with negseq.model: it only reads the layer's weights.
"""

import math

import pytest
import torch

from negseq.errors import NegseqError
from negseq.model.stu import STULayer, STUStack

pytestmark = pytest.mark.usefixtures("one_torch_thread")


D, HEADS, HIDDEN, ATTN = 8, 2, 3, 4


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


def allowed(i: int, j: int, n: int, max_attn_len: int, ctx: int) -> bool:
    """May query i attend key j in a row of n tokens whose first `ctx` are contextual."""
    if j >= n or i >= n:
        return False
    if ctx and i < ctx:  # contextual queries see the whole row
        return True
    pi, pj = (max(i - ctx + 1, 0), max(j - ctx + 1, 0)) if ctx else (i, j)
    if i == j:
        return True
    return pi > pj and (max_attn_len == 0 or pi - pj <= max_attn_len)


def reference_stu_row(layer: STULayer, x: torch.Tensor, scaling_n: int) -> torch.Tensor:
    """One row x [n, D] through one STU layer (no dropout)."""
    n = x.shape[0]
    normed = layer_norm(x, layer.input_norm.weight, layer.input_norm.bias)
    uvqk = normed @ layer.uvqk.weight.T + layer.uvqk.bias
    h, dh, da = layer.num_heads, layer.hidden_dim, layer.attention_dim
    u = uvqk[:, : h * dh]
    v = uvqk[:, h * dh : 2 * h * dh]
    q = uvqk[:, 2 * h * dh : 2 * h * dh + h * da]
    k = uvqk[:, 2 * h * dh + h * da :]
    u = u * torch.sigmoid(u)
    heads = []
    for head in range(h):
        qh, kh, vh = (
            q[:, head * da : (head + 1) * da],
            k[:, head * da : (head + 1) * da],
            v[:, head * dh : (head + 1) * dh],
        )
        rows = []
        for i in range(n):
            acc = torch.zeros(dh)
            for j in range(n):
                if allowed(i, j, n, layer.max_attn_len, layer.contextual_seq_len):
                    s = layer.alpha * (qh[i] * kh[j]).sum()
                    acc = acc + (s * torch.sigmoid(s)) / scaling_n * vh[j]
            rows.append(acc)
        heads.append(torch.stack(rows) if rows else torch.zeros(0, dh))
    a = torch.cat(heads, dim=1)
    y = torch.cat([u, a, u * layer_norm(a, layer.output_norm.weight, layer.output_norm.bias)], dim=1)
    return x + y @ layer.output.weight.T


def reference_stack(layers, x: torch.Tensor, lengths: list[int], scaling: int) -> torch.Tensor:
    out, start = [], 0
    for n in lengths:
        row = x[start : start + n]
        for layer in layers:
            row = reference_stu_row(layer, row, scaling)
        out.append(row)
        start += n
    return torch.cat(out)


def make_layers(num_layers=2, **kwargs) -> list[STULayer]:
    torch.manual_seed(7)
    layers = [STULayer(D, HEADS, HIDDEN, ATTN, output_dropout_ratio=0.0, **kwargs) for _ in range(num_layers)]
    for layer in layers:  # non-trivial norms and biases, so every parameter is exercised
        for p in layer.parameters():
            with torch.no_grad():
                p.add_(0.1 * torch.randn_like(p))
    return layers


CASES = {
    "empty_one_max": [0, 1, 6, 3, 0, 6],
    "single_row": [6],
    "all_empty_but_one": [0, 0, 1],
}


@pytest.mark.parametrize("lengths", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize(
    "options",
    [{}, {"max_attn_len": 2}, {"contextual_seq_len": 2}, {"scaling_seqlen": 10, "attn_alpha": 0.7}],
    ids=["plain", "max_attn_len", "contextual", "fixed_scaling"],
)
def test_jagged_stu_matches_dense_reference(lengths, options):
    if options.get("contextual_seq_len") and min(lengths) < 2:
        lengths = [max(n, 2) for n in lengths]  # every row starts with its contextual tokens
    layers = make_layers(**options)
    stack = STUStack(layers).eval()
    max_len = max(lengths)
    scaling = options.get("scaling_seqlen", max_len)
    offsets = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    x = torch.randn(sum(lengths), D)

    x_jagged = x.clone().requires_grad_()
    out = stack(x_jagged, offsets, max_len)
    x_ref = x.clone().requires_grad_()
    expected = reference_stack(layers, x_ref, lengths, scaling)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)

    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), [x_jagged, *stack.parameters()])
    ref_grads = torch.autograd.grad((expected * weights).sum(), [x_ref, *stack.parameters()])
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    # the padded twin (used by export and the benchmark) computes the same thing, gradients too
    lengths_t = torch.tensor(lengths)
    x_padded = x.clone().requires_grad_()
    padded = torch.zeros(len(lengths), max_len, D)
    for i, n in enumerate(lengths):
        padded[i, :n] = x_padded[offsets[i] : offsets[i] + n]
    padded_out = stack.forward_padded(padded, lengths_t)
    got = torch.cat([padded_out[i, :n] for i, n in enumerate(lengths)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    padded_grads = torch.autograd.grad((got * weights).sum(), [x_padded, *stack.parameters()])
    for got_grad, want in zip(padded_grads, ref_grads, strict=True):
        torch.testing.assert_close(got_grad, want, atol=1e-5, rtol=1e-5)


def test_defaults_follow_the_design():
    layer = STULayer(D, HEADS, HIDDEN, ATTN)
    assert layer.alpha == pytest.approx(1 / math.sqrt(ATTN))
    assert layer.output_dropout_ratio == 0.3
    assert layer.uvqk.out_features == (2 * HIDDEN + 2 * ATTN) * HEADS
    assert layer.output.in_features == 3 * HIDDEN * HEADS


def test_dropout_only_in_training():
    layer = STULayer(D, HEADS, HIDDEN, ATTN, output_dropout_ratio=0.5)
    x, offsets = torch.randn(5, D), torch.tensor([0, 2, 5])
    layer.eval()
    assert torch.equal(layer(x, offsets, 3), layer(x, offsets, 3))
    layer.train()
    torch.manual_seed(0)
    first = layer(x, offsets, 3)
    assert not torch.equal(first, layer(x, offsets, 3))


def test_unknown_kernel_is_an_error_when_the_layer_is_built():
    with pytest.raises(NegseqError, match="unknown attention kernel 'nope'; known: auto, pytorch, triton"):
        STULayer(D, HEADS, HIDDEN, ATTN, kernel="nope")


def test_causality_future_tokens_do_not_change_the_past():
    stack = STUStack(make_layers()).eval()
    x = torch.randn(6, D)
    full = stack(x, torch.tensor([0, 6]), 6)
    x2 = x.clone()
    x2[4:] = torch.randn(2, D)
    # same max_len (hence same 1/N scaling): the first 4 outputs must not move
    changed = stack(x2, torch.tensor([0, 6]), 6)
    torch.testing.assert_close(full[:4], changed[:4])
    assert not torch.allclose(full[4:], changed[4:])
