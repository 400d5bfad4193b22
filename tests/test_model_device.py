"""Kernel and autocast choice per device: Triton + bf16 on CUDA, PyTorch float32 elsewhere."""

import builtins
import sys
import types

import pytest
import torch

from negseq.model.device import select_kernel, training_autocast
from negseq.model.ops import kernel


def test_cpu_trains_float32_on_the_pytorch_kernel():
    assert select_kernel("cpu") == "pytorch"
    with training_autocast(torch.device("cpu")):
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.float32


@pytest.mark.parametrize("available", [True, False])
def test_cuda_picks_triton_exactly_when_it_imports(monkeypatch, available):
    """The expectation is set here, not read from the same probe the code uses."""
    monkeypatch.setattr(kernel, "triton_available", lambda: available)
    assert select_kernel(torch.device("cuda", 0)) == ("triton" if available else "pytorch")
    assert select_kernel("cuda") == ("triton" if available else "pytorch")
    assert select_kernel("cpu") == "pytorch"  # Triton is for CUDA tensors only


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_cuda_trains_under_bf16_autocast():
    ctx = training_autocast("cuda")
    assert isinstance(ctx, torch.autocast)
    assert ctx.fast_dtype == torch.bfloat16


def test_triton_available_is_whether_import_triton_succeeds(monkeypatch):
    """An installed but broken triton (found, but failing to import) is not available."""
    stub = types.ModuleType("triton")

    def fail(name, *args, **kwargs):
        if name == "triton":
            raise ImportError("triton is broken here")
        return real_import(name, *args, **kwargs)

    real_import = builtins.__import__
    try:
        kernel.triton_available.cache_clear()
        monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
        assert kernel.triton_available() is False
        kernel.triton_available.cache_clear()
        monkeypatch.setitem(sys.modules, "triton", stub)  # an importable module
        assert kernel.triton_available() is True
        kernel.triton_available.cache_clear()
        monkeypatch.delitem(sys.modules, "triton")
        monkeypatch.setattr(builtins, "__import__", fail)
        assert kernel.triton_available() is False
    finally:
        kernel.triton_available.cache_clear()  # the next caller probes the real environment


def test_auto_kernel_is_the_pytorch_reference_on_cpu():
    from negseq.model.ops import hstu_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 2, 8, generator=gen) for _ in range(3))
    offsets = torch.tensor([0, 3, 7])
    kwargs = dict(alpha=0.5, scaling_n=4)
    auto = hstu_attention(q, k, v, offsets, 4, kernel="auto", **kwargs)
    assert torch.equal(auto, hstu_attention(q, k, v, offsets, 4, kernel="pytorch", **kwargs))
