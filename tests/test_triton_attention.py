"""The Triton HSTU attention kernels against the PyTorch reference, on CPU via the interpreter.

TRITON_INTERPRET=1 is read when the kernels are decorated, so it is set before
negseq.model.ops.triton.hstu_attention is imported. It stays set for the rest of the process:
triton's interpreter imports more of triton lazily and checks the flag again then. (Only
Triton reads it; torch.compile on CPU generates C++, not Triton.)
bf16 is not checked here: the interpreter's bf16 tl.dot is wrong (triton 3.9); the GPU
script (benchmarks/gpu_check.sh) checks bf16 on a real device.
"""

from __future__ import annotations

import os

import pytest
import torch

from negseq.errors import NegseqError
from negseq.model.ops import hstu_attention, pytorch_hstu_attention

os.environ["TRITON_INTERPRET"] = "1"
import negseq.model.ops.triton.hstu_attention as triton_attention  # noqa: E402


@pytest.fixture(autouse=True)
def _interpreted():
    assert triton_attention.INTERPRETING, (
        "negseq.model.ops.triton.hstu_attention was imported before this module set TRITON_INTERPRET=1"
    )


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()])


def _inputs(lengths, heads=2, d_qk=16, d_v=None, dtype=torch.float32, seed=0):
    d_v = d_v or d_qk
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    return [
        torch.randn(total, heads, d, generator=gen, dtype=torch.float32).to(dtype).requires_grad_()
        for d in (d_qk, d_qk, d_v)
    ]


def _run(kernel, q, k, v, offsets, max_len, grad, **kw):
    out = hstu_attention(q, k, v, offsets, max_len, kernel=kernel, **kw)
    grads = torch.autograd.grad(out, (q, k, v), grad) if out.numel() else (None,) * 3
    return out, grads


CASES = {
    # name: (lengths, d_qk, d_v, max_len - longest, max_attn_len, contextual_seq_len, block)
    # block 16 where the window must let whole blocks be skipped at these short lengths
    "causal_with_empty_and_single": ([5, 0, 1, 40], 16, 16, 0, 0, 0, 32),
    "causal_d32_max_len_above_longest": ([64, 17, 33, 1], 32, 32, 5, 0, 0, 32),
    "max_attn_len": ([64, 17, 33, 1], 16, 16, 0, 7, 0, 16),
    "contextual": ([64, 0, 2, 1], 32, 32, 0, 0, 3, 32),
    "contextual_and_max_attn_len": ([50, 20, 1, 4], 16, 16, 0, 9, 5, 16),
    "odd_head_dims": ([37, 12], 24, 40, 0, 0, 0, 32),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_grads_match_reference(case, monkeypatch):
    lengths, d_qk, d_v, extra, max_attn_len, contextual, block = CASES[case]
    monkeypatch.setattr(triton_attention, "_INTERPRETER_BLOCK", block)
    q, k, v = _inputs(lengths, d_qk=d_qk, d_v=d_v)
    offsets = _offsets(lengths)
    max_len = max(lengths) + extra
    kw = dict(
        alpha=d_qk**-0.5, scaling_n=max_len + 3, max_attn_len=max_attn_len, contextual_seq_len=contextual
    )
    grad = torch.randn(q.shape[0], 2, d_v, generator=torch.Generator().manual_seed(1))
    out, grads = _run("triton", q, k, v, offsets, max_len, grad, **kw)
    ref, ref_grads = _run("pytorch", q, k, v, offsets, max_len, grad, **kw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


def test_float16_matches_float32_reference():
    lengths = [33, 7]
    q, k, v = _inputs(lengths, dtype=torch.float16)
    offsets = _offsets(lengths)
    out = hstu_attention(q, k, v, offsets, 33, alpha=0.25, scaling_n=33, kernel="triton")
    ref = pytorch_hstu_attention(q.float(), k.float(), v.float(), offsets, 33, alpha=0.25, scaling_n=33)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=1e-2)


def test_all_empty_batch_gives_empty_output_and_zero_grads():
    q, k, v = _inputs([0, 0])
    offsets = _offsets([0, 0])
    out = hstu_attention(q, k, v, offsets, 0, alpha=0.25, scaling_n=1, kernel="triton")
    assert out.shape == (0, 2, 16)
    out.sum().backward()
    assert q.grad.shape == (0, 2, 16)


def test_strided_views_of_a_fused_projection():
    # as in the STU layer: q, k, v are column slices of one [L, H * (2 Dqk + Dv)] matrix
    lengths, heads, d = [19, 3], 2, 16
    fused = torch.randn(sum(lengths), 3 * heads * d, requires_grad=True)
    q, k, v = (fused[:, i * heads * d : (i + 1) * heads * d].view(-1, heads, d) for i in range(3))
    assert q.stride(0) == 3 * heads * d
    offsets = _offsets(lengths)
    out = hstu_attention(q, k, v, offsets, 19, alpha=0.25, scaling_n=19, kernel="triton")
    (grad,) = torch.autograd.grad(out.square().sum(), fused)
    ref = hstu_attention(q, k, v, offsets, 19, alpha=0.25, scaling_n=19)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), fused)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "k": a["k"].double()}, "must share one of"),
        (lambda a: {**a, "offsets": a["offsets"].int()}, "offsets must be a 1-D int64"),
        (lambda a: {**a, "max_len": 10}, "max_len=10 is below the longest sequence"),
        (lambda a: {**a, "v": a["v"][:5]}, "share \\[L, H\\]"),
        (lambda a: {**a, "offsets": torch.tensor([0, 12, 20])}, "rise from 0 to L=22"),
        (lambda a: {**a, "scaling_n": 0}, "scaling_n > 0"),
    ],
)
def test_bad_input_is_named(change, message):
    q, k, v = (t.detach() for t in _inputs([12, 10]))
    args = change({"q": q, "k": k, "v": v, "offsets": _offsets([12, 10]), "max_len": 12, "scaling_n": 12})
    with pytest.raises(NegseqError, match=message):
        hstu_attention(
            args["q"],
            args["k"],
            args["v"],
            args["offsets"],
            args["max_len"],
            alpha=0.25,
            scaling_n=args["scaling_n"],
            kernel="triton",
        )


