"""Kernel and autocast choice per device: Triton + bf16 on CUDA, PyTorch float32 elsewhere."""

import importlib.util

import pytest
import torch

from negseq.model.device import select_kernel, training_autocast


def test_cpu_trains_float32_on_the_pytorch_kernel():
    assert select_kernel("cpu") == "pytorch"
    with training_autocast(torch.device("cpu")):
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_cuda_picks_triton_when_installed():
    expected = "triton" if importlib.util.find_spec("triton") is not None else "pytorch"
    assert select_kernel(torch.device("cuda", 0)) == expected
    ctx = training_autocast("cuda")
    assert isinstance(ctx, torch.autocast)
    assert ctx.fast_dtype == torch.bfloat16


def test_auto_kernel_is_the_pytorch_reference_on_cpu():
    from negseq.model.ops import hstu_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 2, 8, generator=gen) for _ in range(3))
    offsets = torch.tensor([0, 3, 7])
    kwargs = dict(alpha=0.5, scaling_n=4)
    auto = hstu_attention(q, k, v, offsets, 4, kernel="auto", **kwargs)
    assert torch.equal(auto, hstu_attention(q, k, v, offsets, 4, kernel="pytorch", **kwargs))