def test_custom_ops_pass_opcheck():
    q, k, v = (t.detach() for t in _inputs([9, 3]))
    offsets = _offsets([9, 3])
    args = (q, k, v, offsets, 9, 0.25, 9, 4, 1)
    torch.library.opcheck(torch.ops.negseq.hstu_attention_fwd, args)
    torch.library.opcheck(torch.ops.negseq.hstu_attention_bwd, (torch.randn_like(v), *args))


def test_torch_compile_fullgraph_matches_eager():
    lengths = [11, 4]
    q, k, v = _inputs(lengths)
    offsets = _offsets(lengths)

    def attend(q, k, v):
        return hstu_attention(q, k, v, offsets, 11, alpha=0.25, scaling_n=11, kernel="triton")

    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    out = compiled(q, k, v)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref = attend(q, k, v)
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_export_keeps_the_kernel_as_one_op():
    class Attend(torch.nn.Module):
        def forward(self, q, k, v, offsets):
            return hstu_attention(q, k, v, offsets, 8, alpha=0.25, scaling_n=8, kernel="triton")

    q, k, v = (t.detach() for t in _inputs([8, 5]))
    offsets = _offsets([8, 5])
    exported = torch.export.export(Attend(), (q, k, v, offsets))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "negseq.hstu_attention_fwd.default" in targets
    torch.testing.assert_close(exported.module()(q, k, v, offsets), Attend()(q, k, v, offsets))


def test_stu_layer_on_triton_matches_its_padded_reference():
    """The whole STU layer: jagged on the Triton kernel against `forward_padded` (the PyTorch
    core export uses), values and gradients."""
    from negseq.model.ops import Kernel
    from negseq.model.stu import STULayer

    torch.manual_seed(3)
    layer = STULayer(
        16, 2, 8, 16, output_dropout_ratio=0.0, max_attn_len=5, scaling_seqlen=20, kernel=Kernel.TRITON
    )
    lengths = [9, 0, 17]
    offsets = _offsets(lengths)
    x = torch.randn(sum(lengths), 16, requires_grad=True)
    out = layer(x, offsets, 17)
    padded = torch.zeros(3, 17, 16).index_put(
        (torch.repeat_interleave(torch.arange(3), torch.tensor(lengths)),
         torch.cat([torch.arange(n) for n in lengths])),
        x,
    )  # fmt: skip
    ref = layer.forward_padded(padded, torch.tensor(lengths))
    ref = torch.cat([ref[i, :n] for i, n in enumerate(lengths)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    grad = torch.randn_like(out)
    params = [x, *layer.parameters()]
    for got, want in zip(
        torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad), strict=True
    ):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
